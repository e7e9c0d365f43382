"""DHO2 (curvature sharded by parameter coordinate) on the digits MLP over P devices.

    python launch.py --config configs/dho2_mlp.py          # P = 8
    python launch.py --config configs/dho2_mlp.py:4        # P in {1, 2, 4, 8}
    python launch.py --config configs/dho2_mlp.py:8 --config.algo.curvature_delay=10   # MR-DHO2 emulation

Per device: basis m*ceil(n/P) floats, eigenvector slice r*ceil(n/P), velocity and base state slices.
"""
from configs.common import base_config
from configs.dho_mlp_digits import mlp_digits


def get_config(arg=None):
  p = int(arg or 8)
  if p not in (1, 2, 4, 8):
    raise ValueError(f"arg (devices) must be 1, 2, 4 or 8, got {arg!r}")
  config = mlp_digits(base_config("dho"))
  config.num_devices = p
  config.optimizer = "momentum"
  config.lr = 0.05
  config.algo.variant = "dho2"
  config.algo.k = 10
  config.algo.m = 40
  config.algo.refresh_every = 50
  config.algo.warmup = 50
  config.algo.alpha = 0.01
  config.algo.momentum = "heavy_ball"
  return config
