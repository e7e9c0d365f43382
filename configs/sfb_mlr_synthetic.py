"""SFB on synthetic large-J softmax regression (sfb.md E2): J=1000 classes, D=2000, P=8, b=4.

SFB sends 4·(1000+2000) floats per device per step and materialises 96,000 instead of
all-reducing 2,001,000 (20.8x). Compare with ``configs/baseline_synthetic.py`` (same problem, dense).

    python launch.py --config configs/sfb_mlr_synthetic.py
"""
from configs.common import base_config


def get_config(arg=None):
  del arg
  config = base_config("sfb")
  config.dataset = "synthetic"
  config.num_classes, config.num_features, config.num_rows = 1000, 2000, 8192   # as baseline_synthetic
  config.model = "softmax"
  config.optimizer = "sgd"
  config.lr = 0.5
  config.batch_size = 32         # b = 4 rows per device
  config.num_steps = 300
  config.eval_every = 100
  return config
