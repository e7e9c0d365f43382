"""Adapter: DAP-SVRG and relatives (``config.algorithm = "vr_prox"``).

One harness step is one outer epoch: the exact full gradient at the snapshot (one psum over
every valid row of every shard), then ``rounds_per_epoch`` inner rounds in a ``lax.scan`` (one
d-float psum per round for DAP, one all_gather of the d-float VR gradients for TAP). Each
worker draws ``batch_size // num_devices`` rows per round from its own shard.
``config.num_steps`` is therefore the number of epochs, ``config.lr`` the step gamma.
The logged ``loss`` is the regularized objective P(x) over the training rows.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

import vr_prox
from common.algos import defaults
from common.algos.base import BuildContext, Method, param_bytes
from common.errors import ConfigError

VARIANTS = ("dap_svrg", "tap_svrg", "prox_svrg", "dap_sgd", "tap_sgd")
PROXES = ("none", "l1", "elastic_net", "box")
SCHEDULES = ("uniform", "fixed", "cyclic")


default_config = defaults.vr_prox


def validate(config, dataset) -> None:
  a = config.algo
  if a.variant not in VARIANTS:
    raise ConfigError("algo.variant", f"unknown variant {a.variant!r}; allowed: {', '.join(VARIANTS)}")
  if a.prox not in PROXES:
    raise ConfigError("algo.prox", f"unknown prox {a.prox!r}; allowed: {', '.join(PROXES)}")
  for field in ("l1", "l2"):
    if not (isinstance(a[field], (int, float)) and np.isfinite(a[field]) and a[field] >= 0):
      raise ConfigError(f"algo.{field}", f"must be a finite number >= 0, got {a[field]!r}")
  if a.prox == "box" and not a.box > 0:
    raise ConfigError("algo.box", f"must be > 0, got {a.box}")
  if not 0 <= a.relaxation <= 1:
    raise ConfigError("algo.relaxation", f"must be in (0, 1] (or 0 for auto = 1/(K(D+1))), got {a.relaxation}")
  if not isinstance(a.max_delay, int) or a.max_delay < 0:
    raise ConfigError("algo.max_delay", f"must be an integer >= 0, got {a.max_delay!r}")
  if a.delay_schedule not in SCHEDULES:
    raise ConfigError("algo.delay_schedule", f"unknown schedule {a.delay_schedule!r}; allowed: "
                      f"{', '.join(SCHEDULES)} (replayed traces: use vr_prox.dap_svrg(delay_trace=...))")
  if a.tap_prox not in ("per_update", "per_round"):
    raise ConfigError("algo.tap_prox", f"must be per_update or per_round, got {a.tap_prox!r}")
  if not isinstance(a.rounds_per_epoch, int) or a.rounds_per_epoch < 0:
    raise ConfigError("algo.rounds_per_epoch", f"must be an integer >= 0 (0 = auto), got {a.rounds_per_epoch!r}")
  if a.variant == "prox_svrg" and config.num_devices != 1:
    raise ConfigError("algo.variant", f"prox_svrg is the single-device method; use --config.num_devices=1 "
                      f"(got {config.num_devices}) or variant tap_svrg/dap_svrg")
  if a.variant == "prox_svrg" and a.max_delay:
    raise ConfigError("algo.max_delay", "prox_svrg has no staleness; use max_delay=0")
  del dataset


def _prox(a):
  mask = None if a.regularize_bias else (lambda tree: jax.tree_util.tree_map_with_path(
      lambda path, _: "bias" not in jax.tree_util.keystr(path), tree))
  if a.prox == "box":
    return vr_prox.prox_box(-a.box, a.box, mask=mask)
  return vr_prox.make_prox(a.prox, l1=a.l1, l2=a.l2, mask=mask)


def rounds_per_epoch(config, num_train: int) -> int:
  return config.algo.rounds_per_epoch or math.ceil(num_train / config.batch_size)


def build(config, ctx: BuildContext) -> Method:
  a = config.algo
  axis = ctx.axis_name
  prox = _prox(a)
  relaxation = "auto" if a.relaxation == 0 else float(a.relaxation)
  common = dict(axis_name=axis, max_delay=a.max_delay, delay_schedule=a.delay_schedule, seed=config.seed)
  if a.variant in ("dap_svrg", "dap_sgd"):
    tx = (vr_prox.dap_svrg if a.variant == "dap_svrg" else vr_prox.dap_sgd)(
        config.lr, prox, relaxation=relaxation, **common)
  elif a.variant in ("tap_svrg", "prox_svrg"):
    tx = vr_prox.tap_svrg(config.lr, prox, tap_prox=a.tap_prox, **common)
  else:
    tx = vr_prox.tap_sgd(config.lr, prox, **common)
  vr = a.variant.endswith("svrg")
  rounds = rounds_per_epoch(config, ctx.dataset.num_train)
  model = ctx.model

  def example_loss(params, shard):
    return model.per_example_loss(params, shard.x, shard.y)

  epoch = vr_prox.epoch_fn(example_loss, tx, rounds=rounds, batch_size=ctx.batch_per_device,
                           axis_name=axis, variance_reduced=vr)

  def local_step(params, opt_state, shard, key):
    params, opt_state = epoch(params, opt_state, shard, shard.mask, key)
    obj = vr_prox.objective(example_loss, prox, params, shard, shard.mask, axis)
    nnz = sum(jnp.sum(x != 0) for x in jax.tree.leaves(params))
    return params, opt_state, {"loss": obj, "nnz": nnz.astype(jnp.float32)}

  pbytes = param_bytes(ctx.params)
  itemsize = np.dtype(jax.tree.leaves(ctx.params)[0].dtype).itemsize
  # per epoch: full gradient (VR only) + one d-float exchange per round + objective (loss sum, row
  # count; XLA merges the identical row-count psum of the full gradient into it)
  payload = (rounds + int(vr)) * pbytes + 2 * itemsize
  theta = (f"theta={'1/(K(D+1))' if relaxation == 'auto' else relaxation}, " if a.variant.startswith("dap")
           else "")
  describe = (f"{a.variant} ({a.prox} l1={a.l1} l2={a.l2}), {theta}D={a.max_delay} {a.delay_schedule}, "
              f"{rounds} rounds/epoch x {ctx.batch_per_device} rows/worker; one step = one epoch")
  return Method(init_state=lambda params, key: jax.device_get(tx.init(params)), local_step=local_step,
                analytic_payload=payload, describe=describe)
