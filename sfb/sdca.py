"""SFB-SDCA: dual coordinate ascent whose primal updates travel as sufficient factors.

Xie et al., arXiv 1511.08486, Sec. 3.2 (SDCA for L2-regularized MPMs; Shalev-Shwartz & Zhang,
JMLR 2013). For ``min_W (1/N) Σ_i f_i(W a_i) + (λ/2)‖W‖²`` with ``W`` (J, D) the dual is

    D(Z) = (1/N) Σ_i −f_i*(−z_i) − (λ/2)‖W(Z)‖²,   W(Z) = (1/(λN)) Σ_i z_i a_iᵀ,

so changing one sample's dual block by ``Δz_i`` changes W by the rank-1 ``u vᵀ`` with
``u = Δz_i/(λN)``, ``v = a_i``: the sufficient factor. Each round every worker takes ``b``
sequential closed-form block steps on its own rows (seeing its own pending change scaled by the
aggregation factor σ'), all workers all-gather the P·b factor pairs, and add them to W. The
closed forms (per class j; ``s = ‖a_i‖²``, ``q = σ' s/(λN)``):

    squared loss ½(t − y)²:              Δz = (y − w_jᵀa − z)/(1 + q)
    squared hinge max(0, 1 − y t)²:      z = yβ,  Δβ = max(−β, (1 − y w_jᵀa − β/2)/(½ + q))

σ' = P is CoCoA+'s safe "adding" bound (Ma et al. 2015); σ' = 1 (plain summation of P
independent local steps) diverges. The duality gap ``P(W) − D(Z) ≥ 0`` certifies the optimum.

References:
  Xie, Kim, Zhou, Ho, Kumar, Yu, Xing, `Distributed Machine Learning via Sufficient Factor
  Broadcasting <https://arxiv.org/abs/1511.08486>`_, 2015

  Shalev-Shwartz, Zhang, `Stochastic Dual Coordinate Ascent Methods for Regularized Loss
  Minimization <https://arxiv.org/abs/1209.1873>`_, JMLR 2013

  Ma, Smith, Jaggi, Jordan, Richtárik, Takáč, `Adding vs. Averaging in Distributed Primal-Dual
  Optimization <https://arxiv.org/abs/1502.03508>`_, ICML 2015
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from sfb import axis
from sfb.aggregate import gather_factors
from sfb.factors import SufficientFactors, reconstruct

LOSSES = ("squared_hinge", "squared")


class SDCAState(NamedTuple):
  count: jax.Array    # rounds done
  duals: jax.Array    # (local rows, J): z_i of this worker's rows
  key: jax.Array      # raw uint32 key; row order = permutation(fold_in(key, epoch)) per worker


class SDCA(NamedTuple):
  """``init(w, num_local_rows) -> state``; ``step(w, state, x, y, mask) -> (w, state, factors)``;
  ``duality_gap(w, state, x, y, mask) -> dict(primal, dual, gap)``."""
  init: Callable
  step: Callable
  duality_gap: Callable


def _signed_targets(y, num_classes, dtype):
  return 2.0 * jax.nn.one_hot(y, num_classes, dtype=dtype) - 1.0


def _worker_key(key, axis_name):
  """This worker's row-order key (the state's key itself with one worker)."""
  return key if axis_name is None else jax.random.fold_in(key, axis.axis_index(axis_name))


def sdca(loss: str = "squared_hinge", *, l2: float, num_rows: int, rows_per_round: int,
         sigma_prime: float | None = None, axis_name: str | None = "data", seed: int = 0) -> SDCA:
  """Builds SFB-SDCA for one-vs-rest squared-hinge SVM or multi-output squared loss.

  Args:
    loss: ``"squared_hinge"`` (labels are class indices; targets ±1 one-vs-rest) or ``"squared"``
      (targets (rows, J) floats).
    l2: λ > 0 (LinearSVC's C corresponds to ``λ = 1/(C·N)``).
    num_rows: N, the number of real (unpadded) training rows over all workers.
    rows_per_round: b, sequential dual steps per worker per round.
    sigma_prime: aggregation safety factor σ'; default P (the axis size, 1 on one device).
    axis_name: mesh axis of the workers (``None``: one worker, no collectives).
    seed: row-order randomness.
  """
  if loss not in LOSSES:
    raise ValueError(f"sdca loss must be one of {LOSSES}, got {loss!r}")
  if not l2 > 0:
    raise ValueError(f"sdca needs l2 > 0 (strongly convex regularizer), got {l2}")
  if num_rows < 1 or rows_per_round < 1:
    raise ValueError(f"sdca needs num_rows >= 1 and rows_per_round >= 1, got {num_rows}, {rows_per_round}")
  if sigma_prime is not None and not sigma_prime > 0:
    raise ValueError(f"sdca sigma_prime must be > 0, got {sigma_prime}")
  lam_n = l2 * num_rows

  def sigma():
    if sigma_prime is not None:
      return sigma_prime
    return axis.axis_size(axis_name)

  def init(w, num_local_rows: int) -> SDCAState:
    return SDCAState(jnp.zeros((), jnp.int32), jnp.zeros((num_local_rows, w.shape[0]), w.dtype),
                     jax.random.PRNGKey(seed))

  def block_step(w_view, a, target, z, s_prime):
    t = w_view @ a
    q = s_prime * jnp.dot(a, a) / lam_n
    if loss == "squared":
      return (target - t - z) / (1.0 + q)
    beta = target * z
    return target * jnp.maximum(-beta, (1.0 - target * t - 0.5 * beta) / (0.5 + q))

  def targets(y, w):
    return _signed_targets(y, w.shape[0], w.dtype) if loss == "squared_hinge" else y.astype(w.dtype)

  def step(w, state: SDCAState, x, y, mask):
    n_local = x.shape[0]
    s_prime = sigma()
    key = _worker_key(state.key, axis_name)
    start = state.count * rows_per_round
    offsets = start + jnp.arange(rows_per_round)
    epochs = offsets // n_local
    idx = jax.vmap(lambda e, o: jax.random.permutation(jax.random.fold_in(key, e), n_local)[o % n_local])(
        epochs, offsets)
    tgt = targets(y, w)

    def body(carry, i):
      dw, duals = carry
      a, m = x[i], mask[i].astype(w.dtype)
      dz = m * block_step(w + s_prime * dw, a, tgt[i], duals[i], s_prime)
      u = dz / lam_n
      return (dw + jnp.outer(u, a), duals.at[i].add(dz)), (u, a)

    dw0 = axis.to_varying(jnp.zeros_like(w), axis_name)
    (_, duals), (u, v) = lax.scan(body, (dw0, state.duals), idx)
    factors = SufficientFactors(u, v, "paper")
    w = w + reconstruct(gather_factors(factors, axis_name), w.dtype)
    return w, SDCAState(state.count + 1, duals, state.key), factors

  def duality_gap(w, state: SDCAState, x, y, mask):
    """Primal P(W), dual D(Z) (both over all workers' rows) and their gap (≥ 0)."""
    tgt = targets(y, w)
    m = mask.astype(w.dtype)[:, None]
    t = x @ w.T
    z = state.duals
    if loss == "squared":
      f = 0.5 * (t - tgt) ** 2
      conj = z * tgt - 0.5 * z ** 2
    else:
      f = jnp.maximum(0.0, 1.0 - tgt * t) ** 2
      beta = tgt * z
      conj = beta - 0.25 * beta ** 2
    sums = jnp.stack([jnp.sum(m * f), jnp.sum(m * conj)])
    if axis_name is not None:
      sums = lax.psum(sums, axis_name)
    reg = 0.5 * l2 * jnp.sum(w ** 2)
    primal, dual = sums[0] / num_rows + reg, sums[1] / num_rows - reg
    return {"primal": primal, "dual": dual, "gap": primal - dual}

  return SDCA(init, step, duality_gap)
