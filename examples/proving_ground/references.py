"""Single-device references, written without the transformation under test.

* ``dense``: ``jax.grad`` of the loss on the global batch and the same optax chain on one device
  (the transformation itself with ``axis_name=None`` where the library defines exact single-device
  semantics: ``dho.fosi`` is DHO2's reference);
* ``one_bit_gc``: every worker's local gradient computed on one device, decoded by
  ``sign1bit.reference_decode`` with the same keys (eager: it copies to the host);
* ``ef_signsgd``: EF-signSGD (Karimireddy et al., ICML 2019, Alg. 1) in NumPy, straggler mask from
  the spec's stream ``bernoulli(fold_in(fold_in(key(seed), t), 0), 1 - p, (W,))``;
* ``vr_round``: the round model of DAP-SVRG / DAP-SGD / TAP-SVRG (Huo, Gu, Huang, arXiv:1609.06804,
  Alg. 1; spec vr_prox.md §4a) with delay 0, in plain JAX on one device: full gradient over every
  row, VR gradient ``v_k = w_k (g_k - g_k~) + mu`` with ``w_k = K n_k / n``, DAP server
  ``x += theta Σ_k (prox_{γh}(x - γ v_k) - x)``, TAP per round ``x = prox_{Kγh}(x - γ Σ_k v_k)``.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
import sign1bit
import vr_prox
from jax.flatten_util import ravel_pytree

from proving_ground.spmd import fast_jit


def dense(loss_fn: Callable, tx, params, batches, extras: Callable | None = None,
          before: optax.GradientTransformation | None = None, workers: int = 1):
  """Final params of ``tx`` on ``jax.grad(loss_fn)`` of each global batch (jit, one device).

  ``before`` (a stateless transformation, ``Case.before()``) runs on each of ``workers`` equal
  row shards' own gradient, and ``tx`` gets the mean of the results: what runs before the
  transformation in the user's chain sees the worker's local gradient (README contract). Without
  ``before`` the gradient is that of the global batch (the mean of equal shards' gradients).
  """
  state = tx.init(params)

  def grad(p, x, y):
    if before is None:
      return jax.grad(loss_fn)(p, x, y)
    local = jax.vmap(lambda xk, yk: local_before(before, jax.grad(loss_fn)(p, xk, yk), p))(
        *(a.reshape((workers, -1) + a.shape[1:]) for a in (x, y)))
    return jax.tree.map(lambda g: jnp.mean(g, 0), local)

  def step(p, s, x, y):
    u, s = tx.update(grad(p, x, y), s, p, **(extras(x, y) if extras else {}))
    return optax.apply_updates(p, u), s

  step = fast_jit(step)

  for x, y in batches:
    params, state = step(params, state, x, y)
  return jax.tree.map(np.asarray, params)


def local_before(before: optax.GradientTransformation | None, grads, params=None):
  """``before`` (stateless: ``clip_by_global_norm``) on one worker's own gradient."""
  return grads if before is None else before.update(grads, before.init(grads), params)[0]


def _clip(tree, max_norm):
  return optax.clip_by_global_norm(max_norm).update(tree, optax.EmptyState())[0]


class Accumulator:
  """``optax.MultiSteps``' running mean, per worker: ``acc += (g - acc) / (n + 1)``."""

  def __init__(self, every: int):
    self.every, self.n, self.acc = every, 0, None

  def add(self, grads):
    """Returns the accumulated gradients when they are due, else None."""
    if not self.every:
      return grads
    self.acc = grads if self.n == 0 else jax.tree.map(lambda a, g: a + (g - a) / (self.n + 1), self.acc, grads)
    self.n = (self.n + 1) % self.every
    return self.acc if self.n == 0 else None


def per_worker_loop(params, local_grads: Callable, decode: Callable, case, *, learning_rate: float, clip: float):
  """Eager loop shared by the sign1bit references.

  ``local_grads(params, t) -> [W trees]``; ``decode(flat [W, D], t_inner) -> ĝ flat``. Applies the
  case's wrappers where the user's chain applies them: ``case.before()`` (per worker, as in
  ``dense``), MultiSteps (per worker), learning rate, clip after.
  """
  acc = Accumulator(case.accumulate)
  inner = 0
  for t in range(case.steps):
    grads = [local_before(case.before(), g) for g in local_grads(params, t)]
    grads = acc.add(grads)
    if grads is None:
      continue
    flat = jnp.stack([ravel_pytree(g)[0].astype(jnp.float32) for g in grads])
    ghat = decode(flat, inner)
    unravel = ravel_pytree(params)[1]
    dtype = jax.tree.leaves(params)[0].dtype
    updates = jax.tree.map(lambda g: -learning_rate * g, unravel(ghat.astype(dtype)))
    if case.clip == "after":
      updates = _clip(updates, clip)
    params = optax.apply_updates(params, updates)
    inner += 1
  return jax.tree.map(np.asarray, params)


def one_bit_gc_decoder(alloc, straggler_prob, bound, seed):
  def decode(flat, t):
    return sign1bit.reference_decode(flat, alloc, straggler_prob, bound, seed=seed, step=t)[0]
  return decode


def ef_signsgd_decoder(num_workers, straggler_prob, seed):
  """EF-signSGD: u = g + e, Δ = (‖u‖₁/D)·sign(u) (0 -> +1), e <- u - Δ on reporting workers;
  ĝ = Σ_{reporting} Δ / max(|R|, 1)."""
  error = [None]

  def decode(flat, t):
    g = np.asarray(flat, np.float64)
    e = np.zeros_like(g) if error[0] is None else error[0]
    key = jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), t), 0)
    active = np.asarray(jax.random.bernoulli(key, 1.0 - straggler_prob, (num_workers,)))
    u = g + e
    delta = np.mean(np.abs(u), axis=1, keepdims=True) * np.where(u >= 0, 1.0, -1.0)
    error[0] = np.where(active[:, None], u - delta, e)
    return jnp.asarray(np.sum(delta[active], axis=0) / max(active.sum(), 1), jnp.float32)

  return decode


def soft_threshold(tree, threshold):
  """prox of ``threshold·||x||₁`` on every leaf."""
  return jax.tree.map(lambda z: jnp.sign(z) * jnp.maximum(jnp.abs(z) - threshold, 0).astype(z.dtype), tree)


def vr_round(example_loss_fn, params, shards, *, l1, learning_rate, rounds, epochs, batch_size, key,
             server="add", variance_reduced=True, clip_after=None):
  """The round model on one device (module docstring). ``shards``: K per-worker ``(x, y)``
  without padding. Returns the final params. One jitted program per round (``vmap`` over the K
  workers), so a cell compiles it once."""
  k_workers = len(shards)
  n = sum(len(s[1]) for s in shards)
  every = jax.tree.map(lambda *a: np.concatenate(a), *shards)
  mean_loss = lambda p, d: jnp.mean(example_loss_fn(p, d))  # noqa: E731
  full_grad = fast_jit(jax.grad(lambda p: jnp.sum(example_loss_fn(p, every)) / n))
  grad = jax.grad(mean_loss)
  rows = max(len(y) for _, y in shards)      # padded to equal length; padding is never sampled
  xs, ys = (np.stack([np.pad(a, [(0, rows - len(a))] + [(0, 0)] * (a.ndim - 1)) for a in arrays])
            for arrays in zip(*shards))
  counts = np.asarray([len(y) for _, y in shards], np.int32)

  def vr_gradient(params, snapshot, mu, count, k, x, y, n_k):   # worker k's v_k, vmapped over k
    idx = vr_prox.sample_indices(key, count, k, batch_size, n_k)
    batch = (x[idx], y[idx])
    w = k_workers * n_k / n
    if not variance_reduced:
      return jax.tree.map(lambda g: w * g, grad(params, batch))
    return jax.tree.map(lambda g, s, m: w * (g - s) + m, grad(params, batch), grad(snapshot, batch), mu)

  def one_round(params, snapshot, mu, count):
    vs = jax.vmap(vr_gradient, in_axes=(None, None, None, None, 0, 0, 0, 0))(
        params, snapshot, mu, count, jnp.arange(k_workers), xs, ys, counts)
    step = lambda v: jax.tree.map(lambda x, g: x - learning_rate * g, params, v)  # noqa: E731
    if server == "add":   # theta = 1/K: x += theta Σ_k (prox_{γh}(x - γ v_k) - x)
      deltas = jax.vmap(lambda v: jax.tree.map(jnp.subtract, soft_threshold(step(v), learning_rate * l1),
                                               params))(vs)
      update = jax.tree.map(lambda d: jnp.sum(d, 0) / k_workers, deltas)
    else:                 # TAP, one prox per round of K summed steps: prox_{K γ h}
      new = soft_threshold(step(jax.tree.map(lambda v: jnp.sum(v, 0), vs)), k_workers * learning_rate * l1)
      update = jax.tree.map(jnp.subtract, new, params)
    if clip_after is not None:
      update = _clip(update, clip_after)
    return jax.tree.map(lambda p, u: (p + u).astype(p.dtype), params, update)

  one_round = fast_jit(one_round)
  snapshot, mu = params, jax.tree.map(jnp.zeros_like, params)
  for epoch in range(epochs):
    if variance_reduced:
      snapshot, mu = params, full_grad(params)
    for r in range(rounds):
      params = one_round(params, snapshot, mu, jnp.int32(epoch * rounds + r))
  return jax.tree.map(np.asarray, params)


def bf16_row_order_floor(steps: int = 3, seed: int = 0) -> float:
  """How far the bf16 single-device reference moves when only the order of the batch rows
  changes (the same math): the floor below which no bf16 comparison can go."""
  from proving_ground import cells, models
  params, loss = models.make_problem("plain", jnp.bfloat16)
  batches = models.batches(steps)
  perm = np.random.default_rng(seed).permutation(len(batches[0][1]))
  tx = optax.sgd(0.1, momentum=0.9)
  a = dense(loss, tx, params, batches)
  b = dense(loss, tx, params, [(x[perm], y[perm]) for x, y in batches])
  return cells.rel_err(b, a, params, bf16=True)
