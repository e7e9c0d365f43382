"""Closed-form sufficient factors of the paper's matrix-parameterized models.

Xie et al., "Distributed Machine Learning via Sufficient Factor Broadcasting" (arXiv 1511.08486),
Sec. 2: for ``min_W (1/N) Σ_i f_i(W a_i) + h(W)`` the minibatch gradient is
``Σ_i u_i v_iᵀ``. Every function here takes the parameter in the paper's layout (rows of W are the
outputs), a LOCAL minibatch, and returns ``(loss, SufficientFactors(u, v, "paper"))`` where the loss
is the mean over the given rows and ``u`` is already divided by the row count, so
``reconstruct(factors) == jax.grad(loss)``. Regularizers and constraints are applied locally after
the exchange (``project_*`` below, or optax's ``add_decayed_weights``).

References:
  Xie, Kim, Zhou, Ho, Kumar, Yu, Xing, `Distributed Machine Learning via Sufficient Factor
  Broadcasting <https://arxiv.org/abs/1511.08486>`_, 2015
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from sfb.factors import SufficientFactors


def softmax_factors(w: jax.Array, x: jax.Array, y: jax.Array):
  """Multiclass logistic regression, ``W`` (J, D): ``u = softmax(W a) − e_y``, ``v = a``."""
  logits = x @ w.T
  loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
  u = (jax.nn.softmax(logits) - jax.nn.one_hot(y, w.shape[0], dtype=logits.dtype)) / x.shape[0]
  return loss, SufficientFactors(u, x, "paper")


def squared_hinge_factors(w: jax.Array, x: jax.Array, y: jax.Array):
  """One-vs-rest L2-loss SVM ``f = Σ_j max(0, 1 − y_j w_jᵀa)²`` with ``y_j = ±1``, ``W`` (J, D):
  ``u_j = −2 y_j max(0, 1 − y_j w_jᵀa)``, ``v = a``."""
  signs = 2.0 * jax.nn.one_hot(y, w.shape[0], dtype=x.dtype) - 1.0
  slack = jnp.maximum(0.0, 1.0 - signs * (x @ w.T))
  loss = jnp.sum(slack ** 2) / x.shape[0]
  return loss, SufficientFactors(-2.0 * signs * slack / x.shape[0], x, "paper")


def metric_learning_factors(l: jax.Array, x1: jax.Array, x2: jax.Array, similar: jax.Array,
                            margin_weight: float = 1.0):
  """Distance metric learning, ``L`` (k, D), pairs (x1, x2):
  ``Σ_similar ‖L(x1−x2)‖² + λ Σ_dissimilar max(0, 1 − ‖L(x1−x2)‖²)``.
  ``u = 2L(x1−x2)`` (similar), ``−2λL(x1−x2)`` (dissimilar, margin active), else 0; ``v = x1−x2``."""
  diff = x1 - x2
  z = diff @ l.T
  sq = jnp.sum(z ** 2, axis=1)
  similar = similar.astype(bool)
  active = (~similar) & (sq < 1.0)
  loss = jnp.where(similar, sq, margin_weight * jnp.maximum(0.0, 1.0 - sq)).mean()
  coef = jnp.where(similar, 2.0, jnp.where(active, -2.0 * margin_weight, 0.0))
  return loss, SufficientFactors(coef[:, None] * z / x1.shape[0], diff, "paper")


def sparse_codes(b: jax.Array, x: jax.Array, l1: float, steps: int = 100) -> jax.Array:
  """Codes ``s = argmin ½‖x − B s‖² + λ‖s‖₁`` for fixed dictionary ``B`` (D, K) by ISTA."""
  step = 1.0 / (jnp.linalg.norm(b, ord=2) ** 2 + 1e-12)

  def body(s, _):
    s = s - step * ((s @ b.T - x) @ b)
    return jnp.sign(s) * jnp.maximum(jnp.abs(s) - step * l1, 0.0), None

  s, _ = jax.lax.scan(body, jnp.zeros((x.shape[0], b.shape[1]), x.dtype), None, length=steps)
  return s


def sparse_coding_factors(b: jax.Array, x: jax.Array, codes: jax.Array, l1: float = 0.0):
  """Sparse coding ``½‖x − B s‖² + λ‖s‖₁`` w.r.t. the dictionary ``B`` (D, K) at fixed codes:
  ``u = B s − x`` (D), ``v = s`` (K). Follow the step with ``project_unit_columns``."""
  resid = codes @ b.T - x
  loss = 0.5 * jnp.sum(resid ** 2) / x.shape[0] + l1 * jnp.sum(jnp.abs(codes)) / x.shape[0]
  return loss, SufficientFactors(resid / x.shape[0], codes, "paper")


def nmf_codes(w: jax.Array, x: jax.Array, steps: int = 100) -> jax.Array:
  """Nonnegative codes ``h = argmin_{h≥0} ½‖x − W h‖²`` by projected gradient, ``W`` (D, K) ≥ 0."""
  step = 1.0 / (jnp.linalg.norm(w, ord=2) ** 2 + 1e-12)

  def body(h, _):
    return jnp.maximum(h - step * ((h @ w.T - x) @ w), 0.0), None

  h, _ = jax.lax.scan(body, jnp.zeros((x.shape[0], w.shape[1]), x.dtype), None, length=steps)
  return h


def nmf_factors(w: jax.Array, x: jax.Array, codes: jax.Array):
  """Projected-gradient NMF ``½‖x − W h‖²`` w.r.t. ``W`` (D, K) ≥ 0 at fixed ``h``:
  ``u = W h − x``, ``v = h``. Follow the step with ``project_nonnegative``. (Lee–Seung
  multiplicative updates are elementwise ratios, not rank-1 sums, so they are not SFB-compatible.)"""
  resid = codes @ w.T - x
  return 0.5 * jnp.sum(resid ** 2) / x.shape[0], SufficientFactors(resid / x.shape[0], codes, "paper")


def unit_columns(b: jax.Array) -> jax.Array:
  """Projects every column of ``b`` onto the unit ball (sparse coding's ``‖b_k‖ ≤ 1``)."""
  return b / jnp.maximum(jnp.linalg.norm(b, axis=0, keepdims=True), 1.0)


def nonnegative(w: jax.Array) -> jax.Array:
  return jnp.maximum(w, 0.0)


def project(projection) -> optax.GradientTransformation:
  """Makes the step land on a constraint set: ``update ← Π(params + update) − params``.

  Place it last in a chain, e.g. ``optax.chain(sfb.scale_by_sfb(), optax.sgd(lr),
  sfb.project(sfb.unit_columns))``; ``projection`` maps a params tree's leaves (every leaf).
  Deterministic and applied on each replica's identical copy, so replicas stay equal.
  """

  def init_fn(params):
    del params
    return optax.EmptyState()

  def update_fn(updates, state, params=None):
    if params is None:
      raise ValueError("sfb.project needs params: call update(updates, state, params)")
    return jax.tree.map(lambda u, p: projection(p + u) - p, updates, params), state

  return optax.GradientTransformation(init_fn, update_fn)
