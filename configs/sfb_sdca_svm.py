"""SFB-SDCA: one-vs-rest squared-hinge SVM on digits (sfb.md E5), C=0.05, P=8, b=8 rows/device/round.

The loss column is the primal objective; ``duality_gap`` certifies the optimum
(tests/test_sfb_reproduction.py compares it with scikit-learn's LinearSVC).

    python launch.py --config configs/sfb_sdca_svm.py
    python launch.py --config configs/sfb_sdca_svm.py --config.algo.sigma_prime=1   # diverges
"""
from configs.common import base_config


def get_config(arg=None):
  del arg
  config = base_config("sfb_sdca")
  config.model = "softmax"
  config.batch_size = 64         # b = 8 dual steps per device per round
  config.num_steps = 2000        # ~89 epochs of the 1437 training rows
  config.log_every = 200
  config.eval_every = 500
  config.checkpoint_every = 1000
  return config
