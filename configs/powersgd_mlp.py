"""PowerSGD (Vogels et al. 2019) rank 2 on the digits MLP 64-512-512-10, P=8, momentum SGD.

The peer of ``configs/sfb_mlp.py`` (same model, batch and steps; both low-rank): every kernel
(64x512, 512x512, 512x10) travels as rank-2 factors P and Q (r(n+m) < n·m for each), the biases
densely; ``powersgd.payload_bytes`` gives 4·(2·576 + 2·1024 + 2·522 + 1034) = 21,112 B/device/step.

    python launch.py --config configs/powersgd_mlp.py
    python launch.py --config configs/powersgd_mlp.py --config.algo.rank=4
"""
from configs.common import base_config


def get_config(arg=None):
  del arg
  config = base_config("powersgd")
  config.model = "mlp"
  config.widths = (512, 512)
  config.optimizer = "momentum"
  config.lr = 0.05
  config.batch_size = 32
  config.num_steps = 1500
  config.log_every = 250
  config.eval_every = 500
  return config
