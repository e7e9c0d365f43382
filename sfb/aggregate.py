"""The SFB exchange as an optax transformation.

Synchronous SFB-SGD (Xie et al., arXiv 1511.08486, Alg. 1 with staleness 0): every worker
broadcasts its minibatch factors (U_p, V_p) and every worker applies

    W ← W − η · (1/P) Σ_p U_pᵀ V_p                                                     (SFB eq. 4)

which is exactly the data-parallel mean gradient. Here the broadcast is one
``lax.all_gather(..., to="invarying")`` of [U, V] per factored matrix; layers whose V is the
same array (the q/k/v projections of one input) share one gather of [U_q, U_k, U_v, V]. The
bias of a factored layer is ``(1/P) Σ_rows U`` of the gathered U (no extra collective); every
other leaf is ``pmean``-ed densely (Poseidon's hybrid), and so is the ``extra`` dense gradient of a
factored parameter's uses outside its Dense call (an L2 term in the loss, tied weights).

Order: ``scale_by_sfb`` comes first in a chain. Factored leaves are not arrays (any array operation
on them raises, naming the fix), so a transformation before it fails instead of scaling the
gradient Σ u vᵀ by the square of its factor. Gradient accumulation goes after it:
``optax.chain(scale_by_sfb(axis), optax.MultiSteps(inner, k).gradient_transformation())`` sends
the factors every micro-step and averages the k exact mean gradients.

References:
  Xie, Kim, Zhou, Ho, Kumar, Yu, Xing, `Distributed Machine Learning via Sufficient Factor
  Broadcasting <https://arxiv.org/abs/1511.08486>`_, 2015

  Zhang et al., `Poseidon: An Efficient Communication Architecture for Distributed Deep Learning
  on GPU Clusters <https://arxiv.org/abs/1706.03292>`_, USENIX ATC 2017
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from sfb import axis
from sfb.factors import FromFactors, SufficientFactors, is_factor_leaf, reconstruct


def gather_group(group: list[SufficientFactors], axis_name: str | None) -> list[SufficientFactors]:
  """All devices' factors of layers that share one ``v`` (the same array: e.g. the q/k/v
  projections of one input), stacked along rows, replicated: ``v`` crosses the wire once.

  One ``all_gather`` of ``[u_1 … u_k, v]`` concatenated along features (separate gathers if their
  dtypes differ), so each device sends rows·(ΣJ + D) elements and XLA cannot merge two groups.
  """
  if axis_name is None:
    return list(group)
  gather = lambda x: lax.all_gather(x, axis_name, tiled=True, to="invarying")
  parts = [axis.to_varying(x, axis_name) for x in [f.u for f in group] + [group[0].v]]
  if len({x.dtype for x in parts}) == 1:
    cuts = np.cumsum([x.shape[1] for x in parts])[:-1]
    gathered = jnp.split(gather(jnp.concatenate(parts, axis=1)), cuts, axis=1)
  else:
    gathered = [gather(x) for x in parts]
  return [dataclasses.replace(f, u=u, v=gathered[-1]) for f, u in zip(group, gathered)]


def gather_factors(factors: SufficientFactors, axis_name: str | None) -> SufficientFactors:
  """All devices' factors, stacked along rows: (P·rows, J) and (P·rows, D), replicated."""
  return gather_group([factors], axis_name)[0]


def _gather_all(leaves: dict[int, SufficientFactors], axis_name) -> dict[int, SufficientFactors]:
  """``gather_group`` over the leaves, grouped by their ``v`` object."""
  groups: dict[int, list[int]] = {}
  for i, leaf in leaves.items():
    groups.setdefault(id(leaf.v), []).append(i)
  out = {}
  for members in groups.values():
    out.update(zip(members, gather_group([leaves[i] for i in members], axis_name)))
  return out


def _mean_over_devices(x, axis_name):
  return x if axis_name is None else lax.pmean(axis.to_varying(x, axis_name), axis_name)


def _plus_extra(mean_f32, extra, axis_name, dtype):
  """``mean_f32`` plus the device mean of a factored leaf's dense ``extra`` term, in ``dtype``."""
  if extra is not None:
    mean_f32 = mean_f32 + _mean_over_devices(extra, axis_name).astype(jnp.float32)
  return mean_f32.astype(dtype)


def sfb_mean_gradient(grads: Any, axis_name: str | None, params: Any = None) -> Any:
  """Dense mean gradient over devices from a tree mixing SufficientFactors, FromFactors and arrays.

  Returns a tree shaped like ``params`` (SufficientFactors -> reconstructed matrix, or the kernel
  of a multi-axis layer; FromFactors -> ``mean Σ_rows u`` of the sibling factored kernel, in the
  bias's shape; array -> ``pmean``; a factored leaf's ``extra`` is ``pmean``-ed and added).
  """
  flat, treedef = jax.tree_util.tree_flatten_with_path(grads, is_leaf=is_factor_leaf)
  if params is not None:
    param_leaves = treedef.flatten_up_to(params)
  num_devices = axis.axis_size(axis_name)
  out: list[Any] = [None] * len(flat)
  bias_from: dict[tuple, jax.Array] = {}
  factored = {i: leaf for i, (_, leaf) in enumerate(flat) if isinstance(leaf, SufficientFactors)}
  for i, leaf in factored.items():
    if params is not None:
      leaf.check_matches(jnp.shape(param_leaves[i]), f" at {jax.tree_util.keystr(flat[i][0])}")
    else:
      leaf.validate()
  gathered = _gather_all(factored, axis_name)
  for i, (path, leaf) in enumerate(flat):
    if isinstance(leaf, SufficientFactors):
      full = gathered[i]
      dtype = param_leaves[i].dtype if params is not None else jnp.result_type(leaf.u, jnp.float32)
      out[i] = _plus_extra(reconstruct(full, jnp.float32) / num_devices, leaf.extra, axis_name, dtype)
      bias_from[path[:-1]] = (jnp.sum(full.u.astype(jnp.float32), axis=0) / num_devices, dtype)
  for i, (path, leaf) in enumerate(flat):
    if isinstance(leaf, FromFactors):
      if path[:-1] not in bias_from:
        raise ValueError(f"FromFactors at {jax.tree_util.keystr(path)} has no sibling "
                         "SufficientFactors (a factored kernel in the same module)")
      mean, dtype = bias_from[path[:-1]]
      dtype = param_leaves[i].dtype if params is not None else dtype
      if leaf.bias_shape is not None:
        mean = mean.reshape(leaf.bias_shape)
      out[i] = _plus_extra(mean, leaf.extra, axis_name, dtype)
    elif not isinstance(leaf, SufficientFactors):
      out[i] = _mean_over_devices(leaf, axis_name)
  return jax.tree_util.tree_unflatten(treedef, out)


def scale_by_sfb(axis_name: str | None = "data") -> optax.GradientTransformation:
  """Sufficient Factor Broadcasting: exchange factors, emit the exact mean gradient.

  Must be the first transformation of a chain (one placed before it raises: factored leaves are
  not arrays) and run inside ``jax.shard_map`` over ``axis_name`` (``None``: one device, no
  collectives). Input leaves may be ``SufficientFactors``, ``FromFactors`` or local dense
  gradients; the output has the params' structure, so any optax transformation can follow
  (momentum, Adam, weight decay, clipping, ``optax.MultiSteps(...).gradient_transformation()``).
  """

  def init_fn(params):
    del params
    return optax.EmptyState()

  def update_fn(updates, state, params=None):
    return sfb_mean_gradient(updates, axis_name, params), state

  return optax.GradientTransformation(init_fn, update_fn)


def sfb(learning_rate: optax.ScalarOrSchedule, *, axis_name: str | None = "data",
        momentum: float | None = None, nesterov: bool = False) -> optax.GradientTransformation:
  """SFB-SGD: ``scale_by_sfb`` followed by ``optax.sgd`` (SFB eq. 4, synchronous)."""
  return optax.chain(scale_by_sfb(axis_name), optax.sgd(learning_rate, momentum, nesterov))
