"""SFB through the harness: the launch configs run, measured bytes equal the plan, bad configs fail."""
import pytest

from common import train
from common.errors import ConfigError
from configs import sfb_mlp, sfb_mlr_digits, sfb_sdca_svm
from configs.common import base_config

LOSS_PMEAN_BYTES = 4   # the loop's f32 loss metric, fused into the step's collectives


@pytest.mark.parametrize("make, steps", [(sfb_mlr_digits.get_config, 1500), (sfb_mlp.get_config, 100)],
                         ids=["mlr_digits", "mlp_hybrid"])
def test_configs_run_and_measured_bytes_equal_the_plan(make, steps):
  config = make()
  config.update(dict(num_steps=steps, checkpoint_every=0, eval_every=0, log_every=steps))
  result = train.run(config, quiet=True)
  assert result.status == "ok"
  assert result.comm.payload == result.final["analytic_bytes_per_step"] + LOSS_PMEAN_BYTES
  assert result.final["test_accuracy"] > 0.9


def test_sdca_config_certifies_its_optimum():
  config = sfb_sdca_svm.get_config()
  config.update(dict(num_steps=1500, checkpoint_every=0, eval_every=0, log_every=1500))
  result = train.run(config, quiet=True)
  last = result.history[-1]
  assert 0 <= last["duality_gap"] < 1e-4 and result.final["test_accuracy"] > 0.95
  assert result.comm.payload >= result.final["analytic_bytes_per_step"]
  assert not any(c.kind == "all-reduce" and c.elements >= 650 for c in result.comm.collectives)


@pytest.mark.parametrize("algorithm, overrides, field, says", [
    ("sfb", dict(algo=dict(rule="cheapest")), "algo.rule", "allowed: payload, wire, time, always, never"),
    ("sfb", dict(algo=dict(rule="time")), "algo.gflops", "rule 'time' needs"),
    ("sfb", dict(algo=dict(rule="time", gflops=50.0, link_gbit=0.0)), "algo.link_gbit", "rule 'time' needs"),
    ("sfb_sdca", dict(model="mlp"), "model", "linear model"),
    ("sfb_sdca", dict(algo=dict(C=0.0)), "algo.C", "> 0"),
    ("sfb_sdca", dict(algo=dict(loss="logistic")), "algo.loss", "allowed: squared_hinge, squared"),
])
def test_bad_sfb_config_is_named(algorithm, overrides, field, says):
  config = base_config(algorithm)
  config.update(overrides)
  with pytest.raises(ConfigError) as err:
    train.validate(config, available_devices=8)
  assert err.value.field == field and says in str(err.value)
