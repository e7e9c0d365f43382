"""Which flax layers are one matrix product ``y = x_flat @ K_mat``, and how to flatten them.

SFB needs a layer whose kernel gradient is ``Σ_rows u vᵀ`` (Xie et al., arXiv 1511.08486, Sec. 2,
eq. 2). ``nn.Dense`` is that directly. ``nn.DenseGeneral`` (the q/k/v projections of
``nn.MultiHeadDotProductAttention``: kernel (D, H, Dh); its output projection: kernel (H, Dh, D)
with ``axis=(-2, -1)``) and ``nn.Einsum`` are too, once their axes are grouped: every kernel axis
is either contracted with the input (its sizes multiply to D) or passed to the output (J), and
every other input axis is a row axis (batch × sequence positions), so

    y[rows, J] = x[rows, D] @ K[D, J]     (after transposing and reshaping x, y and K),

and the sufficient factors are u = ∂L/∂y and v = x, flattened the same way (Poseidon, Zhang et
al., ATC'17, Sec. 3.2, applies SFB to FC layers; this extends the same identity to multi-axis
kernels). Forms that are not one such contraction are refused with the reason: ``batch_dims`` of
``DenseGeneral``, an einsum label shared by input, kernel and output (a batched matmul: one kernel
slice per index), a label summed away on one operand only, a repeated label, and a custom
``dot_general`` (e.g. quantized), whose gradient is not ``Σ u vᵀ``.

References:
  Xie, Kim, Zhou, Ho, Kumar, Yu, Xing, `Distributed Machine Learning via Sufficient Factor
  Broadcasting <https://arxiv.org/abs/1511.08486>`_, 2015

  Zhang et al., `Poseidon: An Efficient Communication Architecture for Distributed Deep Learning
  on GPU Clusters <https://arxiv.org/abs/1706.03292>`_, USENIX ATC 2017
"""
from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp
import numpy as np
from jax import lax

MATRIX_LAYERS = (nn.Dense, nn.DenseGeneral, nn.Einsum)


@dataclasses.dataclass(frozen=True)
class Contraction:
  """One call of a matrix layer read as ``y[rows, J] = x[rows, D] @ K[D, J]``.

  Attributes:
    in_perm: input axes ordered (row axes..., contracted axes...).
    out_perm: output axes ordered (row axes..., J axes...), row axes in ``in_perm``'s order.
    kernel_axes: kernel axes ordered (contracted axes as in ``in_perm``..., J axes as in
      ``out_perm``...): the (D, J) matrix reshaped to these axes' sizes, then transposed back by
      their inverse permutation, is the kernel.
    kernel_shape: the kernel's own shape.
    rows, in_features, out_features: rows (product of row axes), D and J.
  """
  in_perm: tuple[int, ...]
  out_perm: tuple[int, ...]
  kernel_axes: tuple[int, ...]
  kernel_shape: tuple[int, ...]
  rows: int
  in_features: int
  out_features: int

  def input_factor(self, x):
    """v: the call's input as (rows, D)."""
    return jnp.transpose(x, self.in_perm).reshape(-1, self.in_features)

  def output_factor(self, delta):
    """u: the output cotangent as (rows, J)."""
    return jnp.transpose(delta, self.out_perm).reshape(-1, self.out_features)


def _build(in_shape, in_perm, out_perm, kernel_shape, kernel_axes, n_contracted) -> Contraction:
  n_rows = len(in_perm) - n_contracted
  contracted = [kernel_shape[a] for a in kernel_axes[:n_contracted]]
  return Contraction(tuple(in_perm), tuple(out_perm), tuple(kernel_axes), tuple(kernel_shape),
                     math.prod(in_shape[a] for a in in_perm[:n_rows]), math.prod(contracted),
                     math.prod(kernel_shape[a] for a in kernel_axes[n_contracted:]))


def _custom_dot_general(module) -> bool:
  dg = getattr(module, "dot_general", None)
  return getattr(module, "dot_general_cls", None) is not None or dg not in (None, lax.dot_general)


def _dense_general(module, in_shape) -> Contraction | str:
  ndim = len(in_shape)
  batch_dims = tuple(int(a) for a in np.atleast_1d(module.batch_dims))
  if batch_dims:
    return (f"batch_dims={batch_dims} makes one kernel slice per batch "
            "index (a batched matmul, not x_flat @ K); drop batch_dims or leave the layer dense")
  axis = tuple(int(a) % ndim for a in np.atleast_1d(module.axis))
  features = tuple(int(f) for f in np.atleast_1d(module.features))
  rest = tuple(a for a in range(ndim) if a not in axis)
  kernel_shape = tuple(in_shape[a] for a in axis) + features
  out_ndim = len(rest) + len(features)   # DenseGeneral's output: the input's other axes, then features
  return _build(in_shape, rest + axis, tuple(range(out_ndim)), kernel_shape,
                tuple(range(len(kernel_shape))), len(axis))


def _einsum(module, in_shape, equation: str) -> Contraction | str:
  kernel_shape = tuple(module.shape)
  lhs, rhs, out = _labels(equation, in_shape, kernel_shape)
  where = f"einsum {equation!r}"
  for operand in (lhs, rhs, out):
    repeated = sorted({c for c in operand if operand.count(c) > 1})
    if repeated:
      return f"{where} repeats label(s) {''.join(repeated)} in {operand!r} (a diagonal, not a matrix product)"
  batched = [c for c in rhs if c in lhs and c in out]
  if batched:
    return (f"{where}: label(s) {''.join(batched)} are in the input, the kernel and the output, i.e. a "
            "batched matmul with one kernel slice per index, not one x_flat @ K contraction")
  summed = [c for c in lhs + rhs if c not in out and not (c in lhs and c in rhs)]
  if summed:
    return f"{where} sums label(s) {''.join(summed)} of one operand away, so it is not x_flat @ K"
  row_labels = [c for c in out if c in lhs]
  j_labels = [c for c in out if c in rhs]
  contracted = [c for c in rhs if c in lhs]
  in_perm = [lhs.index(c) for c in row_labels + contracted]
  out_perm = [out.index(c) for c in row_labels + j_labels]
  kernel_axes = [rhs.index(c) for c in contracted + j_labels]
  return _build(in_shape, in_perm, out_perm, kernel_shape, kernel_axes, len(contracted))


def _labels(equation: str, in_shape, kernel_shape) -> tuple[str, str, str]:
  """(input, kernel, output) labels of an explicit two-operand equation (``nn.Einsum`` requires
  ``->``); an ellipsis becomes one fresh label per axis, aligned from the right as numpy broadcasts."""
  operands, out = equation.replace(" ", "").split("->")
  lhs, rhs = operands.split(",")
  used = set(lhs + rhs + out)
  fresh = [c for c in "αβγδεζηθικλμνξοπρστυφχψω" if c not in used]
  n_ell = [ndim - (len(op) - 3) if "..." in op else 0
           for op, ndim in ((lhs, len(in_shape)), (rhs, len(kernel_shape)))]
  width = max(n_ell)

  def spell(op, n):
    return op.replace("...", "".join(fresh[width - n:width]))

  return spell(lhs, n_ell[0]), spell(rhs, n_ell[1]), spell(out, width)


def einsum_equation(module, call_args: Sequence, kwargs) -> str:
  """The equation an ``nn.Einsum`` call uses (the call's argument, else the attribute)."""
  given = kwargs.get("einsum_str", call_args[1] if len(call_args) > 1 else None)
  return given if given is not None else module.einsum_str


def contraction(module, call_args: Sequence, kwargs) -> Contraction | str | None:
  """How one call of ``module`` is ``x_flat @ K_mat``; a string says why it is not one; ``None``
  for a module that is not a matrix layer (``nn.Dense``, ``nn.DenseGeneral``, ``nn.Einsum``)."""
  if not isinstance(module, MATRIX_LAYERS):
    return None
  name = type(module).__name__
  if _custom_dot_general(module):
    return (f"{name} with a custom dot_general/dot_general_cls (e.g. quantized): its kernel "
            "gradient is not Σ u vᵀ; leave the layer dense")
  in_shape = tuple(call_args[0].shape)
  if isinstance(module, nn.Einsum):
    return _einsum(module, in_shape, einsum_equation(module, call_args, kwargs))
  if isinstance(module, nn.DenseGeneral):
    return _dense_general(module, in_shape)
  features = int(module.features)
  axes = tuple(range(len(in_shape)))     # nn.Dense: rows are all but the last axis
  return _build(in_shape, axes, axes, (in_shape[-1], features), (0, 1), 1)
