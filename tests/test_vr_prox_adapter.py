"""vr_prox through the harness: configs run, measured bytes == analytic, config errors named."""
import importlib

import pytest

from common import train
from common.errors import ConfigError


def _config(name, arg=None, **algo):
  config = importlib.import_module(f"configs.{name}").get_config(arg)
  config.num_steps = 4
  config.eval_every = 0
  config.log_every = 1000
  for k, v in algo.items():
    config.algo[k] = v
  return config


@pytest.mark.parametrize("name,arg", [("vr_prox_breast_cancer", None), ("vr_prox_breast_cancer", "tap"),
                                      ("vr_prox_breast_cancer", "dap_sgd"), ("vr_prox_digits", None)])
def test_config_runs_and_bytes_match(name, arg):
  result = train.run(_config(name, arg), quiet=True)
  assert result.status == "ok"
  assert result.comm.payload == result.final["analytic_bytes_per_step"], result.comm.summary()
  losses = [h["loss"] for h in result.history]
  assert losses[-1] < losses[0]


def test_relaxed_dap_beats_faithful_on_breast_cancer():
  relaxed = train.run(_config("vr_prox_breast_cancer", None), quiet=True)
  faithful_config = _config("vr_prox_breast_cancer", "faithful")
  faithful = train.run(faithful_config, quiet=True)
  assert relaxed.history[-1]["loss"] < faithful.history[-1]["loss"]


@pytest.mark.parametrize("field,value,says", [
    ("variant", "hogwild", "unknown variant"), ("prox", "l0", "unknown prox"), ("l1", -1e-3, ">= 0"),
    ("max_delay", -1, "max_delay"), ("delay_schedule", "poisson", "unknown schedule"),
    ("relaxation", 2.0, "relaxation")])
def test_bad_algo_field_is_named(field, value, says):
  config = _config("vr_prox_breast_cancer")
  config.algo[field] = value
  with pytest.raises(ConfigError, match=f"algo.{field}.*{says}|{says}") as e:
    train.validate(config, available_devices=8)
  assert e.value.field == f"algo.{field}"


def test_svmlight_dataset_runs(tmp_path):
  """Users bring rcv1/real-sim/covtype as svmlight files; a tiny synthetic one stands in here."""
  import numpy as np
  from sklearn.datasets import dump_svmlight_file
  rng = np.random.default_rng(0)
  x = rng.normal(size=(120, 6))
  y = np.where(x @ rng.normal(size=6) > 0, 1, -1)
  path = tmp_path / "tiny.svm"
  dump_svmlight_file(x, y, str(path))
  config = _config("vr_prox_breast_cancer")
  config.dataset = f"svmlight:{path}"
  result = train.run(config, quiet=True)
  assert result.status == "ok" and result.history[-1]["loss"] < result.history[0]["loss"]
