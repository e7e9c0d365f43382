"""One outer epoch of the round model as a pure per-device function, and its jitted shard_map.

An epoch ([HGH] Alg. 1, [XZ] Alg. 1): exact full gradient at the snapshot (one psum), then
``rounds`` inner rounds in a ``lax.scan``; in each round every device draws ``batch_size`` rows
i.i.d. uniformly from its valid rows, differentiates at its stale read and at the snapshot, and
calls the transformation (one psum for DAP, one all_gather for TAP) with its row count n_k and
the global n, so uneven shards get the weights ``K n_k / n`` with and without variance
reduction (without it, n costs one scalar psum per epoch).

References:
  [HGH] Z. Huo, B. Gu, H. Huang, *Decoupled Asynchronous Proximal Stochastic Gradient Descent
        with Variance Reduction*, arXiv:1609.06804 (DAP-SVRG, Alg. 1).
  [XZ]  L. Xiao, T. Zhang, *A Proximal Stochastic Gradient Method with Progressive Variance
        Reduction*, SIAM J. Optim. 24(4):2057-2075, 2014 (ProxSVRG, Alg. 1 and Theorem 3.1).
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import optax
from jax import lax

from vr_prox._dap import full_gradient, global_count, read_params, refresh
from vr_prox.axis import axis_index, to_varying


def sample_indices(key, round_index, worker, batch_size: int, local_count):
  """Row indices of one round on one worker: ``randint(fold_in(fold_in(key, r), k), (b,), 0, n_k)``.

  Valid rows must be the first ``n_k`` rows of the shard (padding at the end).
  """
  k = jax.random.fold_in(jax.random.fold_in(key, round_index), worker)
  return jax.random.randint(k, (batch_size,), 0, local_count)


def epoch_fn(example_loss_fn: Callable, tx: optax.GradientTransformationExtraArgs, *, rounds: int,
             batch_size: int = 1, axis_name: str | None = "data", variance_reduced: bool = True,
             snapshot: str = "last", get_state: Callable | None = None, set_state: Callable | None = None):
  """Per-device epoch ``(params, state, data, mask, key) -> (params, state)``.

  Args:
    example_loss_fn: ``(params, data) -> [rows]`` per-row smooth losses f_i.
    tx: a ``dap_svrg``-family transformation built with the same ``axis_name``.
    rounds: inner rounds m per epoch (server versions).
    batch_size: rows per worker per round.
    axis_name: worker axis (run inside ``shard_map``) or None (one device, plain jit).
    variance_reduced: refresh the snapshot and full gradient at the epoch start.
    snapshot: ``"last"`` (the next epoch starts from the last server iterate: the authors' code,
      the practical choice) or ``"average"`` (from the mean of the epoch's iterates: the choice
      of [XZ] Theorem 3.1, x~_s = (1/m) sum_k x_k).
    get_state, set_state: locate the ``DapSvrgState`` inside a wrapped state (default: it is).
  """
  if snapshot not in ("last", "average"):
    raise ValueError(f"snapshot must be 'last' or 'average', got {snapshot!r}")
  if not isinstance(rounds, int) or rounds < 1:
    raise ValueError(f"rounds must be a positive integer, got {rounds!r}")
  get_state = get_state or (lambda s: s)
  set_state = set_state or (lambda s, inner: inner)

  def batch_loss(p, batch):
    return jnp.mean(example_loss_fn(p, batch))

  def epoch(params, state, data, mask, key):
    if variance_reduced:
      mu, n = full_gradient(example_loss_fn, params, data, mask, axis_name)
      state = set_state(state, refresh(get_state(state), params, mu, n))
    else:  # the shard weights K n_k / n need n also without a snapshot (one scalar psum)
      n = global_count(mask, axis_name, jax.tree.leaves(params)[0].dtype)
    local_count = jnp.sum(mask).astype(jnp.int32)
    worker = axis_index(axis_name)

    def one_round(carry, _):
      params, state, total = carry
      inner = get_state(state)
      idx = sample_indices(key, inner.count, worker, batch_size, local_count)
      batch = jax.tree.map(lambda a: a[idx], data)
      g_read = jax.grad(batch_loss)(to_varying(read_params(inner, params, axis_name), axis_name), batch)
      extra = {"local_count": local_count, "num_rows": n}
      if variance_reduced:
        extra["snapshot_grads"] = jax.grad(batch_loss)(to_varying(inner.snapshot, axis_name), batch)
      updates, state = tx.update(g_read, state, params, **extra)
      params = optax.apply_updates(params, updates)
      if snapshot == "average":
        total = jax.tree.map(jnp.add, total, params)
      return (params, state, total), None

    total = jax.tree.map(jnp.zeros_like, params) if snapshot == "average" else ()
    (params, state, total), _ = lax.scan(one_round, (params, state, total), None, length=rounds)
    if snapshot == "average":
      params = jax.tree.map(lambda s, p: (s / rounds).astype(p.dtype), total, params)
    return params, state

  return epoch


def sharded_epoch(example_loss_fn: Callable, tx, mesh, *, rounds: int, batch_size: int = 1,
                  axis_name: str = "data", variance_reduced: bool = True, snapshot: str = "last",
                  donate: bool = False):
  """``jit(shard_map(epoch_fn(...)))`` over ``mesh``: params/state replicated, data/mask ``P(axis)``,
  key replicated. Block on the result every call on CPU (queued collective programs deadlock)."""
  fn = epoch_fn(example_loss_fn, tx, rounds=rounds, batch_size=batch_size, axis_name=axis_name,
                variance_reduced=variance_reduced, snapshot=snapshot)
  spec = jax.P(axis_name)
  sm = jax.shard_map(fn, mesh=mesh, in_specs=(jax.P(), jax.P(), spec, spec, jax.P()),
                     out_specs=(jax.P(), jax.P()))
  return jax.jit(sm, donate_argnums=(0, 1) if donate else ())
