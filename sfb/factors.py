"""Sufficient factors: the exact rank-``rows`` form of a matrix parameter's gradient.

Xie et al., "Distributed Machine Learning via Sufficient Factor Broadcasting" (arXiv 1511.08486),
Sec. 2: for a matrix-parameterized model with per-sample loss ``f_i(W a_i)``, ``W ∈ R^{J×D}``,

    ∇_W f_i = u_i v_iᵀ,   u_i = ∂f_i/∂(W a_i) ∈ R^J,   v_i = a_i ∈ R^D,             (SFB eq. 2)

so a minibatch's gradient is ``Σ_i u_i v_iᵀ = Uᵀ V`` with ``U`` (rows × J) and ``V`` (rows × D).
The pair (U, V) replaces the J·D gradient on the wire; it is exact, not an approximation.

References:
  Xie, Kim, Zhou, Ho, Kumar, Yu, Xing, `Distributed Machine Learning via Sufficient Factor
  Broadcasting <https://arxiv.org/abs/1511.08486>`_, 2015
"""
from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

LAYOUTS = ("flax", "paper")


ORDER_FIX = ("put sfb.scale_by_sfb first in the chain: optax.chain(sfb.scale_by_sfb(axis), ...); "
             "for gradient accumulation wrap only what follows it, "
             "optax.chain(sfb.scale_by_sfb(axis), optax.MultiSteps(inner, k).gradient_transformation()), "
             "i.e. MultiSteps after sfb.scale_by_sfb")


class ChainOrderError(TypeError, AttributeError):
  """An attribute of an array was asked of a factored gradient (``x.real`` in an optax transformation
  before ``scale_by_sfb``): a TypeError like the other refusals, and an AttributeError so that
  ``hasattr`` probes still answer False."""


class _FactoredGradient:
  """Not an array and deliberately not a pytree node: an optax transformation placed before
  ``scale_by_sfb`` (``scale``, ``clip_by_global_norm``, ``adam``, ``MultiSteps``) would map u and v
  separately, e.g. scale the gradient Σ u vᵀ by the square of its factor. Every array operation on
  it raises instead, naming the fix."""

  def _message(self) -> str:
    return (f"sfb: a {type(self).__name__} (a factored gradient) reached an operation that treats it "
            f"as an array: a transformation before sfb.scale_by_sfb, or a jit/scan/cond boundary (it "
            f"lives inside one step); {ORDER_FIX}")

  def _refuse(self, *args, **kwargs):   # a plain TypeError: getattr(x, name, default) must not swallow it
    raise TypeError(self._message())

  def __getattr__(self, name):   # only for names the class does not define (e.g. .real)
    if name.startswith("__"):
      raise AttributeError(name)
    raise ChainOrderError(self._message())

  __array__ = astype = reshape = __neg__ = __pos__ = __abs__ = _refuse
  __add__ = __radd__ = __sub__ = __rsub__ = __mul__ = __rmul__ = _refuse
  __truediv__ = __rtruediv__ = __pow__ = __rpow__ = __matmul__ = __rmatmul__ = _refuse
  __lt__ = __le__ = __gt__ = __ge__ = _refuse
  # properties, so that JAX's own getattr(x, "__jax_array__", None) probe raises this message
  __jax_array__ = shape = dtype = ndim = size = property(_refuse)


@dataclasses.dataclass(frozen=True, eq=False)
class SufficientFactors(_FactoredGradient):
  """Stands in for one matrix parameter's gradient: ``grad = Σ_rows u vᵀ (+ extra)``.

  Attributes:
    u: (rows, J) output-side factors (loss cotangents of ``W a``).
    v: (rows, D) input-side factors (the inputs ``a``).
    layout: ``"flax"`` for a kernel stored (D, J) (``nn.Dense``: grad = Vᵀ U) or ``"paper"`` for
      ``W`` stored (J, D) as in the paper (grad = Uᵀ V).
    extra: ``None``, or this device's dense gradient of the parameter's uses outside the factored
      call (an L2 term written in the loss, tied weights); ``scale_by_sfb`` ``pmean``-s it next to
      the gathered factors.
    kernel_shape, kernel_axes: for a multi-axis kernel (``nn.DenseGeneral``, ``nn.Einsum``; flax
      layout only), the kernel's shape and the kernel axes that the (D, J) matrix's rows and
      columns flatten, in order (``sfb.contraction.Contraction.kernel_axes``): the gradient is the
      matrix reshaped to those axes' sizes and transposed back. ``None``: the kernel is the matrix.

  It is a leaf, not a pytree node: create and consume it inside one traced step (its arrays cannot
  be a ``jit`` output or a ``scan`` carry), and give it only to ``scale_by_sfb`` first.
  """
  u: jax.Array
  v: jax.Array
  layout: str = "flax"
  extra: jax.Array | None = None
  kernel_shape: tuple[int, ...] | None = None
  kernel_axes: tuple[int, ...] | None = None

  def __post_init__(self):
    if self.layout not in LAYOUTS:
      raise ValueError(f"SufficientFactors.layout must be one of {LAYOUTS}, got {self.layout!r}")
    if (self.kernel_shape is None) != (self.kernel_axes is None) or (
        self.kernel_shape is not None and self.layout != "flax"):
      raise ValueError("SufficientFactors: give kernel_shape and kernel_axes together, and only with "
                       "layout='flax'")

  def validate(self) -> "SufficientFactors":
    """Checks u (rows, J) and v (rows, D) agree on rows and ``extra`` has the matrix's shape."""
    us, vs = jnp.shape(self.u), jnp.shape(self.v)
    if len(us) != 2 or len(vs) != 2 or us[0] != vs[0]:
      raise ValueError(f"SufficientFactors needs u (rows, J) and v (rows, D) with the same rows; "
                       f"got u {us} and v {vs}")
    shape, axes = self.kernel_shape, self.kernel_axes
    if shape is not None and (sorted(axes) != list(range(len(shape))) or math.prod(shape) != vs[1] * us[1]):
      raise ValueError(f"SufficientFactors: kernel_axes {axes} of kernel_shape {shape} do not "
                       f"flatten to the {vs[1]}×{us[1]} matrix of u {us} and v {vs}")
    if self.extra is not None and tuple(jnp.shape(self.extra)) != self.param_shape():
      raise ValueError(f"SufficientFactors.extra has shape {jnp.shape(self.extra)}, the factors give "
                       f"a {self.param_shape()} gradient")
    return self

  @property
  def rows(self) -> int:
    return self.u.shape[0]

  def matrix_shape(self) -> tuple[int, int]:
    """Shape of the parameter these factors stand for."""
    j, d = self.u.shape[1], self.v.shape[1]
    return (d, j) if self.layout == "flax" else (j, d)

  def param_shape(self) -> tuple[int, ...]:
    """Shape of the parameter (the kernel's own shape for a multi-axis kernel)."""
    return self.matrix_shape() if self.kernel_shape is None else tuple(self.kernel_shape)

  def check_matches(self, param_shape, where: str = "") -> None:
    self.validate()
    if tuple(param_shape) != self.param_shape():
      raise ValueError(f"SufficientFactors{where}: u {self.u.shape} and v {self.v.shape} "
                       f"({self.layout} layout) give a {self.param_shape()} gradient, but the "
                       f"parameter has shape {tuple(param_shape)}")


@dataclasses.dataclass(frozen=True, eq=False)
class FromFactors(_FactoredGradient):
  """Placeholder for a bias whose gradient is ``Σ_rows u`` of its sibling kernel's factors.

  ``scale_by_sfb`` fills it from the gathered U, so the bias costs no collective at all, unless
  ``extra`` (this device's dense gradient of the bias's other uses, e.g. an L2 term) is set: that
  is ``pmean``-ed. ``bias_shape``: the bias's shape (Σ_rows u is reshaped to it: features (H, Dh)
  of an ``nn.DenseGeneral``, an ``nn.Einsum`` bias); ``None`` keeps (J,). A leaf like
  ``SufficientFactors``.
  """
  extra: jax.Array | None = None
  bias_shape: tuple[int, ...] | None = None


def is_factor_leaf(x) -> bool:
  return isinstance(x, (SufficientFactors, FromFactors))


def reconstruct(factors: SufficientFactors, dtype=jnp.float32) -> jax.Array:
  """``Σ_rows u vᵀ`` in the parameter's layout and shape, accumulated in ``dtype`` (f32 for bf16
  factors); a multi-axis kernel's matrix is reshaped and transposed back to the kernel."""
  u, v = factors.u, factors.v
  if factors.layout == "paper":
    return jnp.einsum("rj,rd->jd", u, v, preferred_element_type=dtype)
  matrix = jnp.einsum("rd,rj->dj", v, u, preferred_element_type=dtype)
  if factors.kernel_shape is None:
    return matrix
  grouped = matrix.reshape([factors.kernel_shape[a] for a in factors.kernel_axes])
  return jnp.transpose(grouped, np.argsort(factors.kernel_axes))
