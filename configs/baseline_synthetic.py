"""Dense data-parallel softmax regression on the synthetic J=1000 classes x D=2000 features problem.

The dense reference for SFB's large-J, large-D regime (each step all-reduces 1000 x 2000 floats).

    python launch.py --config configs/baseline_synthetic.py
"""
from configs.common import base_config


def get_config(arg=None):
  del arg
  config = base_config("dense")
  config.dataset = "synthetic"
  config.num_classes, config.num_features, config.num_rows = 1000, 2000, 8192
  config.model = "softmax"
  config.optimizer = "sgd"
  config.lr = 0.5
  config.batch_size = 32
  config.num_steps = 300
  config.eval_every = 100
  return config
