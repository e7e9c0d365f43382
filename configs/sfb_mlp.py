"""Poseidon-style hybrid on a digits MLP 64-512-512-10 (sfb.md E6), P=8, b=4 rows/device, Adam.

The payload rule factors the two wide layers and all-reduces the 512x10 output layer; the plan
table is printed at start-up. ``--config.algo.rule=never`` is the dense reference.

    python launch.py --config configs/sfb_mlp.py
"""
from configs.common import base_config


def get_config(arg=None):
  del arg
  config = base_config("sfb")
  config.model = "mlp"
  config.widths = (512, 512)
  config.optimizer = "adam"
  config.lr = 1e-3
  config.batch_size = 32
  config.num_steps = 1500
  config.log_every = 250
  config.eval_every = 500
  return config
