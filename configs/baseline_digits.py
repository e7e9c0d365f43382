"""Dense data-parallel softmax regression on sklearn digits (the reference for the algorithms).

    python launch.py --config configs/baseline_digits.py
    python launch.py --config configs/baseline_digits.py:mlp        # the MLP variant
"""
from configs.common import base_config


def get_config(arg=None):
  config = base_config("dense")
  config.model = "mlp" if arg == "mlp" else "softmax"
  config.optimizer = "sgd"
  config.lr = 0.5
  config.batch_size = 128
  config.num_steps = 2000
  return config
