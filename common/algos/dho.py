"""Adapter: FOSI / DHO2 (``config.algorithm = "dho"``), package ``dho``.

``algo.variant``:
  * ``"dho2"``: curvature, eigenvector slices, velocity and base state partitioned by parameter
    coordinate over the ``"data"`` axis (reduce-scatter of gradients, all-gather of updates);
  * ``"fosi"``: the reference data-parallel FOSI (pmean of gradients and HVPs, replicated basis).

The curvature batch is the step's own local minibatch, passed to ``tx.update`` as the optax extra
argument ``batch``; the base optimizer is ``config.optimizer`` with ``config.lr``.

``algo.replicated_base`` (dho2 only): the base optimizer runs on the full gathered vector (exact for
bases that are not coordinate-wise, such as global-norm clipping; ``dho2(replicated_base=True)``).

``algo.admm = "consensus"`` (dho2 only, needs ``algo.admm_rho > 0``): consensus ADMM with
``admm_period`` local FOSI steps per replica; params (the consensus point) move only at the end of
each period, the logged loss is the loss at the consensus point, and the step's own gradient (taken
at the params) is not used (``dho2`` recomputes it at each replica's iterate).
"""
from __future__ import annotations

import dataclasses
import re

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
  """The parameter count of the model ``config`` builds (every model field: cnn, transformer, mlp)."""
  model = models.from_config(config, dataset)
  return param_count(jax.eval_shape(model.init, jax.random.key(0)))


def _field_of(message: str) -> str:
  """The ``config.algo`` field a constructor's ``ValueError`` is about: its first word when that
  is a field (``"k must be ..."``), else the longest field it names (``"admm='consensus' needs
  admm_rho > 0"`` is about ``admm_rho``, not ``admm``)."""
  fields = defaults.dho()
  name = message.split()[0].strip("(:,")
  if name in fields:
    return f"algo.{name}"
  named = [w for w in re.findall(r"[A-Za-z_]\w*", message) if w in fields]
  return f"algo.{max(named, key=len)}" if named else "algo"


def validate(config, dataset) -> None:
  """The variant and the admm mode here; every hyperparameter by the constructor itself
  (``dho.fosi`` / ``dho.dho2`` / ``dho.consensus_admm``), its ``ValueError`` named by field."""
  a = config.algo
  if a.variant not in VARIANTS:
    raise ConfigError("algo.variant", f"must be one of {VARIANTS}, got {a.variant!r}")
  if a.admm not in ADMM:
    raise ConfigError("algo.admm", f"must be one of {ADMM}, got {a.admm!r}")
  if a.variant == "fosi" and (a.admm != "none" or a.curvature_delay or a.replicated_base):
    raise ConfigError("algo.variant", "admm, curvature_delay and replicated_base need variant 'dho2'")
  try:
    make_tx(config, None, num_devices=config.num_devices or jax.device_count())
  except ValueError as e:
    raise ConfigError(_field_of(str(e)), str(e)) from None
  n = _num_params(config, dataset)
  if a.k + a.l > n:
    raise ConfigError("algo.k", f"k + l = {a.k + a.l} exceeds the model's {n} parameters")


def make_tx(config, ctx: BuildContext | None, *, num_devices: int | None = None):
  """The transformation of ``config``; fields that are None (not set) take the library's default."""
  a = config.algo
  base = baseline.optimizer(config.optimizer, config.lr, momentum=config.momentum, b1=config.b1,
                            b2=config.b2, weight_decay=config.weight_decay)
  loss_fn = ctx.loss_fn if ctx is not None else (lambda params, batch: 0.0)
  common = dict(k=a.k, l=a.l, m=a.m, refresh_every=a.refresh_every, alpha=a.alpha, scale_clip=a.scale_clip,
                momentum=a.momentum, decay=a.decay, seed=a.lanczos_seed, eig_floor=a.eig_floor, eig_shift=a.eig_shift)
  if a.warmup is not None:
    common["warmup"] = a.warmup
  axis_name = ctx.axis_name if ctx is not None else "data"
  if a.variant == "fosi":
    return dho.fosi(base, loss_fn, axis_name=axis_name, **common)
  admm = None if a.admm == "none" else a.admm
  period = (a.refresh_every if a.admm_period is None else a.admm_period) if admm else None
  return dho.dho2(base, loss_fn, num_shards=ctx.num_devices if ctx is not None else num_devices,
                  axis_name=axis_name, admm=admm, admm_period=period, admm_sigma=a.admm_sigma, admm_rho=a.admm_rho,
                  curvature_delay=a.curvature_delay, replicated_base=a.replicated_base, **common)


def schedule(config):
  """``step (1-based) -> {traced function: runs}`` for the step's conditionals (``dho/fosi.py``).

  Refresh at 0-based calls ``W-1, W-1+T, ...`` (function ``refresh``); before ``W + D`` calls
  the base step runs alone (the FOSI direction, function ``hybrid``, does not); with
  ``admm="consensus"`` call ``c`` ends a period when ``(c + 1) % tau == 0`` (function ``sync``).
  """
  a = config.algo
  r, period = a.k + a.l, a.refresh_every
  warmup = a.warmup if a.warmup is not None else (period if a.variant == "fosi" else 1)
  consensus = a.variant == "dho2" and a.admm == "consensus"
  tau = a.refresh_every if a.admm_period is None else a.admm_period

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
  lanczos_bytes = 8 if config.x64 else 4
  pbytes = int(np.dtype(jax.tree.leaves(ctx.params)[0].dtype).itemsize)
  sharded = a.variant == "dho2"
  consensus = sharded and a.admm == "consensus"
  kw = dict(k=a.k, l=a.l, m=a.m, num_shards=ctx.num_devices, sharded=sharded, param_bytes=pbytes,
            lanczos_bytes=lanczos_bytes, admm="consensus" if consensus else None,
            replicated_base=sharded and a.replicated_base)
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
        analytic[label] = dho.payload_bytes(ctx.params, refresh=refresh, consensus_step=second, **kw)
      else:
        analytic[label] = dho.payload_bytes(ctx.params, refresh=refresh, **kw) - (0 if second else projections)
  largest = max(analytic.values())
  if consensus:
    tau = a.refresh_every if a.admm_period is None else a.admm_period
    describe = (f"dho2 consensus ADMM: rho={a.admm_rho} tau={tau} k={a.k} l={a.l} m={a.m or 4 * (a.k + a.l)} "
                f"T={a.refresh_every} alpha={a.alpha} on {config.optimizer}(lr={config.lr}); analytic bytes/device: "
                f"{analytic['local']} local step, {analytic['consensus']} consensus step, {analytic['refresh+local']} "
                f"refresh; each step logs the bytes of the branch it takes")
  else:
    describe = (f"{a.variant}: k={a.k} l={a.l} m={a.m or 4 * (a.k + a.l)} T={a.refresh_every} alpha={a.alpha} "
                f"on {config.optimizer}(lr={config.lr}); analytic bytes/device: {analytic['plain']} plain step, "
                f"{analytic['refresh+plain']} refresh step; each step logs the bytes of the branch it takes")
  # the refresh runs as programs of its own, one Lanczos iteration (one HVP) per call, so that no
  # program holds the HVP loop (issue 14, compile time); consensus ADMM keeps its in-step refresh
  # (it also gathers the eigenvector rows)
  separate = dho.separate_refresh(tx) if not consensus and a.k + a.l > 0 else None
  extra = {"refresh": False} if separate else {}
  method = local_gradient_method(
      ctx, tx, extra_args_fn=lambda params, batch, key: {"batch": batch, **extra},
      state_specs=dho.state_specs, analytic_payload=largest, describe=describe, separate_refresh=separate)
  # dho2's coordinate partition (bucketed since ce4be1e): a checkpoint of another layout restores with
  # equal shapes but permuted coordinates, so the workdir records it
  layout = dho.Layout.of_params(ctx.params, ctx.num_devices) if sharded else None
  state_format = f"dho2 coordinates: buckets {layout.sizes} over {ctx.num_devices} shards" if layout else ""
  return dataclasses.replace(method, branches=branches, branch_of=lambda step: branch_label(flags(step)),
                             analytic_branches=analytic, state_format=state_format)
