"""1-bit gradient coding on digits softmax regression (sign1bit spec §5.3 / §8.8), 8 workers.

W = 8, frc d = 2 (N = 4 partitions, each on 2 workers), stragglers p = 0.2, label-sorted
(non-i.i.d.) partitions, L2 λ = 1e-3, full-partition gradients, plain SGD. D = 650 parameters
(64 weights + bias per class), so a reporting worker sends 82 B (+ 4 B for a per-worker scale).

    python launch.py --config configs/sign1bit_digits.py                 # 1-bit GC, B = 'linf', lr 0.3
    python launch.py --config configs/sign1bit_digits.py:const           # 1-bit GC, B = lG/(d(1-p)) = 0.625, lr 0.03
    python launch.py --config configs/sign1bit_digits.py:sgc             # real-valued SGC (fp32 payload)
    python launch.py --config configs/sign1bit_digits.py:shuffled        # i.i.d. partitions
    python launch.py --config configs/sign1bit_digits.py:ef              # EF-signSGD (d = 1, N = W)
    python launch.py --config configs/sign1bit_digits.py:mv              # signSGD majority vote (d = 1); fails on label-sorted data
    python launch.py --config configs/sign1bit_digits.py:is              # ignore stragglers, fp32 (d = 1)
    python launch.py --config configs/sign1bit_digits.py:is_1bit         # ignore stragglers, 1-bit, B = 'linf' (d = 1)
    python launch.py --config configs/sign1bit_digits.py:mv,shuffled     # arguments combine with commas
    python launch.py --config configs/sign1bit_digits.py --config.algo.bound=0.5 --config.algo.wire=int8_psum

Logged per step: ``loss`` (the exact objective F at the step's params), ``active`` (|R_t|),
``uplink_bits`` (cumulative Σ_t |R_t| · bits per worker) and, with a constant bound, ``clipped``.
F includes the L2 term (λ/2)‖w‖² (about 0.13 at the end of the default run); the summary's
``train_loss`` / ``test_loss`` are the harness's plain mean cross-entropy without it.
Reference (spec §8.8): default → train loss <= 0.34 and test accuracy >= 0.95 after 1500 steps;
``:const`` → loss <= 0.70.
"""
from configs.common import base_config

ARGS = ("gc", "const", "sgc", "shuffled", "ef", "mv", "is", "is_1bit")


def get_config(arg=None):
  config = base_config("sign1bit")
  config.dataset = "digits"
  config.model = "softmax"
  config.num_devices = 8
  config.optimizer = "sgd"
  config.lr = 0.3
  config.batch_size = 8          # unused: every step uses full partition gradients
  config.num_steps = 1500
  config.log_every = 250
  config.eval_every = 250
  config.checkpoint_every = 0
  a = config.algo
  a.scheme, a.allocation, a.redundancy = "one_bit_gc", "frc", 2
  a.straggler_prob, a.bound, a.wire = 0.2, "linf", "packed"
  a.partitions, a.l2 = "sorted", 1e-3
  for part in (arg or "gc").split(","):
    part = part.strip()
    if part == "gc":
      pass
    elif part == "const":
      # B = l G / (d (1 - p)) with G = 1 (|x_j (softmax_c - y_c)| <= 1 for x in [0, 1]), l = 1, d = 2, p = 0.2
      a.bound, config.lr = "0.625", 0.03
    elif part == "sgc":
      a.scheme, config.lr = "sgc", 1.0
    elif part == "shuffled":
      a.partitions = "shuffled"
    elif part == "ef":
      a.scheme, config.lr = "ef_signsgd", 0.3
    elif part == "mv":
      a.scheme, config.lr = "signsgd_majority", 1e-3
    elif part == "is":
      a.scheme, config.lr = "ignore_stragglers", 1.0
    elif part == "is_1bit":
      a.scheme, a.bound, config.lr = "ignore_stragglers_1bit", "linf", 0.3
    else:
      raise ValueError(f"unknown config arg {part!r}; allowed (comma-separated): {', '.join(ARGS)}")
  return config
