"""Sparse rows on device in ELL form (padded per-row ``(indices, values)``), and the logistic loss on them.

A CSR matrix with at most k nonzeros per row becomes two ``[rows, k]`` arrays: the column indices
(int32) and the values, padded with (index 0, value 0). Why this format and not
``jax.experimental.sparse.BCOO``: ELL arrays index by row exactly like dense arrays, so the
existing pieces take them unchanged (``shard_map`` splits them with ``P(axis)``, ``epoch_fn``
samples a minibatch with ``a[idx]``, padded shard rows are masked as before); ``x_i . w`` is a
gather ``sum_j values[i, j] * w[indices[i, j]]`` and its gradient, which ``jax.grad`` derives, is a
scatter-add into a dense d-vector; a padding slot contributes ``0 * w[0]`` and adds 0 to the
gradient. The cost is the padding to the longest row (``ell_fill`` reports it). An unbatched BCOO
would need a segment sum per row and has no cheap row gather for minibatches.

The problem is the one both papers run on ([HGH], [XZ]): l1 / elastic-net regularised logistic
regression, ``f_i(w) = log(1 + exp(-y_i a_i . w))`` with labels ``y_i = +-1``.

References:
  [HGH] Z. Huo, B. Gu, H. Huang, *Decoupled Asynchronous Proximal Stochastic Gradient Descent
        with Variance Reduction*, arXiv:1609.06804.
  [XZ]  L. Xiao, T. Zhang, *A Proximal Stochastic Gradient Method with Progressive Variance
        Reduction*, SIAM J. Optim. 24(4):2057-2075, 2014.
"""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np


def ell_from_csr(indptr, indices, values, width: int | None = None, dtype=np.float32):
  """Host ELL arrays ``(indices int32 [rows, k], values [rows, k])`` of a CSR matrix's three arrays
  (``scipy.sparse.csr_matrix.indptr / .indices / .data``; no scipy needed here).

  ``width`` k defaults to the longest row; a smaller one is refused (it would drop nonzeros).
  """
  indptr = np.asarray(indptr, np.int64)
  counts = np.diff(indptr)
  longest = int(counts.max(initial=0))
  width = longest if width is None else int(width)
  if width < longest:
    raise ValueError(f"ell_from_csr: width {width} < the longest row's {longest} nonzeros (they would be dropped)")
  rows = len(counts)
  slot = np.arange(len(indices)) - np.repeat(indptr[:-1], counts)   # position of each nonzero in its row
  row = np.repeat(np.arange(rows), counts)
  idx = np.zeros((rows, max(width, 1)), np.int32)
  val = np.zeros((rows, max(width, 1)), dtype)
  idx[row, slot] = indices
  val[row, slot] = values
  return idx, val


def ell_fill(values) -> float:
  """Fraction of ELL slots that hold a nonzero (1 = no padding)."""
  values = np.asarray(values)
  return float(np.count_nonzero(values) / max(values.size, 1))


def ell_matvec(indices, values, w):
  """``x_i . w`` for every ELL row: a gather of ``w`` (its gradient w.r.t. ``w`` is a scatter-add)."""
  return jnp.sum(values * w[indices], axis=-1)


def ell_logistic_loss(w, data):
  """Per-row logistic losses ``log(1 + exp(-y_i a_i . w))`` of ELL rows ``data = (indices, values, y)``,
  y in {-1, +1}: the ``example_loss_fn`` of ``epoch_fn`` / ``full_gradient`` / ``objective``."""
  indices, values, y = data
  return jnp.logaddexp(0.0, -y * ell_matvec(indices, values, w))
