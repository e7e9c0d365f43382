"""Trace-norm (nuclear-norm) proximal operator for matrix parameters.

``h(W) = lam * ||W||_*`` (sum of singular values). Its prox is singular-value soft-thresholding
([CCS] Thm. 2.1; [PB] §6.7.3):

    prox_{step*h}(Z) = U diag(max(s - step*lam, 0)) V^T,   Z = U diag(s) V^T.

This is the expensive server-side prox that motivates DAP-SVRG ([HGH] §1: the TAP server
evaluates one prox per update, an SVD for the trace norm; DAP moves it to the workers). Matrix
leaves only (``ndim == 2``); other leaves must be masked out (e.g. biases), or the operator
refuses them by name.

References:
  [CCS] J.-F. Cai, E. J. Candes, Z. Shen, *A singular value thresholding algorithm for matrix
        completion*, SIAM J. Optim. 20(4), 2010.
  [PB]  N. Parikh, S. Boyd, *Proximal Algorithms*, Found. Trends Optim. 1(3), 2014.
  [HGH] Z. Huo, B. Gu, H. Huang, *Decoupled Asynchronous Proximal Stochastic Gradient Descent
        with Variance Reduction*, arXiv:1609.06804.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from vr_prox._prox import _check_nonneg, _mask_tree, soft_threshold


def svd_soft_threshold(z, t):
  """``U diag(max(s - t, 0)) V^T`` of a matrix ``z`` ([CCS] Thm. 2.1)."""
  u, s, vt = jnp.linalg.svd(z, full_matrices=False)
  return (u * soft_threshold(s, t)) @ vt


@dataclasses.dataclass(frozen=True)
class prox_trace_norm:  # noqa: N801  (optax-style lower-case factory name, as the other prox operators)
  """``h(W) = lam * ||W||_*`` on every marked matrix leaf; prox = singular-value soft-thresholding.

  ``mask`` as in the other operators (a bool tree or ``params -> bool tree``); a marked leaf that
  is not a matrix raises a ValueError naming its path.
  """
  lam: float = 0.0
  mask: Any = None

  def __post_init__(self):
    object.__setattr__(self, "lam", _check_nonneg("lam", self.lam))

  def _marked(self, tree):
    marks = _mask_tree(self.mask, tree)
    paths = jax.tree_util.tree_flatten_with_path(tree)[0]
    for (path, leaf), mark in zip(paths, jax.tree.leaves(marks)):
      if mark and jnp.ndim(leaf) != 2:
        raise ValueError(f"prox_trace_norm: leaf {jax.tree_util.keystr(path) or '<root>'} has shape "
                         f"{jnp.shape(leaf)}; the trace norm needs a matrix (ndim 2). Mask it out "
                         f"(prox_trace_norm(lam, mask=...)), e.g. for a bias")
    return marks

  def __call__(self, z, step):
    marks = self._marked(z)
    return jax.tree.map(lambda leaf, m: svd_soft_threshold(leaf, step * self.lam) if m else leaf, z, marks)

  def value(self, x):
    marks = self._marked(x)
    vals = [self.lam * jnp.sum(jnp.linalg.svd(leaf, compute_uv=False))
            for leaf, m in zip(jax.tree.leaves(x), jax.tree.leaves(marks)) if m]
    return sum(vals) if vals else jnp.zeros([], jax.tree.leaves(x)[0].dtype)
