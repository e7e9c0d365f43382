"""Serial model: update-level staleness inside one ``lax.scan`` (the papers' sequential model).

Each server update t is one worker's message. Per round the K workers arrive in a seeded
order; the arriving worker read the server version ``t - d_t`` (``d_t`` <= tau, drawn per
update, clipped to the updates since the snapshot) from a ring buffer of the last tau + 1
versions, drew a minibatch from its own shard, and sent

  * DAP ([HGH] Alg. 1): ``Delta = prox(x_hat - g v) - x_hat``; the server does ``x <- x + theta Delta``;
  * TAP ([MCW]): ``v``; the server does ``x <- prox(x - g v)``.

Unlike the round model, a delay of 0 is possible for every update, so this is the model for
the dead-zone analysis (fixed delay tau: ``x_{t+1} = x_t - x_{t-tau}`` on zero coordinates,
unstable for tau >= 2 [LM]; uniform delays converge).

This is a simulation of the arrival sequence on one device (no collectives); in an SPMD
program every device would ``all_gather`` the K minibatches and run the same scan.

References:
  [HGH] Z. Huo, B. Gu, H. Huang, *Decoupled Asynchronous Proximal Stochastic Gradient Descent
        with Variance Reduction*, arXiv:1609.06804 (DAP-SVRG, Alg. 1).
  [MCW] Q. Meng et al., *Asynchronous Stochastic Proximal Optimization Algorithms with Variance
        Reduction*, AAAI 2017, arXiv:1609.08435 (TAP / Async-ProxSVRG).
  [LM]  S. A. Levin, R. M. May, *A note on difference-delay equations*, Theor. Popul. Biol. 9(2),
        1976 (stability of x_{t+1} = x_t - theta x_{t-tau}).
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from vr_prox._dap import _check_options, full_gradient, variance_reduced_gradient, worker_delta


def _traces(total: int, num_workers: int, max_delay: int, delay_schedule: str, delay_trace, worker_trace):
  """Validated replay arrays: (delays int32 [total] or [1] zeros, worker ids int32 [total] or None)."""
  if delay_schedule == "trace":
    trace = np.asarray(delay_trace)
    if trace.shape != (total,) or trace.min() < 0 or trace.max() > max_delay:
      raise ValueError(f"delay_trace must be {total} integers in [0, {max_delay}]")
    trace = jnp.asarray(trace, jnp.int32)
  else:
    trace = jnp.zeros((1,), jnp.int32)
  if worker_trace is None:
    return trace, None
  wt = np.asarray(worker_trace)
  if wt.shape != (total,) or wt.min() < 0 or wt.max() >= num_workers:
    raise ValueError(f"worker_trace must be {total} worker ids in [0, {num_workers})")
  return trace, jnp.asarray(wt, jnp.int32)


def serial_epoch(example_loss_fn: Callable, prox, params, data, mask, key, *, learning_rate: float,
                 num_workers: int, rounds: int, max_delay: int = 0, delay_schedule: str = "uniform",
                 delay_trace=None, worker_trace=None, server: str = "add", relaxation: float = 1.0,
                 batch_size: int = 1, variance_reduced: bool = True):
  """One epoch of the serial model: snapshot + full gradient, then ``rounds * num_workers`` updates.

  Args:
    example_loss_fn: ``(params, data) -> [rows]`` per-row losses.
    prox: proximal operator (``prox(z, step)``, ``value``).
    params: server iterate at the epoch start (becomes the snapshot).
    data, mask: all rows laid out as ``num_workers`` equal blocks (worker k owns block k;
      valid rows first in each block, ``mask`` 0 on padding), as ``shard_rows`` produces.
    key: PRNG key of this epoch (arrival orders, delays, samples).
    learning_rate: gamma. relaxation: DAP's server weight theta.
    max_delay: tau, in server updates. delay_schedule: uniform | fixed | cyclic | trace
      (``delay_trace``: int array [rounds * num_workers] of update delays).
    worker_trace: optional int array [rounds * num_workers]: the worker of each update (e.g.
      from ``vr_prox.event_trace``); default: each round the K workers in a seeded order.
    server: "add" (DAP) or "prox" (TAP).
  Returns:
    the server iterate after the epoch.
  """
  if not isinstance(num_workers, int) or num_workers < 1:
    raise ValueError(f"num_workers must be a positive integer, got {num_workers!r}")
  _check_options(learning_rate, prox, max_delay, delay_schedule, relaxation, server, "per_update")
  total = rounds * num_workers
  trace, worker_ids = _traces(total, num_workers, max_delay, delay_schedule, delay_trace, worker_trace)
  size = max_delay + 1
  rows = mask.shape[0] // num_workers
  counts = jnp.sum(mask.reshape(num_workers, rows), axis=1)
  dtype = jax.tree.leaves(params)[0].dtype

  if variance_reduced:
    mu, n = full_gradient(example_loss_fn, params, data, mask, None)
  else:
    mu, n = jax.tree.map(jnp.zeros_like, params), jnp.sum(mask).astype(dtype)
  snapshot = params
  history = jax.tree.map(lambda p: jnp.broadcast_to(p, (size,) + jnp.shape(p)), params)
  k_order, k_delay, k_sample = (jax.random.fold_in(key, i) for i in range(3))

  def batch_loss(p, batch):
    return jnp.mean(example_loss_fn(p, batch))

  def one_update(carry, t):
    x, history, head = carry
    r, j = t // num_workers, t % num_workers
    if worker_ids is None:
      worker = jax.random.permutation(jax.random.fold_in(k_order, r), num_workers)[j]
    else:
      worker = worker_ids[t]
    uniform = jax.random.randint(jax.random.fold_in(k_delay, t), (), 0, size)
    d = {"uniform": uniform, "fixed": jnp.asarray(max_delay), "cyclic": worker % size,
         "trace": trace[t % trace.shape[0]]}[delay_schedule]
    d = jnp.minimum(d, t)  # never read across the snapshot
    x_hat = jax.tree.map(lambda h: h[(head - d) % size], history)
    local = counts[worker].astype(jnp.int32)
    idx = worker * rows + jax.random.randint(jax.random.fold_in(k_sample, t), (batch_size,), 0, local)
    batch = jax.tree.map(lambda a: a[idx], data)
    g = jax.grad(batch_loss)(x_hat, batch)
    w = num_workers * counts[worker].astype(dtype) / n
    v = variance_reduced_gradient(g, jax.grad(batch_loss)(snapshot, batch) if variance_reduced else None, mu, w)
    if server == "add":
      delta = worker_delta(prox, x_hat, v, learning_rate)
      x = jax.tree.map(lambda xi, di: xi + relaxation * di, x, delta)
    else:
      x = prox(jax.tree.map(lambda a, b: a - learning_rate * b, x, v), learning_rate)
    head = (head + 1) % size
    history = jax.tree.map(lambda h, xi: h.at[head].set(xi), history, x)
    return (x, history, head), None

  (x, _, _), _ = lax.scan(one_update, (params, history, jnp.zeros([], jnp.int32)), jnp.arange(total))
  return x
