"""Proximal operators of convex regularizers, pytree-aware.

Every operator ``op`` is a small immutable object with

  * ``op(z, step)``: ``prox_{step*h}(z) = argmin_x 0.5*||x - z||^2 + step*h(x)`` leaf by leaf;
  * ``op.value(x)``: ``h(x)`` (a scalar), used for the objective ``P(x) = f(x) + h(x)``.

An optional ``mask`` (a pytree of bools with the structure of the params, or a callable
``params -> bool tree``, as in ``optax.masked``) restricts the regularizer to the leaves marked
True (e.g. to leave biases unregularized); unmarked leaves get the identity prox and value 0.

Elastic net: ``prox = soft(z, step*l1) / (1 + step*l2)`` (soft-threshold first, then shrink);
sparse group lasso: the group shrink of the soft-threshold (the l1 and group terms share the
separable structure).

References:
  N. Parikh, S. Boyd, *Proximal Algorithms*, Found. Trends Optim. 1(3), 2014, §6.5 (l1, elastic
  net), §6.5.4 (group lasso).
  N. Simon, J. Friedman, T. Hastie, R. Tibshirani, *A sparse-group lasso*, J. Comput. Graph.
  Stat. 22(2), 2013 (sparse group lasso).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

PROX_NAMES = ("none", "l1", "elastic_net", "group_lasso", "sparse_group_lasso", "box")


def _check_nonneg(name: str, value) -> float:
  try:
    v = float(value)
  except (TypeError, ValueError):
    raise ValueError(f"{name} must be a non-negative number, got {value!r}") from None
  if not np.isfinite(v) or v < 0:
    raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
  return v


def soft_threshold(z, t):
  """``sign(z) * max(|z| - t, 0)``: the prox of ``t*|.|`` (Parikh & Boyd eq. 6.9)."""
  return jnp.sign(z) * jnp.maximum(jnp.abs(z) - t, 0)


def _mask_tree(mask, tree):
  if mask is None:
    return jax.tree.map(lambda _: True, tree)
  return mask(tree) if callable(mask) else mask


class _LeafwiseProx:
  """Base for separable regularizers: subclasses define ``_leaf_prox`` and ``_leaf_value``."""
  mask: Any = None

  def __call__(self, z, step):
    marks = _mask_tree(self.mask, z)
    return jax.tree.map(lambda leaf, m: self._leaf_prox(leaf, step) if m else leaf, z, marks)

  def value(self, x):
    marks = _mask_tree(self.mask, x)
    vals = [self._leaf_value(leaf) for leaf, m in zip(jax.tree.leaves(x), jax.tree.leaves(marks)) if m]
    return sum(vals) if vals else jnp.zeros([], jax.tree.leaves(x)[0].dtype)


@dataclasses.dataclass(frozen=True)
class prox_none(_LeafwiseProx):  # noqa: N801  (optax-style lower-case factory names)
  """``h = 0``: the prox is the identity (plain SVRG/SGD)."""
  mask: Any = None

  def _leaf_prox(self, z, step):
    del step
    return z

  def _leaf_value(self, x):
    return jnp.zeros([], x.dtype)


@dataclasses.dataclass(frozen=True)
class prox_l1(_LeafwiseProx):  # noqa: N801
  """``h(x) = l1 * ||x||_1``; prox = soft-threshold at ``step * l1``."""
  l1: float = 0.0
  mask: Any = None

  def __post_init__(self):
    object.__setattr__(self, "l1", _check_nonneg("l1", self.l1))

  def _leaf_prox(self, z, step):
    return soft_threshold(z, step * self.l1)

  def _leaf_value(self, x):
    return self.l1 * jnp.sum(jnp.abs(x))


@dataclasses.dataclass(frozen=True)
class prox_elastic_net(_LeafwiseProx):  # noqa: N801
  """``h(x) = l1*||x||_1 + (l2/2)*||x||^2``; prox = ``soft(z, step*l1) / (1 + step*l2)``.

  The order matters: thresholding the shrunk point, ``soft(z/(1+step*l2), step*l1)``, uses a
  threshold too large by the factor ``1 + step*l2`` and is wrong.
  """
  l1: float = 0.0
  l2: float = 0.0
  mask: Any = None

  def __post_init__(self):
    object.__setattr__(self, "l1", _check_nonneg("l1", self.l1))
    object.__setattr__(self, "l2", _check_nonneg("l2", self.l2))

  def _leaf_prox(self, z, step):
    return soft_threshold(z, step * self.l1) / (1 + step * self.l2)

  def _leaf_value(self, x):
    return self.l1 * jnp.sum(jnp.abs(x)) + 0.5 * self.l2 * jnp.sum(x * x)


@dataclasses.dataclass(frozen=True)
class prox_box(_LeafwiseProx):  # noqa: N801
  """Indicator of ``[lower, upper]`` (per coordinate); prox = ``clip``. ``lower=0`` gives x >= 0."""
  lower: float = -np.inf
  upper: float = np.inf
  mask: Any = None

  def __post_init__(self):
    if not float(self.lower) <= float(self.upper):
      raise ValueError(f"lower must be <= upper, got lower={self.lower}, upper={self.upper}")

  def _leaf_prox(self, z, step):
    del step
    return jnp.clip(z, self.lower, self.upper)

  def _leaf_value(self, x):
    inside = jnp.all((x >= self.lower) & (x <= self.upper))
    return jnp.where(inside, jnp.zeros([], x.dtype), jnp.asarray(jnp.inf, x.dtype))


def _group_ids(groups, num_params: int | None):
  """Normalises ``groups`` to (ids int array [d], num_groups, sizes)."""
  if groups is None:
    raise ValueError("groups is required: a sequence of index arrays or a group id per coordinate")
  if isinstance(groups, (list, tuple)) and groups and np.ndim(groups[0]) == 1 and not np.isscalar(groups[0]):
    blocks = [np.asarray(g, np.int64).ravel() for g in groups]
    if any(len(b) == 0 for b in blocks):
      raise ValueError("groups: every group must be non-empty")
    flat = np.concatenate(blocks)
    d = int(num_params) if num_params is not None else int(flat.max()) + 1
    if flat.min() < 0 or flat.max() >= d:
      raise ValueError(f"groups: indices must lie in [0, {d}), got range [{flat.min()}, {flat.max()}]")
    if len(np.unique(flat)) != len(flat):
      raise ValueError("groups: a coordinate appears in more than one group (groups must be disjoint)")
    if len(flat) != d:
      missing = sorted(set(range(d)) - set(flat.tolist()))[:5]
      raise ValueError(f"groups do not cover the parameters: {d - len(flat)} of {d} coordinates are in no "
                       f"group (first missing: {missing})")
    ids = np.empty(d, np.int32)
    for g, b in enumerate(blocks):
      ids[b] = g
  else:
    ids = np.asarray(groups)
    if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer):
      raise ValueError("groups: expected a sequence of index arrays or a 1-D integer array of group ids")
    if num_params is not None and len(ids) != num_params:
      raise ValueError(f"groups do not cover the parameters: {len(ids)} group ids for {num_params} coordinates")
    uniq = np.unique(ids)
    if ids.min() < 0 or not np.array_equal(uniq, np.arange(len(uniq))):
      raise ValueError("groups: group ids must be 0..G-1 with every id used")
    ids = ids.astype(np.int32)
  num_groups = int(ids.max()) + 1
  sizes = np.bincount(ids, minlength=num_groups)
  return ids, num_groups, sizes


@dataclasses.dataclass(frozen=True, eq=False)
class prox_group_lasso:  # noqa: N801
  """``h(x) = lam * sum_g w_g ||x_g||_2`` over a partition of the flattened params (+ optional l1).

  ``x_g <- max(0, 1 - step*lam*w_g/||z_g||) z_g`` (block soft-threshold; 0 when ``||z_g|| = 0``).
  With ``l1 > 0`` (see ``prox_sparse_group_lasso``) the group shrink is applied to
  ``soft(z, step*l1)``.

  Args:
    lam: group weight (>= 0).
    groups: a sequence of index arrays into the flattened parameter vector
      (``jax.flatten_util.ravel_pytree`` order), disjoint and covering every coordinate, or a
      1-D integer array giving each coordinate's group id (0..G-1).
    weights: per-group weights ``w_g`` (default ``sqrt(|g|)``).
    num_params: number of coordinates; when given, coverage is checked now, otherwise at the
      first call (trace time).
    l1: optional l1 weight (sparse group lasso).
  """
  lam: float = 0.0
  groups: Any = None
  weights: Sequence[float] | None = None
  num_params: int | None = None
  l1: float = 0.0

  def __post_init__(self):
    object.__setattr__(self, "lam", _check_nonneg("lam", self.lam))
    object.__setattr__(self, "l1", _check_nonneg("l1", self.l1))
    ids, num_groups, sizes = _group_ids(self.groups, self.num_params)
    if self.weights is None:
      w = np.sqrt(sizes.astype(np.float64))
    else:
      w = np.asarray(self.weights, np.float64)
      if w.shape != (num_groups,) or np.any(w < 0) or not np.all(np.isfinite(w)):
        raise ValueError(f"weights must be {num_groups} finite numbers >= 0, got shape {w.shape}")
    object.__setattr__(self, "_ids", ids)
    object.__setattr__(self, "_num_groups", num_groups)
    object.__setattr__(self, "_w", w)

  def _check(self, flat):
    if flat.shape[0] != len(self._ids):
      raise ValueError(f"groups do not cover the parameters: groups describe {len(self._ids)} "
                       f"coordinates, the params have {flat.shape[0]}")

  def _norms(self, flat):
    sq = jax.ops.segment_sum(flat * flat, jnp.asarray(self._ids), num_segments=self._num_groups)
    return jnp.sqrt(sq)

  def __call__(self, z, step):
    flat, unravel = ravel_pytree(z)
    self._check(flat)
    if self.l1:
      flat = soft_threshold(flat, step * self.l1)
    norms = self._norms(flat)
    t = step * self.lam * jnp.asarray(self._w, flat.dtype)
    scale = jnp.where(norms > t, 1 - t / jnp.where(norms > 0, norms, 1), 0)
    return unravel(flat * scale[jnp.asarray(self._ids)])

  def value(self, x):
    flat, _ = ravel_pytree(x)
    self._check(flat)
    out = self.lam * jnp.sum(jnp.asarray(self._w, flat.dtype) * self._norms(flat))
    return out + self.l1 * jnp.sum(jnp.abs(flat)) if self.l1 else out


def prox_sparse_group_lasso(l1: float, lam: float, groups, weights=None, num_params=None) -> prox_group_lasso:
  """``h(x) = l1*||x||_1 + lam * sum_g w_g ||x_g||_2``; prox = group shrink of ``soft(z, step*l1)``."""
  return prox_group_lasso(lam=lam, groups=groups, weights=weights, num_params=num_params, l1=l1)


def make_prox(name: str, *, l1: float = 0.0, l2: float = 0.0, lam: float = 0.0, groups=None,
              lower: float = -np.inf, upper: float = np.inf, mask=None, num_params=None):
  """A proximal operator by name (``PROX_NAMES``); raises ValueError for an unknown name."""
  if name == "none":
    return prox_none(mask=mask)
  if name == "l1":
    return prox_l1(l1, mask=mask)
  if name == "elastic_net":
    return prox_elastic_net(l1, l2, mask=mask)
  if name == "group_lasso":
    return prox_group_lasso(lam=lam, groups=groups, num_params=num_params)
  if name == "sparse_group_lasso":
    return prox_sparse_group_lasso(l1, lam, groups, num_params=num_params)
  if name == "box":
    return prox_box(lower, upper, mask=mask)
  raise ValueError(f"unknown prox {name!r}; allowed: {', '.join(PROX_NAMES)}")


def is_prox(obj) -> bool:
  return callable(obj) and callable(getattr(obj, "value", None))


def prox_cleanup(params, full_grad, prox: Callable, step):
  """``prox_{step*h}(x - step*grad f(x))``: the proximal-gradient point of ``params``.

  Its fixed points are exactly the minimizers of ``P = f + h``; use it to read off the support
  of an iterate whose zero coordinates decay only geometrically (relaxed DAP-SVRG).
  """
  return prox(jax.tree.map(lambda x, g: x - step * g, params, full_grad), step)
