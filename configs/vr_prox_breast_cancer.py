"""DAP-SVRG on elastic-net logistic regression, sklearn breast_cancer (455 train rows x 30), 8 workers.

    python launch.py --config configs/vr_prox_breast_cancer.py                 # DAP-SVRG, relaxed theta
    python launch.py --config configs/vr_prox_breast_cancer.py:faithful        # paper rule theta = 1 (stalls)
    python launch.py --config configs/vr_prox_breast_cancer.py:tap             # server prox (TAP)
    python launch.py --config configs/vr_prox_breast_cancer.py:prox_svrg       # 1 device, Xiao-Zhang
    python launch.py --config configs/vr_prox_breast_cancer.py:dap_sgd         # no variance reduction
    python launch.py --config configs/vr_prox_breast_cancer.py --config.x64=True --config.algo.max_delay=3

One step = one epoch (full gradient + rounds_per_epoch asynchronous rounds); the logged loss is
P(x) = mean logistic loss + l1 |x|_1 + (l2/2) |x|^2. Binary logistic model without intercept,
labels {0,1} (the loss equals log(1 + exp(-y a.x)) with y = +-1). Features are the harness's
standardised columns (not unit rows), so the step is smaller than the unit-row reference
problem of the spec (gamma ~ 1/L, L = max ||a_i||^2 / 4).
"""
from configs.common import base_config


def get_config(arg=None):
  config = base_config("vr_prox")
  config.dataset = "breast_cancer"
  config.model = "logistic"
  config.use_bias = False
  config.num_devices = 8
  config.batch_size = 8                 # 1 row per worker per round
  config.num_steps = 30                 # epochs
  config.log_every = 5
  config.eval_every = 10
  config.checkpoint_every = 0
  config.lr = 0.02
  a = config.algo
  a.prox, a.l1, a.l2 = "elastic_net", 3e-3, 1e-2
  a.variant, a.relaxation, a.max_delay, a.delay_schedule = "dap_svrg", 0.0, 0, "uniform"  # theta = 1/K
  arg = arg or "relaxed"
  if arg == "relaxed":
    config.lr = 0.02 * 8                # gamma_eff / theta
  elif arg == "faithful":
    a.relaxation = 1.0
    config.lr = 0.02 / 8
  elif arg == "tap":
    a.variant, a.max_delay = "tap_svrg", 3
  elif arg == "prox_svrg":
    a.variant, config.num_devices, config.batch_size = "prox_svrg", 1, 1
  elif arg == "dap_sgd":
    a.variant = "dap_sgd"
    config.lr = 0.02 * 8
  else:
    raise ValueError(f"unknown config arg {arg!r}: relaxed | faithful | tap | prox_svrg | dap_sgd")
  return config
