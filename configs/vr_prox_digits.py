"""DAP-SVRG on l1-regularized softmax regression, sklearn digits (1438 train rows x 64, 10 classes), 8 workers.

    python launch.py --config configs/vr_prox_digits.py                  # relaxed DAP-SVRG, theta = 1/(K(D+1))
    python launch.py --config configs/vr_prox_digits.py:faithful         # paper rule theta = 1
    python launch.py --config configs/vr_prox_digits.py:tap              # server prox, D = 3
    python launch.py --config configs/vr_prox_digits.py:elastic_net      # l1 + l2
    python launch.py --config configs/vr_prox_digits.py --config.x64=True --config.num_steps=50

One step = one epoch; the logged loss is P(x) = mean cross-entropy + h(x). The intercepts are
not regularized (``algo.regularize_bias=False``). Features are pixel / 16 in [0, 1].
"""
from configs.common import base_config


def get_config(arg=None):
  config = base_config("vr_prox")
  config.dataset = "digits"
  config.model = "softmax"
  config.num_devices = 8
  config.batch_size = 8
  config.num_steps = 30
  config.log_every = 5
  config.eval_every = 10
  config.checkpoint_every = 0
  config.lr = 0.1
  a = config.algo
  a.prox, a.l1, a.l2 = "l1", 1e-3, 0.0
  a.variant, a.relaxation, a.max_delay, a.delay_schedule = "dap_svrg", 0.0, 1, "uniform"
  arg = arg or "relaxed"
  if arg in ("relaxed", "elastic_net"):
    config.lr = 0.1 * 16                # gamma_eff / theta, theta = 1/(8 * 2)
    if arg == "elastic_net":
      a.prox, a.l2 = "elastic_net", 1e-2
  elif arg == "faithful":
    a.relaxation, a.max_delay = 1.0, 0
    config.lr = 0.1 / 8
  elif arg == "tap":
    a.variant, a.max_delay = "tap_svrg", 3
  else:
    raise ValueError(f"unknown config arg {arg!r}: relaxed | faithful | tap | elastic_net")
  return config
