"""vr_prox proximal operators: optimality condition, brute-force argmin, traps, bad input."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.optimize import minimize, minimize_scalar

import vr_prox

RNG = np.random.default_rng(0)


@pytest.fixture(autouse=True)
def _x64():
  with jax.enable_x64(True):  # float64 locally: checks at 1e-12 (the library never flips config)
    yield


def _brute_1d(h, z, step):
  """argmin_x 0.5 (x - z)^2 + step h(x) by a bounded scalar search (independent of the closed form)."""
  res = minimize_scalar(lambda x: 0.5 * (x - z) ** 2 + step * h(x), bounds=(-abs(z) - 2, abs(z) + 2),
                        method="bounded", options={"xatol": 1e-12})
  return res.x


@pytest.mark.parametrize("l1,l2", [(0.3, 0.0), (0.21 / 0.7, 0.35 / 0.7), (0.1, 2.0)])
def test_elastic_net_and_l1_match_brute_force_and_subgradient(l1, l2):
  step = 0.7
  z = RNG.normal(size=40) * 0.6
  op = vr_prox.prox_elastic_net(l1, l2) if l2 else vr_prox.prox_l1(l1)
  p = np.asarray(op(jnp.asarray(z), step))
  brute = np.array([_brute_1d(lambda x: l1 * abs(x) + 0.5 * l2 * x * x, zi, step) for zi in z])
  np.testing.assert_allclose(p, brute, atol=1e-7)
  # (z - p)/step - l2 p in l1 * d|p|
  r = (z - p) / step - l2 * p
  nz = p != 0
  np.testing.assert_allclose(r[nz], l1 * np.sign(p[nz]), atol=1e-12)
  assert np.all(np.abs(r[~nz]) <= l1 + 1e-12)
  assert nz.any() and (~nz).any()  # both branches exercised
  # value(x) is h(x)
  np.testing.assert_allclose(float(op.value(jnp.asarray(p))), l1 * np.abs(p).sum() + 0.5 * l2 * p @ p, rtol=1e-6)


def test_elastic_net_ordering_trap_is_caught():
  """soft(z/(1+g l2), g l1) is wrong: its threshold is too large by (1 + g l2) (spec §4.5)."""
  step, l1, l2 = 1.0, 0.21, 0.35
  z = np.array([0.5, -0.5, 0.3, 0.22, -0.25])
  brute = np.array([_brute_1d(lambda x: l1 * abs(x) + 0.5 * l2 * x * x, zi, step) for zi in z])
  ours = np.asarray(vr_prox.prox_elastic_net(l1, l2)(jnp.asarray(z), step))
  wrong = np.asarray(vr_prox.soft_threshold(jnp.asarray(z) / (1 + step * l2), step * l1))
  np.testing.assert_allclose(ours, brute, atol=1e-7)
  assert abs(wrong[0] - brute[0]) > 0.05  # the brute-force check above would catch the trap
  assert np.max(np.abs(wrong - brute)) > 0.05


def test_box_and_none():
  z = jnp.asarray(RNG.normal(size=30))
  box = vr_prox.prox_box(-0.5, 0.2)
  p = np.asarray(box(z, 0.3))
  brute = np.clip(np.asarray(z), -0.5, 0.2)  # projection onto the box is the argmin
  np.testing.assert_array_equal(p, brute)
  r = (np.asarray(z) - p) / 0.3  # normal cone: r <= 0 at lower, r >= 0 at upper, 0 inside
  assert np.all(r[p == -0.5] <= 0) and np.all(r[p == 0.2] >= 0)
  np.testing.assert_array_equal(r[(p > -0.5) & (p < 0.2)], 0)
  assert float(box.value(jnp.asarray(p))) == 0 and float(box.value(z)) == np.inf
  np.testing.assert_array_equal(np.asarray(vr_prox.prox_none()(z, 1.0)), np.asarray(z))
  nonneg = vr_prox.prox_box(lower=0.0)
  np.testing.assert_array_equal(np.asarray(nonneg(z, 1.0)), np.maximum(np.asarray(z), 0))


def _group_objective(x, z, step, l1, lam, groups, w):
  return (0.5 * np.sum((x - z) ** 2) + step * l1 * np.abs(x).sum()
          + step * lam * sum(wg * np.linalg.norm(x[g]) for g, wg in zip(groups, w)))


@pytest.mark.parametrize("l1", [0.0, 0.15])
def test_group_lasso_matches_brute_force_and_subgradient(l1):
  groups = [np.array([0, 1, 2]), np.array([3, 4]), np.array([5]), np.array([6, 7, 8, 9])]
  w = [np.sqrt(len(g)) for g in groups]
  step, lam = 0.5, 0.6
  z = RNG.normal(size=10)
  z[3:5] *= 0.1  # a group that is shrunk to zero
  op = (vr_prox.prox_sparse_group_lasso(l1, lam, groups) if l1 else vr_prox.prox_group_lasso(lam, groups))
  params = {"a": jnp.asarray(z[:4]), "b": jnp.asarray(z[4:].reshape(2, 3))}  # pytree, ravel order a then b
  out = op(params, step)
  p = np.concatenate([np.asarray(out["a"]), np.asarray(out["b"]).ravel()])
  best = min((minimize(_group_objective, x0, args=(z, step, l1, lam, groups, w), method="Powell",
                       options={"xtol": 1e-11, "ftol": 1e-15, "maxiter": 200000})
              for x0 in (z, np.zeros(10), p + 0.01)), key=lambda r: r.fun)
  assert _group_objective(p, z, step, l1, lam, groups, w) <= best.fun + 1e-12
  np.testing.assert_allclose(p, best.x, atol=2e-5)
  r = (z - p) / step
  zero_groups = 0
  for g, wg in zip(groups, w):
    if np.linalg.norm(p[g]) == 0:
      zero_groups += 1
      soft_r = np.sign(r[g]) * np.maximum(np.abs(r[g]) - l1, 0)
      assert np.linalg.norm(soft_r) <= lam * wg + 1e-12
    else:
      rest = r[g] - lam * wg * p[g] / np.linalg.norm(p[g])
      nz = p[g] != 0
      np.testing.assert_allclose(rest[nz], l1 * np.sign(p[g][nz]), atol=1e-10)
      assert np.all(np.abs(rest[~nz]) <= l1 + 1e-10)
  assert zero_groups >= 1
  val = l1 * np.abs(p).sum() + lam * sum(wg * np.linalg.norm(p[g]) for g, wg in zip(groups, w))
  np.testing.assert_allclose(float(op.value(out)), val, rtol=1e-6)


def test_group_with_zero_norm_and_group_id_form():
  op = vr_prox.prox_group_lasso(1.0, np.array([0, 0, 1, 1]))
  out = np.asarray(op(jnp.array([0.0, 0.0, 3.0, 4.0]), 0.5))
  assert np.all(np.isfinite(out))
  np.testing.assert_allclose(out, [0, 0, 3 * (1 - 0.5 * np.sqrt(2) / 5), 4 * (1 - 0.5 * np.sqrt(2) / 5)], rtol=1e-6)


def test_mask_leaves_unmarked_leaves_alone():
  params = {"w": jnp.array([0.1, -2.0]), "b": jnp.array([0.05])}
  op = vr_prox.prox_l1(1.0, mask={"w": True, "b": False})
  out = op(params, 0.5)
  np.testing.assert_array_equal(np.asarray(out["b"]), [0.05])
  np.testing.assert_allclose(np.asarray(out["w"]), [0.0, -1.5])
  np.testing.assert_allclose(float(op.value(params)), 2.1, rtol=1e-6)


def test_prox_cleanup_fixed_point():
  op = vr_prox.prox_l1(0.5)
  x = {"w": jnp.array([0.0, 1.0])}
  g = {"w": jnp.array([0.2, -0.5])}  # at x: 0 in g + l1*d|x|  -> x is optimal, cleanup returns x
  out = vr_prox.prox_cleanup(x, g, op, 0.3)
  np.testing.assert_allclose(np.asarray(out["w"]), [0.0, 1.0], atol=1e-7)


def test_bad_input_errors():
  with pytest.raises(ValueError, match="l1"):
    vr_prox.prox_l1(-1e-3)
  with pytest.raises(ValueError, match="l2"):
    vr_prox.prox_elastic_net(1e-3, -1.0)
  with pytest.raises(ValueError, match="lam"):
    vr_prox.prox_group_lasso(-1.0, [np.array([0])])
  with pytest.raises(ValueError, match="lower"):
    vr_prox.prox_box(1.0, 0.0)
  with pytest.raises(ValueError, match="unknown prox"):
    vr_prox.make_prox("l0", l1=1.0)
  with pytest.raises(ValueError, match="do not cover"):
    vr_prox.prox_group_lasso(1.0, [np.array([0, 1]), np.array([3])], num_params=4)
  with pytest.raises(ValueError, match="more than one group"):
    vr_prox.prox_group_lasso(1.0, [np.array([0, 1]), np.array([1, 2])])
  op = vr_prox.prox_group_lasso(1.0, [np.array([0, 1]), np.array([2])])  # 3 coords, params have 4
  with pytest.raises(ValueError, match="do not cover"):
    op(jnp.zeros(4), 1.0)
