"""Bounded staleness for SFB, simulated deterministically (SSP; Ho et al., NIPS 2013).

Xie et al. (arXiv 1511.08486, Sec. 4) run SFB without central synchronisation: a worker applies
its own factors at once and its peers' factors when they arrive, at most ``s`` clocks late. SPMD
has no real asynchrony, so this transformation reproduces the update rule exactly with a FIFO:
at step t device p applies

    g_p(t) = own_p(t) + peers_p(t − s),   own_p = (1/P)·U_pᵀV_p,   peers_p = (1/P)·Σ_{q≠p} U_qᵀV_q

so replicas drift apart (params must be kept per device, ``out_specs=P("data")``) and ``s = 0`` is
synchronous SFB. The wire payload is unchanged: the factors are still all-gathered every step;
what is delayed is when peers' contributions are applied. Dense (non-factored) leaves are
delayed the same way.

References:
  Xie, Kim, Zhou, Ho, Kumar, Yu, Xing, `Distributed Machine Learning via Sufficient Factor
  Broadcasting <https://arxiv.org/abs/1511.08486>`_, 2015

  Ho et al., More Effective Distributed ML via a Stale Synchronous Parallel Parameter Server,
  NIPS 2013
"""
from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from sfb import axis
from sfb.aggregate import sfb_mean_gradient


class StaleSFBState(NamedTuple):
  count: jax.Array
  pending: Any     # per leaf (s, *param.shape): peers' contributions waiting to be applied, oldest first


def scale_by_stale_sfb(staleness: int, axis_name: str | None = "data") -> optax.GradientTransformation:
  """``scale_by_sfb`` with peers' contributions applied ``staleness`` steps late.

  The state is per device (``pending`` differs between devices): keep it, and the params, with
  a leading device axis under ``P(axis_name)``.
  """
  if not isinstance(staleness, int) or staleness < 0:
    raise ValueError(f"staleness must be an integer >= 0, got {staleness!r}")

  def init_fn(params):
    pending = jax.tree.map(lambda p: jnp.zeros((staleness,) + jnp.shape(p), jnp.asarray(p).dtype), params)
    return StaleSFBState(jnp.zeros((), jnp.int32), pending)

  def update_fn(updates, state, params=None):
    mean = sfb_mean_gradient(updates, axis_name, params)
    if staleness == 0:
      return mean, StaleSFBState(state.count + 1, state.pending)
    num_devices = axis.axis_size(axis_name)
    own = jax.tree.map(lambda g: g / num_devices, sfb_mean_gradient(updates, None, params))
    peers = jax.tree.map(lambda m, o: m - o, mean, own)
    out = jax.tree.map(lambda o, q: o + q[0], own, state.pending)
    pending = jax.tree.map(lambda q, new: jnp.concatenate([q[1:], new[None].astype(q.dtype)]),
                           state.pending, peers)
    return out, StaleSFBState(state.count + 1, pending)

  return optax.GradientTransformation(init_fn, update_fn)
