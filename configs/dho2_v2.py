"""DHO2 v2 preset of the authors' released code (DHO2_ADMM_v2.py) on the digits MLP, 8 devices.

    python launch.py --config configs/dho2_v2.py

k=16, l=0, m=64, alpha=0.028, EMA Newton momentum 0.9, c_max=1, Adam 2.8e-3, eigenvalue shift and ADMM
penalty sigma=5e-9, refresh + ADMM period = 8 epochs (digits: 1437 train rows / batch 128 = 11 steps per
epoch -> 88 steps), first refresh at call 0 (warmup=1). The released code runs ResNet-152 on
Tiny-ImageNet over 64 GPUs; this is the same optimizer configuration on a CPU-sized problem.
"""
from configs.common import base_config

STEPS_PER_EPOCH = 11


def get_config(arg=None):
  del arg
  config = base_config("dho")
  config.model = "mlp"
  config.widths = (64,)
  config.batch_size = 128
  config.num_steps = 50 * STEPS_PER_EPOCH
  config.log_every = 50
  config.eval_every = 200
  config.checkpoint_every = 0
  config.optimizer = "adam"
  config.lr = 2.8e-3
  a = config.algo
  a.variant = "dho2"
  a.k, a.l, a.m = 16, 0, 64
  a.alpha = 0.028
  a.momentum = "ema"
  a.decay = 0.9
  a.scale_clip = 1.0
  a.eig_shift = 5e-9
  a.refresh_every = 8 * STEPS_PER_EPOCH
  a.warmup = 1
  a.admm = "reference"
  a.admm_period = 8 * STEPS_PER_EPOCH
  a.admm_sigma = 5e-9
  return config
