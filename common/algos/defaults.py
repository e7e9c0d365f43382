"""Each algorithm's ``config.algo`` fields and defaults, importable without JAX.

``launch.py`` loads a config file and checks its fields before it imports JAX, so a bad
command line fails in well under a second. The adapters re-export these as their
``default_config`` (``common/algos/base.py``); an algorithm without an entry here
(``sfb``) is read from its adapter module.
"""
from __future__ import annotations

import importlib

import ml_collections
from ml_collections import config_dict


def dense() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict()


def powersgd() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.rank = 2                  # r: rank of each matrix-shaped gradient's approximation (Vogels et al. 2019)
  return c


def kfac() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.damping = 1e-3              # λ: fixed damping, added as λI to the Kronecker-factored curvature (kfac-jax)
  c.curvature_ema = 0.95        # ε: factor EMA decay (kfac-jax's default)
  c.inverse_update_period = 5   # T_inv: steps between factor all-reduces + pi-damped inverses (kfac-jax's default)
  c.estimation_mode = "ggn_curvature_prop"   # kfac-jax's default; fisher_empirical | fisher_gradients | ggn_exact ...
  return c


def sfb_sdca() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.loss = "squared_hinge"    # squared_hinge | squared (targets ±1 one-vs-rest)
  c.C = 0.05                  # LinearSVC's C; λ = 1/(C·N)
  c.sigma_prime = 0.0         # aggregation safety factor σ'; 0 means P (safe); 1 diverges
  return c


def sign1bit() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.scheme = "one_bit_gc"      # one_bit_gc | sgc | ignore_stragglers | ignore_stragglers_1bit |
  #                              signsgd_majority | ef_signsgd
  c.allocation = "frc"         # frc | cyclic | bibd (GC schemes; d = 1 baselines use frc d = 1)
  c.redundancy = 2             # d: workers per partition (bibd: 3 = Fano on 7 devices, W-1 = complement)
  c.partitions_per_group = 1   # frc only: m partitions per group, N = (W/d)·m
  c.straggler_prob = 0.2       # p in [0, 1): each worker straggles independently every step
  c.bound = "linf"             # quantizer bound B: "linf" (per worker, one extra f32) or a number > 0
  #                              given as a string, e.g. --config.algo.bound=0.625
  c.wire = "packed"            # packed (u8 all-gather) | int8_psum (s8[D] all-reduce, 8x the bits)
  c.partitions = "sorted"      # sorted (label-sorted, non-i.i.d.) | shuffled (seeded permutation)
  c.l2 = 1e-3                  # λ: every f_k includes (λ/2)‖w‖²
  return c


def vr_prox() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.variant = "dap_svrg"        # dap_svrg | tap_svrg | prox_svrg (1 device) | dap_sgd | tap_sgd
  c.prox = "l1"                 # none | l1 | elastic_net | box
  c.l1 = 1e-3
  c.l2 = 0.0
  c.box = 1.0                   # prox=box: |x_j| <= box
  c.regularize_bias = False     # the prox leaves leaves named "bias" alone unless True
  c.relaxation = 1.0            # DAP server weight theta in (0, 1]; 0 = auto 1/(K (D + 1))
  c.max_delay = 0               # D: read delay bound in rounds
  c.delay_schedule = "uniform"  # uniform | fixed | cyclic
  c.tap_prox = "per_update"     # per_update | per_round (TAP only)
  c.rounds_per_epoch = 0        # 0 = ceil(n_train / batch_size): one pass of stochastic gradients
  return c


def dho() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.variant = "dho2"
  c.k = 10                  # largest eigenpairs
  c.l = 0                   # smallest eigenpairs
  c.m = config_dict.placeholder(int)        # Lanczos iterations; None (not set) = 4 (k + l)
  c.refresh_every = 100     # T
  c.warmup = config_dict.placeholder(int)   # W (first refresh at call W-1); None = default (fosi: T, dho2: 1)
  c.alpha = 0.01
  c.scale_clip = 3.0        # c_max (fosi_adam preset uses 1)
  c.momentum = "heavy_ball"  # heavy_ball | ema | nesterov | none (Newton-part momentum)
  c.decay = 0.9
  c.lanczos_seed = 0
  c.eig_floor = 0.0
  c.eig_shift = 0.0
  c.admm = "none"           # none | reference | consensus (dho2 only)
  c.admm_period = config_dict.placeholder(int)   # steps; None = refresh_every
  c.admm_sigma = 5e-9       # reference rule's sigma
  c.admm_rho = config_dict.placeholder(float)    # consensus penalty rho > 0 (required by consensus; None = not set)
  c.curvature_delay = 0     # MR-DHO2 emulation (dho2 only)
  c.replicated_base = False  # dho2: run the base optimizer on the full gathered vector (non-coordinate-wise bases)
  return c


def default_config(algorithm: str) -> ml_collections.ConfigDict:
  """``config.algo`` for ``algorithm`` (assumed valid: see ``common.algos.get``)."""
  own = globals().get(algorithm)
  if callable(own) and own is not default_config:
    return own()
  return importlib.import_module(f"common.algos.{algorithm}").default_config()
