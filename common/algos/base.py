"""The contract between the training loop (`common.train`) and an algorithm.

Each algorithm has an adapter module ``common/algos/<name>.py`` that imports its package
(``sfb``, ``dho``, ...) and exposes three functions:

  ``default_config() -> ml_collections.ConfigDict``
      Its own fields, placed under ``config.algo`` by the config files.
  ``validate(config, dataset: common.data.Dataset) -> None``
      Raises ``common.errors.ConfigError(field, message)`` for bad input, before any compile.
  ``build(config, ctx: BuildContext) -> Method``
      Everything the loop needs to run it.

and, optionally, ``partition_rows(config, num_rows, num_devices) -> list[np.ndarray]`` when
the algorithm decides which training rows live on which device (redundant allocations).

The loop runs ``jax.jit(jax.shard_map(method.local_step, ...))`` over the 1-D mesh with axis
``"data"``: params replicated (``P()``), optimizer state laid out by ``method.state_specs``,
the data shard ``P("data")``, and a replicated step key ``fold_in(seed_key, step)``.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import numpy as np
import optax
from jax import lax

from common.data import Dataset, Shard, sample_batch
from common.models import Model

AXIS = "data"

# (params, opt_state, shard, key) -> (params, opt_state, metrics); runs per device.
LocalStep = Callable[[Any, Any, Shard, jax.Array], tuple[Any, Any, dict[str, jax.Array]]]


@dataclasses.dataclass(frozen=True)
class BuildContext:
  """What an adapter's ``build`` receives."""
  model: Model
  dataset: Dataset
  params: Any                  # initial (replicated) params, host arrays
  num_devices: int             # P, size of the "data" axis
  batch_per_device: int        # config.batch_size // P
  axis_name: str = AXIS

  def loss_fn(self, params, batch: Shard):
    """Masked mean loss of the model on ``batch``."""
    return self.model.loss(params, batch.x, batch.y, batch.mask)


@dataclasses.dataclass(frozen=True)
class Method:
  """A runnable algorithm.

  Attributes:
    init_state: ``(params, key) -> opt_state`` on the host, global view. Per-worker leaves
      carry a leading axis of size P and are given ``P("data")`` by ``state_specs``.
    local_step: per-device step (see ``LocalStep``); must return replicated params and
      replicated scalar metrics, at least ``"loss"`` (the mean training loss of the step).
    state_specs: ``opt_state -> PartitionSpec tree``; default replicates everything.
    analytic_payload: bytes each device sends per step according to the algorithm's own
      accounting; logged next to the counter's measurement (None: not declared).
    describe: one line shown at start-up.
    branches: for a step with conditionals whose collectives differ (e.g. a curvature refresh),
      ``{label: {function name: runs}}``: each kind of step and which traced functions' branches
      it runs (``common.comm.collective_bytes(taken=...)`` measures each from the compiled step).
    branch_of: ``step (1-based) -> label`` of the branch that step takes (deterministic schedule).
    analytic_branches: ``{label: bytes}``, the algorithm's own accounting of each branch.
    state_format: how the optimizer state lays out what its shapes do not pin down (e.g. which
      device holds which coordinate); stored in the workdir, and a resume whose code lays the state
      out differently is refused instead of restoring it in the wrong order ("": nothing to record).
    refresh: a ``Refresh`` (a curvature refresh compiled as programs of its own, which the loop
      runs before ``local_step`` on the steps its ``due`` names; ``local_step`` then does not
      refresh), or None. A branch of ``branches`` with ``"refresh": True`` runs it, so its bytes are
      the step's plus the refresh's.
  """
  init_state: Callable[[Any, jax.Array], Any]
  local_step: LocalStep
  state_specs: Callable[[Any], Any] | None = None
  analytic_payload: float | None = None
  describe: str = ""
  branches: dict[str, dict[str, bool]] | None = None
  branch_of: Callable[[int], str] | None = None
  analytic_branches: dict[str, float] | None = None
  state_format: str = ""
  refresh: "Refresh | None" = None


@dataclasses.dataclass(frozen=True)
class Refresh:
  """A curvature refresh run one Lanczos iteration per program call (``dho.separate_refresh``):
  ``finish`` after ``iterations`` calls of ``iterate`` from ``start``, on the step's own minibatch.

  Attributes:
    due: ``opt_state -> bool`` on the host (read from the state's own step count).
    start: ``params -> lanczos`` on the host, global layout (placed with ``specs``).
    iterate: ``(params, lanczos, shard, key) -> lanczos`` per device.
    finish: ``(params, opt_state, lanczos) -> opt_state`` per device.
    iterations: calls of ``iterate`` per refresh.
    specs: ``lanczos -> PartitionSpec tree``.
  """
  due: Callable[[Any], bool]
  start: Callable[[Any], Any]
  iterate: Callable[[Any, Any, Shard, jax.Array], Any]
  finish: Callable[[Any, Any, Any], Any]
  iterations: int
  specs: Callable[[Any], Any]


def replicated_specs(tree) -> Any:
  return jax.tree.map(lambda _: jax.P(), tree)


def worker_key(key: jax.Array, axis_name: str | None = AXIS) -> jax.Array:
  """Per-device key ``fold_in(key, axis_index)`` (identity when ``axis_name`` is None)."""
  return key if axis_name is None else jax.random.fold_in(key, lax.axis_index(axis_name))


def local_gradient_method(ctx: BuildContext, tx: optax.GradientTransformation, *,
                          grad_fn: Callable | None = None,
                          extra_args_fn: Callable | None = None,
                          state_specs: Callable | None = None,
                          analytic_payload: float | None = None,
                          describe: str = "",
                          separate_refresh: Any = None) -> Method:
  """The standard step: local minibatch, local gradient, ``tx`` does the exchange.

  The gradient is taken at ``lax.pcast(params, axis, to="varying")`` so it is this
  device's own gradient (no implicit all-reduce); ``tx.update`` receives it and is
  responsible for all communication.

  Args:
    ctx: build context.
    tx: the optax transformation (with ``axis_name=ctx.axis_name``).
    grad_fn: ``(varying_params, batch) -> (loss, grads)``; default ``value_and_grad`` of
      ``ctx.loss_fn``. (SFB passes its factored gradient here.)
    extra_args_fn: ``(params, batch, key) -> dict`` of extra keyword args for ``tx.update``.
    state_specs: the algorithm package's ``state_specs(opt_state, axis_name)``: ``P(axis)`` on the
      leaves that differ per worker (``tx.init`` already gives them a leading axis of size P and
      ``tx.update`` takes each device's row). Default: everything replicated.
    analytic_payload, describe: see ``Method``.
    separate_refresh: a ``dho.SeparateRefresh`` of ``tx`` (or None), run as ``Method.refresh`` on
      the step's own minibatch (the same rows ``local_step`` samples).
  """
  axis = ctx.axis_name
  grad_fn = grad_fn or jax.value_and_grad(ctx.loss_fn)
  specs = state_specs or (lambda state, axis_name: replicated_specs(state))

  def init_state(params, key):
    del key
    return tx.init(params)

  def local_batch(shard, key):   # this device's minibatch of the step (the refresh sees the same rows)
    return sample_batch(shard, worker_key(key, axis), ctx.batch_per_device)

  def local_step(params, opt_state, shard, key):
    batch = local_batch(shard, key)
    loss, grads = grad_fn(lax.pcast(params, axis, to="varying"), batch)
    extra = extra_args_fn(params, batch, key) if extra_args_fn else {}
    updates, opt_state = tx.update(grads, opt_state, params, **extra)
    params = optax.apply_updates(params, updates)
    return params, opt_state, {"loss": lax.pmean(loss, axis)}

  refresh = None
  if separate_refresh is not None:
    sep = separate_refresh
    refresh = Refresh(
        due=sep.due, start=sep.start,
        iterate=lambda params, lanczos, shard, key: sep.iterate(lanczos, params, local_batch(shard, key)),
        finish=lambda params, opt_state, lanczos: sep.finish(opt_state, lanczos, params),
        iterations=sep.iterations(ctx.params), specs=lambda lanczos: specs(lanczos, axis))
  return Method(init_state=init_state, local_step=local_step, state_specs=lambda state: specs(state, axis),
                analytic_payload=analytic_payload, describe=describe, refresh=refresh)


def param_count(params) -> int:
  return int(sum(np.prod(np.shape(x)) for x in jax.tree.leaves(params)))


def param_bytes(params) -> int:
  return int(sum(np.prod(np.shape(x)) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(params)))
