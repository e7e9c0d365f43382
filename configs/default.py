"""Default run of ``python launch.py``: dense data-parallel MLP on sklearn digits, 8 devices.

    python launch.py                       # this config
    python launch.py --config configs/default.py --config.num_steps=200
"""
from configs.common import base_config


def get_config(arg=None):
  del arg
  config = base_config("dense")
  config.model = "mlp"
  config.widths = (64,)
  config.optimizer = "adam"
  config.lr = 3e-3
  config.batch_size = 128
  config.num_steps = 1500
  return config
