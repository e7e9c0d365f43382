"""Sufficient factors: the exact rank-``rows`` form of a matrix parameter's gradient.

Xie et al., "Distributed Machine Learning via Sufficient Factor Broadcasting" (arXiv 1511.08486),
Sec. 2: for a matrix-parameterized model with per-sample loss ``f_i(W a_i)``, ``W ∈ R^{J×D}``,

    ∇_W f_i = u_i v_iᵀ,   u_i = ∂f_i/∂(W a_i) ∈ R^J,   v_i = a_i ∈ R^D,             (SFB eq. 2)

so a minibatch's gradient is ``Σ_i u_i v_iᵀ = Uᵀ V`` with ``U`` (rows × J) and ``V`` (rows × D).
The pair (U, V) replaces the J·D gradient on the wire; it is exact, not an approximation.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

LAYOUTS = ("flax", "paper")


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class SufficientFactors:
  """Stands in for one matrix parameter's gradient: ``grad = Σ_rows u vᵀ``.

  Attributes:
    u: (rows, J) output-side factors (loss cotangents of ``W a``).
    v: (rows, D) input-side factors (the inputs ``a``).
    layout: ``"flax"`` for a kernel stored (D, J) (``nn.Dense``: grad = Vᵀ U) or ``"paper"`` for
      ``W`` stored (J, D) as in the paper (grad = Uᵀ V).
  """
  u: jax.Array
  v: jax.Array
  layout: str = dataclasses.field(default="flax", metadata=dict(static=True))

  def __post_init__(self):
    if self.layout not in LAYOUTS:
      raise ValueError(f"SufficientFactors.layout must be one of {LAYOUTS}, got {self.layout!r}")

  def validate(self) -> "SufficientFactors":
    """Checks u (rows, J) and v (rows, D) agree on rows (not in __post_init__: JAX rebuilds
    pytrees with placeholder leaves)."""
    us, vs = jnp.shape(self.u), jnp.shape(self.v)
    if len(us) != 2 or len(vs) != 2 or us[0] != vs[0]:
      raise ValueError(f"SufficientFactors needs u (rows, J) and v (rows, D) with the same rows; "
                       f"got u {us} and v {vs}")
    return self

  @property
  def rows(self) -> int:
    return self.u.shape[0]

  def matrix_shape(self) -> tuple[int, int]:
    """Shape of the parameter these factors stand for."""
    j, d = self.u.shape[1], self.v.shape[1]
    return (d, j) if self.layout == "flax" else (j, d)

  def check_matches(self, param_shape, where: str = "") -> None:
    self.validate()
    if tuple(param_shape) != self.matrix_shape():
      raise ValueError(f"SufficientFactors{where}: u {self.u.shape} and v {self.v.shape} "
                       f"({self.layout} layout) give a {self.matrix_shape()} gradient, but the "
                       f"parameter has shape {tuple(param_shape)}")


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class FromFactors:
  """Placeholder for a bias whose gradient is ``Σ_rows u`` of its sibling kernel's factors.

  ``scale_by_sfb`` fills it from the gathered U, so the bias costs no collective at all.
  """


def varying_axes(x) -> frozenset:
  """Mesh axes over which ``x`` is device-varying (empty outside ``shard_map``)."""
  aval = jax.typeof(x)
  mat = getattr(aval, "mat", None)
  if mat is not None:
    return frozenset(mat.varying)
  return frozenset(getattr(aval, "vma", ()))


def is_factor_leaf(x) -> bool:
  return isinstance(x, (SufficientFactors, FromFactors))


def reconstruct(factors: SufficientFactors, dtype=jnp.float32) -> jax.Array:
  """``Σ_rows u vᵀ`` in the parameter's layout, accumulated in ``dtype`` (f32 for bf16 factors)."""
  u, v = factors.u, factors.v
  if factors.layout == "flax":
    return jnp.einsum("rd,rj->dj", v, u, preferred_element_type=dtype)
  return jnp.einsum("rj,rd->jd", u, v, preferred_element_type=dtype)
