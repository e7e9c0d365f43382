"""SFB on digits softmax regression (sfb.md E1): P=8, b=1 row/device, where the payload rule picks SFB.

    python launch.py --config configs/sfb_mlr_digits.py
    python launch.py --config configs/sfb_mlr_digits.py --config.batch_size=32   # b=4: plan picks dense
"""
from configs.common import base_config


def get_config(arg=None):
  del arg
  config = base_config("sfb")
  config.model = "softmax"
  config.optimizer = "sgd"
  config.lr = 0.5
  config.weight_decay = 0.0
  config.batch_size = 8          # b = 1 row per device: 8·1·(10+64) = 592 < 650 floats → SFB
  config.num_steps = 6000
  config.log_every = 500
  config.eval_every = 1500
  config.checkpoint_every = 3000
  return config
