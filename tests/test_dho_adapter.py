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
  config = _config(name, arg, **{"algo.refresh_every": 20, "algo.warmup": 20, "algo.admm_period": 0})
  result = train.run(config, None, quiet=True)
  losses = [h["loss"] for h in result.history]
  assert result.status == "ok" and losses[-1] < 0.5 * losses[0]
  # measured (compiled) bytes = analytic + the 4-byte loss pmean of the harness
  assert result.final["bytes_per_step"] == result.final["analytic_bytes_per_step"] + 4
  n = sum(x.size for x in __import__("jax").tree.leaves(result.params))
  assert dense_allreduce_present(result.comm, n) == (config.algo.variant == "fosi")


@pytest.mark.parametrize("field,overrides", [
    ("algo.k", {"algo.k": 6000, "algo.m": 0}), ("algo.m", {"algo.m": 3}),
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
