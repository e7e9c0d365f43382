"""Collective-free references for tests: the same random streams, W workers simulated on one device.

``reference_decode`` runs one step of ``scale_by_one_bit_gc`` for all W workers with ``vmap``
instead of ``shard_map`` (``all_gather(to="invarying")`` is rejected under ``vmap``), using the
same key derivation, encoder and decoder; the sharded result must equal it.
``estimator_mse`` is the closed form of the estimator's error.

References:
  Li, Skoglund, `Distributed Learning based on 1-Bit Gradient Coding in the Presence of
  Stragglers <https://arxiv.org/abs/2403.14716>`_, 2024

  Bitar, Wootters, El Rouayheb, Stochastic Gradient Coding for Straggler Mitigation in
  Distributed Learning, IEEE JSAIT 2020
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from sign1bit.allocation import Allocation
from sign1bit.coding import active_mask, decode, encode, gc_scheme, worker_key
from sign1bit.quantize import pack, unpack


def reference_decode(local_grads: jax.Array, alloc: Allocation, straggler_prob: float, bound, *,
                     seed: int = 0, step: int = 0, quantize: bool = True, straggler_model: str = "bernoulli",
                     num_stragglers: int | None = None) -> tuple[jax.Array, jax.Array]:
  """ĝ_t and the mask of step ``step`` from all workers' local gradients [W, D].

  Row i of ``local_grads`` is worker i's Σ_{k∈S_i} ∇f_k. Returns ``(ghat [D], active bool[W])``;
  equals the ``update`` of ``scale_by_one_bit_gc(..., seed=seed)`` at ``count == step``.
  """
  scheme = gc_scheme(alloc, straggler_prob, bound, axis_name=None, seed=seed, quantize=quantize,
                     straggler_model=straggler_model, num_stragglers=num_stragglers)
  grads = jnp.asarray(np.asarray(local_grads), jnp.float32)   # a host copy: any sharding in
  w, num_params = grads.shape
  if w != alloc.num_workers:
    raise ValueError(f"local_grads has {w} rows for W={alloc.num_workers} workers")
  step_key = jax.random.fold_in(jax.random.key(seed), step)
  active = active_mask(scheme, step_key, w)
  msgs = jax.vmap(lambda g, i: encode(scheme, g, worker_key(step_key, i)))(grads, jnp.arange(w))
  if msgs.values is not None:
    return decode(scheme, active, msgs.values), active
  received = unpack(pack(msgs.bits), num_params)
  return decode(scheme, active, received, msgs.scale), active


def estimator_mse(partition_grads, alloc: Allocation, straggler_prob: float, bound=None) -> tuple[float, float]:
  """(σ_q², σ_s²) of ĝ at a fixed point, no clipping:

      σ_q² = ((1−p)/N²) Σ_i (D B_i² − ‖c_i‖²),        c_i = Σ_{k∈S_i} ∇f_k / (d(1−p)),
      σ_s² = (p / ((1−p) d² N²)) Σ_i ‖Σ_{k∈S_i} ∇f_k‖²,

  with B_i = B (constant), ‖c_i‖_∞ (``bound="linf"``) or σ_q² = 0 (``bound=None``: real SGC).
  E‖ĝ − ∇F‖² = σ_q² + σ_s².
  """
  g = np.asarray(partition_grads, np.float64)
  n, num_params = g.shape
  if n != alloc.num_partitions:
    raise ValueError(f"partition_grads has {n} rows for N={alloc.num_partitions} partitions")
  p, d = float(straggler_prob), alloc.redundancy
  sums = alloc.matrix.astype(np.float64) @ g                     # [W, D]: Σ_{k∈S_i} ∇f_k
  c = sums / (d * (1 - p))
  sigma_s = p / ((1 - p) * d ** 2 * n ** 2) * float(np.sum(sums ** 2))
  if bound is None:
    return 0.0, sigma_s
  b = np.max(np.abs(c), axis=1) if bound == "linf" else np.full(c.shape[0], float(bound))
  sigma_q = (1 - p) / n ** 2 * float(np.sum(num_params * b ** 2 - np.sum(c ** 2, axis=1)))
  return sigma_q, sigma_s
