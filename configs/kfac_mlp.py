"""K-FAC (kfac-jax, Martens & Grosse 2015) on the digits MLP 64-512-512-10, P=8: the curvature peer.

The same model, batch and steps as ``configs/powersgd_mlp.py`` and ``configs/sfb_mlp.py``. Fixed
learning rate, momentum and damping (kfac-jax's fixed-damping mode); factor EMA 0.95 and inverses
every 5 steps, kfac-jax's defaults. With 4 rows per device the factors are far from full rank, so
the damping is 0.1, not the default 1e-2, and lr 0.03 (with lr 0.05 and λ = 1e-3 the loss was
non-finite at step 6 of ``--config.num_steps=20``). Every step all-reduces the preconditioned gradient (the
parameters' bytes); every 5th step also the factor statistics of the three dense layers.

    python launch.py --config configs/kfac_mlp.py
    python launch.py --config configs/kfac_mlp.py --config.algo.inverse_update_period=20
"""
from configs.common import base_config


def get_config(arg=None):
  del arg
  config = base_config("kfac")
  config.model = "mlp"
  config.widths = (512, 512)
  config.lr = 0.03
  config.algo.damping = 0.1
  config.momentum = 0.9
  config.batch_size = 32
  config.num_steps = 1500
  config.log_every = 250
  config.eval_every = 500
  return config
