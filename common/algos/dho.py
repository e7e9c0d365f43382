"""Adapter: FOSI / DHO2 (``config.algorithm = "dho"``), package ``dho``.

``algo.variant``:
  * ``"dho2"``: curvature, eigenvector slices, velocity and base state partitioned by parameter
    coordinate over the ``"data"`` axis (reduce-scatter of gradients, all-gather of updates);
  * ``"fosi"``: the reference data-parallel FOSI (pmean of gradients and HVPs, replicated basis).

The curvature batch is the step's own local minibatch, passed to ``tx.update`` as the optax extra
argument ``batch``; the base optimizer is ``config.optimizer`` with ``config.lr``.

``algo.admm = "consensus"`` (dho2 only, needs ``algo.admm_rho > 0``): consensus ADMM with
``admm_period`` local FOSI steps per replica; params (the consensus point) move only at the end of
each period, the logged loss is the loss at the consensus point, and the step's own gradient (taken
at the params) is not used (``dho2`` recomputes it at each replica's iterate).
"""
from __future__ import annotations

import dataclasses

import jax
import numpy as np

import dho
from common.algos import defaults
from common import baseline, models
from common.algos.base import BuildContext, Method, local_gradient_method, param_count
from common.errors import ConfigError

VARIANTS = ("dho2", "fosi")
ADMM = ("none", "reference", "consensus")


default_config = defaults.dho


def _num_params(config, dataset) -> int:
  model = models.make(config.model, num_features=dataset.num_features, num_classes=dataset.num_classes,
                      widths=tuple(config.widths), use_bias=config.use_bias)
  return param_count(jax.eval_shape(model.init, jax.random.key(0)))


def validate(config, dataset) -> None:
  a = config.algo
  if a.variant not in VARIANTS:
    raise ConfigError("algo.variant", f"must be one of {VARIANTS}, got {a.variant!r}")
  for field in ("k", "l", "m", "curvature_delay"):
    if not isinstance(a[field], int) or a[field] < 0:
      raise ConfigError(f"algo.{field}", f"must be an integer >= 0, got {a[field]!r}")
  if not isinstance(a.refresh_every, int) or a.refresh_every <= 0:
    raise ConfigError("algo.refresh_every", f"must be a positive integer, got {a.refresh_every!r}")
  if not isinstance(a.warmup, int) or a.warmup < -1:
    raise ConfigError("algo.warmup", f"must be an integer >= 0 (or -1 for the default), got {a.warmup!r}")
  r = a.k + a.l
  if a.m and a.m < r:
    raise ConfigError("algo.m", f"Lanczos iterations m={a.m} must be >= k + l = {r} (or 0 for 4(k+l))")
  n = _num_params(config, dataset)
  if r > n:
    raise ConfigError("algo.k", f"k + l = {r} exceeds the model's {n} parameters")
  if a.momentum not in dho.MOMENTUM:
    raise ConfigError("algo.momentum", f"must be one of {dho.MOMENTUM}, got {a.momentum!r}")
  if not 0 <= a.decay < 1:
    raise ConfigError("algo.decay", f"must be in [0, 1), got {a.decay}")
  if a.scale_clip < 1:
    raise ConfigError("algo.scale_clip", f"must be >= 1, got {a.scale_clip}")
  if a.alpha < 0:
    raise ConfigError("algo.alpha", f"must be >= 0, got {a.alpha}")
  if a.admm not in ADMM:
    raise ConfigError("algo.admm", f"must be one of {ADMM}, got {a.admm!r}")
  if a.variant == "fosi" and (a.admm != "none" or a.curvature_delay):
    raise ConfigError("algo.variant", "admm and curvature_delay need variant 'dho2'")
  if a.curvature_delay >= a.refresh_every:
    raise ConfigError("algo.curvature_delay", f"must be < refresh_every ({a.refresh_every})")
  if not isinstance(a.admm_period, int) or a.admm_period < 0:
    raise ConfigError("algo.admm_period", f"must be an integer >= 0, got {a.admm_period!r}")
  if not (np.isfinite(a.admm_rho) and a.admm_rho >= 0):
    raise ConfigError("algo.admm_rho", f"must be a finite number >= 0 (0 = unset), got {a.admm_rho!r}")
  if a.admm == "consensus":
    if a.admm_rho <= 0:
      raise ConfigError("algo.admm_rho", "admm='consensus' needs algo.admm_rho > 0 (the ADMM penalty; no "
                        "default, it must match the loss's curvature scale)")
    if a.curvature_delay:
      raise ConfigError("algo.curvature_delay", "must be 0 with admm='consensus'")
  elif a.admm_rho:
    raise ConfigError("algo.admm_rho", f"is the consensus-ADMM penalty; set algo.admm=consensus or leave it 0 "
                      f"(admm={a.admm!r})")


def make_tx(config, ctx: BuildContext):
  a = config.algo
  base = baseline.optimizer(config.optimizer, config.lr, momentum=config.momentum, b1=config.b1,
                            b2=config.b2, weight_decay=config.weight_decay)
  common = dict(k=a.k, l=a.l, m=a.m or None, refresh_every=a.refresh_every, alpha=a.alpha,
                scale_clip=a.scale_clip, momentum=a.momentum, decay=a.decay, seed=a.lanczos_seed,
                eig_floor=a.eig_floor, eig_shift=a.eig_shift)
  if a.warmup >= 0:
    common["warmup"] = a.warmup
  if a.variant == "fosi":
    return dho.fosi(base, ctx.loss_fn, axis_name=ctx.axis_name, **common)
  admm = None if a.admm == "none" else a.admm
  return dho.dho2(base, ctx.loss_fn, num_shards=ctx.num_devices, axis_name=ctx.axis_name, admm=admm,
                  admm_period=(a.admm_period or a.refresh_every) if admm else None,
                  admm_sigma=a.admm_sigma, admm_rho=a.admm_rho if admm == "consensus" else None,
                  curvature_delay=a.curvature_delay, **common)


def schedule(config):
  """``step (1-based) -> {traced function: runs}`` for the step's conditionals (``dho/fosi.py``).

  Refresh at 0-based calls ``W-1, W-1+T, ...`` (function ``refresh``); before ``W + D`` calls
  the base step runs alone (the FOSI direction, function ``hybrid``, does not); with
  ``admm="consensus"`` call ``c`` ends a period when ``(c + 1) % tau == 0`` (function ``sync``).
  """
  a = config.algo
  r, period = a.k + a.l, a.refresh_every
  warmup = a.warmup if a.warmup >= 0 else (period if a.variant == "fosi" else 1)
  consensus = a.variant == "dho2" and a.admm == "consensus"
  tau = a.admm_period or a.refresh_every

  def flags(step: int) -> dict[str, bool]:
    calls = step   # count + 1 at the step's update
    due = r > 0 and calls >= warmup and (calls - warmup) % period == 0
    if consensus:
      return {"refresh": due, "sync": calls % tau == 0}
    return {"refresh": due, "hybrid": r > 0 and calls >= warmup + a.curvature_delay}
  return flags


def branch_label(flags: dict[str, bool]) -> str:
  """``plain`` / ``warmup`` / ``local`` / ``consensus``, prefixed ``refresh+`` on refresh steps."""
  if "sync" in flags:
    base = "consensus" if flags["sync"] else "local"
  else:
    base = "plain" if flags["hybrid"] else "warmup"
  return f"refresh+{base}" if flags["refresh"] else base


def build(config, ctx: BuildContext) -> Method:
  a = config.algo
  tx = make_tx(config, ctx)
  n = param_count(ctx.params)
  lanczos_bytes = 8 if config.x64 else 4
  pbytes = int(np.dtype(jax.tree.leaves(ctx.params)[0].dtype).itemsize)
  sharded = a.variant == "dho2"
  consensus = sharded and a.admm == "consensus"
  kw = dict(k=a.k, l=a.l, m=a.m or None, num_shards=ctx.num_devices, sharded=sharded,
            param_bytes=pbytes, lanczos_bytes=lanczos_bytes, admm="consensus" if consensus else None)
  flags = schedule(config)
  # every combination of the conditionals' branches, with the algorithm's own byte count
  projections = 3 * (a.k + a.l) * pbytes if sharded and ctx.num_devices > 1 else 0   # the 3 r-float psums
  branches, analytic = {}, {}
  for refresh in (False, True):
    for second in (False, True):
      f = {"refresh": refresh, "sync" if consensus else "hybrid": second}
      label = branch_label(f)
      branches[label] = f
      if consensus:
        analytic[label] = dho.payload_bytes(n, refresh=refresh, consensus_step=second, **kw)
      else:
        analytic[label] = dho.payload_bytes(n, refresh=refresh, **kw) - (0 if second else projections)
  largest = max(analytic.values())
  if consensus:
    tau = a.admm_period or a.refresh_every
    describe = (f"dho2 consensus ADMM: rho={a.admm_rho} tau={tau} k={a.k} l={a.l} m={a.m or 4 * (a.k + a.l)} "
                f"T={a.refresh_every} alpha={a.alpha} on {config.optimizer}(lr={config.lr}); analytic bytes/device: "
                f"{analytic['local']} local step, {analytic['consensus']} consensus step, {analytic['refresh+local']} "
                f"refresh; each step logs the bytes of the branch it takes")
  else:
    describe = (f"{a.variant}: k={a.k} l={a.l} m={a.m or 4 * (a.k + a.l)} T={a.refresh_every} alpha={a.alpha} "
                f"on {config.optimizer}(lr={config.lr}); analytic bytes/device: {analytic['plain']} plain step, "
                f"{analytic['refresh+plain']} refresh step; each step logs the bytes of the branch it takes")
  method = local_gradient_method(
      ctx, tx, extra_args_fn=lambda params, batch, key: {"batch": batch},
      worker_leaves=dho.sharded_leaves if sharded else None, analytic_payload=largest, describe=describe)
  return dataclasses.replace(method, branches=branches, branch_of=lambda step: branch_label(flags(step)),
                             analytic_branches=analytic)
