"""vr_prox trace-norm prox against independent references (float64).

prox_{t h}(Z) with h = lam ||W||_*: checked by (1) scipy.optimize minimizing
0.5||W - Z||_F^2 + t lam ||W||_* directly (numpy nuclear norm, no SVD thresholding), and
(2) the optimality condition (Z - P)/(t lam) in the subdifferential of ||.||_* at P:
(Z - P)/(t lam) = U1 V1^T + R with U1^T R = 0, R V1 = 0, ||R||_2 <= 1 (Watson 1992).
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.optimize import minimize

from vr_prox._trace_norm import prox_trace_norm



@pytest.fixture(autouse=True)
def _x64():
  """float64 for these tests only (a session-wide flag would change every later test's programs)."""
  with jax.enable_x64(True):
    yield


def _objective(w_flat, z, t):
  w = w_flat.reshape(z.shape)
  return 0.5 * np.sum((w - z) ** 2) + t * np.linalg.norm(w, "nuc")


def _matrix(seed, shape=(5, 3)):
  return np.random.default_rng(seed).normal(size=shape)


@pytest.mark.parametrize("seed", [0, 1])
def test_prox_minimizes_the_prox_objective_scipy(seed):
  z, lam, step = _matrix(seed), 0.7, 1.3
  p = np.asarray(prox_trace_norm(lam)(jnp.asarray(z), step))
  best = minimize(_objective, z.ravel(), args=(z, lam * step), method="Powell",
                  options={"xtol": 1e-10, "ftol": 1e-14, "maxiter": 200000})
  assert _objective(p.ravel(), z, lam * step) <= best.fun + 1e-9
  # the prox objective is 1-strongly convex, so its minimizer p satisfies F(q) >= F(p) + |q - p|^2 / 2
  rng = np.random.default_rng(seed + 10)
  for q in [best.x] + [p.ravel() + rng.normal(scale=s, size=p.size) for s in (1e-3, 1e-1, 1.0)]:
    assert _objective(q, z, lam * step) >= _objective(p.ravel(), z, lam * step) + 0.5 * np.sum((q - p.ravel()) ** 2) - 1e-9
  # the tempting wrong answers (no thresholding; thresholding entries) are worse
  for wrong in (z, np.sign(z) * np.maximum(np.abs(z) - lam * step, 0)):
    assert _objective(wrong.ravel(), z, lam * step) > _objective(p.ravel(), z, lam * step) + 1e-3


@pytest.mark.parametrize("seed", [2, 3, 4])
def test_prox_optimality_condition(seed):
  z, step = _matrix(seed, (6, 4)), 1.0
  lam = float(np.median(np.linalg.svd(z, compute_uv=False)))  # thresholds half the spectrum
  t = lam * step
  p = np.asarray(prox_trace_norm(lam)(jnp.asarray(z), step))
  u, s, vt = np.linalg.svd(p, full_matrices=False)
  r = int(np.sum(s > 1e-10))
  assert 0 < r < 4  # the threshold removes some but not all singular values
  u1, v1 = u[:, :r], vt[:r].T
  g = (z - p) / t
  rest = g - u1 @ v1.T
  np.testing.assert_allclose(u1.T @ rest, 0, atol=1e-12)
  np.testing.assert_allclose(rest @ v1, 0, atol=1e-12)
  assert np.linalg.norm(rest, 2) <= 1 + 1e-12


def test_value_is_the_nuclear_norm_and_mask_names_bad_leaf():
  z = _matrix(5)
  op = prox_trace_norm(0.5)
  assert abs(float(op.value({"w": jnp.asarray(z)})) - 0.5 * np.linalg.norm(z, "nuc")) <= 1e-12
  params = {"b": jnp.ones(3), "w": jnp.asarray(z)}
  with pytest.raises(ValueError, match=r"\['b'\].*mask"):
    op(params, 1.0)
  out = prox_trace_norm(0.5, mask={"b": False, "w": True})(params, 1.0)
  np.testing.assert_array_equal(np.asarray(out["b"]), 1.0)
  with pytest.raises(ValueError, match="lam"):
    prox_trace_norm(-1.0)
