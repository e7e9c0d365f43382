"""A small residual CNN on the 8x8 digits images under every algorithm, 8 devices (issue 14).

    python launch.py --config configs/cnn_digits.py            # dense data parallel, Adam
    python launch.py --config configs/cnn_digits.py:sfb        # SFB where sfb.plan says it pays (the head)
    python launch.py --config configs/cnn_digits.py:sign1bit   # 1-bit gradient coding (frc d=2, p=0.2, linf)

Model: conv stem, residual stages of (16, 32, 64) channels at 8x8, 4x4, 2x2 with GroupNorm, the
256 flattened features through a Dense 256 -> 10 head (``common.models.CNN``). GroupNorm, not batch
norm: it normalises within one example, so there are no batch statistics to synchronise across
devices and no mutable state outside the optax contract; the loss stays a mean of per-example
losses, so the sharded gradient equals the single-device one. The convolutions always travel
dense (``sfb.plan`` lists them under "other params"); the head's kernels are SFB-eligible.

``ARGS`` (shared with ``configs/transformer_text.py``): ``dense``, ``sfb`` (payload rule),
``sfb_all`` (rule ``always``: every matrix layer factored, whatever it costs), ``sign1bit``
(1-bit GC-DL), ``sgc`` (real-valued stochastic gradient coding), ``ef`` (EF-signSGD), ``fosi``
(FOSI over Adam, replicated basis), ``dho2`` (DHO2 over Adam, basis partitioned over the mesh).
The sign1bit schemes take full-partition gradients every step (their adapter, spec §5.3), so
they train on the first ``max_train_rows`` rows only, to keep a step affordable.
"""
from configs.common import base_config

ARGS = ("dense", "sfb", "sfb_all", "sign1bit", "sgc", "ef", "fosi", "dho2")
_ALGORITHM = {"dense": "dense", "sfb": "sfb", "sfb_all": "sfb", "sign1bit": "sign1bit", "sgc": "sign1bit",
              "ef": "sign1bit", "fosi": "dho", "dho2": "dho"}


def with_algorithm(arg, setup, *, adam_lr: float, sign_lr: float, sign_rows: int, k: int = 4,
                   refresh_every: int = 50):
  """``base_config`` of the algorithm ``arg`` names, shaped by ``setup(config)``, with the
  algorithm's own fields; raises ValueError (one line, listing ``ARGS``) for an unknown arg.

  ``adam_lr``: Adam's learning rate (dense, sfb, and the base optimizer of fosi / dho2);
  ``sign_lr``: the plain-SGD rate of the sign1bit schemes; ``sign_rows``: their ``max_train_rows``;
  ``k``, ``refresh_every``: the curvature rank and period of fosi / dho2 (m = 4k Lanczos steps).
  """
  arg = arg or "dense"
  if arg not in ARGS:
    raise ValueError(f"unknown config arg {arg!r}; allowed: {', '.join(ARGS)}")
  config = setup(base_config(_ALGORITHM[arg]))
  config.optimizer, config.lr = "adam", adam_lr
  a = config.algo
  if arg == "sfb_all":
    a.rule = "always"
  if config.algorithm == "sign1bit":
    config.optimizer, config.lr, config.max_train_rows = "sgd", sign_lr, sign_rows
    a.scheme = {"sign1bit": "one_bit_gc", "sgc": "sgc", "ef": "ef_signsgd"}[arg]
    a.allocation, a.redundancy, a.straggler_prob, a.bound = "frc", 2, 0.2, "linf"
    a.partitions, a.l2 = "shuffled", 0.0
  if config.algorithm == "dho":
    a.variant, a.k, a.m, a.refresh_every = arg, k, 4 * k, refresh_every
    a.momentum, a.scale_clip = "ema", 1.0        # the fosi_adam preset's Newton-part rule
  return config


def digits_cnn(config):
  config.dataset = "digits"
  config.model = "cnn"
  config.channels = (16, 32, 64)
  config.widths = (256,)
  config.batch_size = 64          # 8 rows per device: the head's first layer is SFB under the payload rule
  config.num_steps = 300
  config.log_every = 50
  config.eval_every = 100
  config.checkpoint_every = 0
  return config


def get_config(arg=None):
  return with_algorithm(arg, digits_cnn, adam_lr=3e-3, sign_lr=0.05, sign_rows=512)
