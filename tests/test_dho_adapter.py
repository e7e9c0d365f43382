"""dho adapter and configs: runnable through common.train, bytes as declared, ConfigError on bad input."""
import importlib

import pytest

from common import train
from common.comm import dense_allreduce_present
from common.errors import ConfigError
from configs.common import override


def _config(name, arg=None, **overrides):
  config = importlib.import_module(f"configs.{name}").get_config(arg)
  config.num_steps, config.eval_every, config.log_every = 60, 0, 60
  return override(config, **overrides)


@pytest.mark.parametrize("name,arg", [("dho2_mlp", "8"), ("dho_mlp_digits", "hb"), ("dho2_v2", None)])
def test_configs_run_and_learn(name, arg):
  config = _config(name, arg, **{"algo.refresh_every": 20, "algo.warmup": 20, "algo.admm_period": None})
  result = train.run(config, None, quiet=True)
  losses = [h["loss"] for h in result.history]
  assert result.status == "ok" and losses[-1] < 0.5 * losses[0]
  # measured (compiled) bytes = analytic + the 4-byte loss pmean of the harness
  assert result.final["bytes_per_step"] == result.final["analytic_bytes_per_step"] + 4
  n = sum(x.size for x in __import__("jax").tree.leaves(result.params))
  assert dense_allreduce_present(result.comm, n) == (config.algo.variant == "fosi")


@pytest.mark.parametrize("field,overrides", [
    ("algo.k", {"algo.k": 6000, "algo.m": None}), ("algo.m", {"algo.m": 3}),
    ("algo.refresh_every", {"algo.refresh_every": 0}), ("algo.variant", {"algo.variant": "kfac"}),
    ("algo.momentum", {"algo.momentum": "adam"}), ("algo.curvature_delay", {"algo.curvature_delay": 50}),
    ("algo.admm", {"algo.admm": "bogus"})])
def test_bad_config_raises_config_error(field, overrides):
  config = _config("dho2_mlp", "8", **overrides)
  with pytest.raises(ConfigError) as err:
    train.validate(config, available_devices=8)
  assert err.value.field == field


@pytest.mark.slow
def test_fosi_hb_beats_hb_at_equal_lr_on_digits():
  """Benchmark claim (benchmarks/dho.py, 'same LR' row): FOSI-HB reaches full train loss 0.03 in
  fewer steps than heavy ball at lr 0.1 on the digits MLP."""
  def steps_to(arg):
    config = importlib.import_module("configs.dho_mlp_digits").get_config(arg)
    config.lr, config.num_steps, config.eval_every, config.log_every = 0.1, 400, 10, 10 ** 6
    history = train.run(config, None, quiet=True).history
    return next((h["step"] for h in history if "train_loss" in h and h["train_loss"] <= 0.03), 10 ** 6)
  fosi_steps, base_steps = steps_to("hb"), steps_to("base_hb")
  assert fosi_steps * 1.4 <= base_steps, (fosi_steps, base_steps)


@pytest.mark.parametrize("name,overrides", [
    ("dho2_mlp", {"algo.refresh_every": 7, "algo.warmup": 5}),
    ("dho2_mlp", {"algo.refresh_every": 7, "algo.warmup": 5, "algo.curvature_delay": 2}),
    ("dho2_mlp", {"algo.refresh_every": 7, "algo.warmup": 3, "algo.admm": "consensus", "algo.admm_rho": 1.0,
                  "algo.admm_period": 4}),
])
def test_logged_bytes_are_the_branch_each_step_took(name, overrides):
  """Issue 11 item 2.10: each step logs its own branch's measured bytes (not the refresh branch's on
  every step); cum_bytes = sum over branches of measured bytes x steps; measured = analytic + 4."""
  config = _config(name, "8", **overrides)
  config.num_steps = 20
  result = train.run(config, None, quiet=True)
  method = train.build(config).method
  final, history = result.final, result.history
  labels = [method.branch_of(h["step"]) for h in history]
  counts = {label: labels.count(label) for label in set(labels)}
  assert "plain" in counts or "local" in counts
  assert any(label.startswith("refresh") for label in counts) and len(counts) >= 3, counts
  measured = final["bytes_per_branch"]
  for label in counts:   # every branch that ran: measured from the compiled step == analytic + loss pmean
    assert measured[label] == method.analytic_branches[label] + 4, (label, measured, method.analytic_branches)
  assert [h["bytes"] for h in history] == [measured[label] for label in labels]
  assert history[-1]["cum_bytes"] == sum(measured[label] * n for label, n in counts.items())
  assert final["max_bytes_per_step"] == max(measured.values()) == final["analytic_bytes_per_step"] + 4
  # the refresh runs as its own programs (dho.separate_refresh: one Lanczos iteration per call, then the
  # pairs), except under consensus ADMM (refresh in the step)
  separate = overrides.get("algo.admm") != "consensus"
  assert set(final["compile_s_by_program"]) == ({"step", "refresh_iterate", "refresh_finish"} if separate
                                                else {"step"})
  plain = measured.get("plain", measured.get("local"))
  assert history[-1]["cum_bytes"] < 0.5 * final["max_bytes_per_step"] * 20 and plain < measured["refresh+" + (
      "plain" if "plain" in measured else "local")] / 10


@pytest.mark.parametrize("variant", ["dho2", "fosi"])
def test_k_zero_runs_as_the_base_optimizer(variant):
  """k = l = 0 (no curvature, the base step alone) is a valid config: the empty (P, 0, s)
  eigenvector leaf is placed by ``dho.state_specs`` like every other per-device leaf. Before,
  ``--config.algo.k=0`` crashed on the first step."""
  config = _config("dho2_mlp", "8", **{"algo.k": 0, "algo.variant": variant})
  config.num_steps, config.log_every = 3, 3
  result = train.run(config, None, quiet=True)
  assert result.status == "ok" and len(result.history) == 3


def test_k_checked_against_the_configured_transformer():
  """Issue 14: ``algo.k`` is checked against the model the config builds (``models.from_config``:
  d_model, num_heads, num_layers, channels), not a model made from ``widths`` alone. Before, the
  count was the default-sized transformer's (> 1M), so k + l above this 1-layer d_model=16 model's
  count passed validation."""
  import jax
  from common import models
  from common.algos.base import param_count
  config = importlib.import_module("configs.transformer_text").get_config("dho2")
  config = override(config, d_model=16, num_heads=2, num_layers=1, **{"algo.m": None})
  dataset = train.validate(config, available_devices=8)
  n = param_count(jax.eval_shape(models.from_config(config, dataset).init, jax.random.key(0)))
  config.algo.k = n - config.algo.l + 1
  with pytest.raises(ConfigError) as err:
    train.validate(config, available_devices=8)
  assert err.value.field == "algo.k" and f"the model's {n} parameters" in str(err.value)
