"""FOSI on the digits MLP (64-64-10), data parallel over 8 devices (reference FOSI, replicated basis).

    python launch.py --config configs/dho_mlp_digits.py            # FOSI-HB  (FOSI over heavy ball)
    python launch.py --config configs/dho_mlp_digits.py:adam       # FOSI-Adam
    python launch.py --config configs/dho_mlp_digits.py:base_hb    # heavy ball alone (dense)
    python launch.py --config configs/dho_mlp_digits.py:base_adam  # Adam alone (dense)

k=10, m=40, alpha=0.01 as the FOSI paper's experiments; T shortened to 50 (short runs), W=T.
"""
from configs.common import base_config


def mlp_digits(config):
  """The digits 64-64-10 MLP run shared by the dho configs (600 steps, batch 128)."""
  config.model = "mlp"
  config.widths = (64,)
  config.batch_size = 128
  config.num_steps = 600
  config.log_every = 50
  config.eval_every = 200
  config.checkpoint_every = 0
  return config


def get_config(arg=None):
  arg = arg or "hb"
  if arg not in ("hb", "adam", "base_hb", "base_adam"):
    raise ValueError(f"arg must be hb | adam | base_hb | base_adam, got {arg!r}")
  config = mlp_digits(base_config("dense" if arg.startswith("base_") else "dho"))
  adam = arg.endswith("adam")
  config.optimizer = "adam" if adam else "momentum"
  config.lr = 1e-3 if adam else 0.05
  if not arg.startswith("base_"):
    config.algo.variant = "fosi"
    config.algo.k = 10
    config.algo.m = 40
    config.algo.refresh_every = 50
    config.algo.alpha = 0.01
    config.algo.momentum = "ema" if adam else "heavy_ball"
    config.algo.scale_clip = 1.0 if adam else 3.0
  return config
