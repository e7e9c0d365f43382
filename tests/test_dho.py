"""dho: Lanczos / extreme eigenpairs / HVP against jnp.linalg.eigh (spec invariants 1, 2, 3, 11)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import dho
from tests.test_dho_helpers import AXIS, mesh, planted


@pytest.fixture
def x64():
  with jax.enable_x64(True):
    yield


def _pairs(hv, n, m, k, l=0, seed=0):
  res = jax.jit(lambda: dho.lanczos(hv, n, m, jax.random.PRNGKey(seed)))()
  return dho.extreme_eigenpairs(res.tridiag, res.basis, k, l, res.valid_len), res


def test_planted_quadratic_top5_match_eigh(x64):
  a, _, _ = planted()
  (vals, vecs, ok), res = _pairs(lambda v: jnp.asarray(a) @ v, 200, 20, 5)
  true_vals, true_vecs = np.linalg.eigh(a)
  assert res.basis.dtype == jnp.float64 and bool(ok.all())
  np.testing.assert_allclose(vals, true_vals[-5:], rtol=1e-5)
  np.testing.assert_allclose(vals, [60, 70, 80, 90, 100], rtol=1e-5)
  overlaps = np.abs(np.sum(np.asarray(vecs) * true_vecs[:, -5:].T, axis=1))
  np.testing.assert_allclose(overlaps, 1.0, atol=1e-6)
  # Ritz vectors orthonormal, T = V A V^T
  np.testing.assert_allclose(vecs @ vecs.T, np.eye(5), atol=1e-8)
  np.testing.assert_allclose(res.basis @ a @ res.basis.T, res.tridiag, atol=1e-8)


def test_reference_mlp_sanity_matches_full_hessian(x64):
  """Spec 7.1b: MLP 10->100 (tanh)->10 log-softmax, loss -mean(y.yhat), batch 8, m=100, k=10, l=3."""
  rng = np.random.default_rng(1)
  k1, k2 = jax.random.split(jax.random.PRNGKey(1))
  params = {"w1": jax.random.normal(k1, (10, 100), jnp.float64) * 0.3, "b1": jnp.zeros(100),
            "w2": jax.random.normal(k2, (100, 10), jnp.float64) * 0.3, "b2": jnp.zeros(10)}
  x = jnp.asarray(rng.normal(size=(8, 10)))
  y = jax.nn.one_hot(rng.integers(0, 10, 8), 10, dtype=jnp.float64)

  def loss(p, batch):
    bx, by = batch
    out = jax.nn.log_softmax(jnp.tanh(bx @ p["w1"] + p["b1"]) @ p["w2"] + p["b2"])
    return -jnp.mean(by * out)

  flat, unravel = jax.flatten_util.ravel_pytree(params)
  n = flat.shape[0]
  assert n == 2110
  hv = lambda v: dho.hvp(loss, params, (x, y), v)
  (vals, vecs, ok), _ = _pairs(hv, n, 100, 10, 3)
  h = jax.jit(jax.jacfwd(jax.jacrev(lambda f: loss(unravel(f), (x, y)))))(flat)
  true_vals, true_vecs = np.linalg.eigh(np.asarray(h))
  expect = np.concatenate([true_vals[:3], true_vals[-10:]])
  np.testing.assert_allclose(vals, expect, atol=1e-4)
  true_sel = np.concatenate([true_vecs[:, :3], true_vecs[:, -10:]], axis=1).T
  overlaps = np.abs(np.sum(np.asarray(vecs) * true_sel, axis=1))
  np.testing.assert_allclose(overlaps[3:], 1.0, atol=1e-4)   # top-10 are well separated


def test_hvp_tree_and_flat_match_dense_hessian(x64):
  a, _, _ = planted(n=12, top=(5.0,))
  loss = lambda p, batch: 0.5 * p["x"] @ (jnp.asarray(a) @ p["x"]) + jnp.sum(p["y"] ** 3)
  params = {"x": jnp.arange(12.0) / 10, "y": jnp.array([1.0, -2.0])}
  v = {"x": jnp.ones(12), "y": jnp.array([0.5, 1.0])}
  out = dho.hvp(loss, params, None, v)
  np.testing.assert_allclose(out["x"], a @ np.ones(12), rtol=1e-12)
  np.testing.assert_allclose(out["y"], 6 * np.array([1.0, -2.0]) * np.array([0.5, 1.0]), rtol=1e-12)
  flat = dho.hvp(loss, params, None, jax.flatten_util.ravel_pytree(v)[0])
  np.testing.assert_allclose(flat, jax.flatten_util.ravel_pytree(out)[0], rtol=1e-12)


def test_breakdown_m_greater_than_n_no_nan(x64):
  """Spec 7.11: n=8 < m=20; eigenvalues {5, 3, six in [0.5, 1]} -> top two are 5 and 3."""
  rng = np.random.default_rng(3)
  q, _ = np.linalg.qr(rng.normal(size=(8, 8)))
  ev = np.concatenate([[5.0, 3.0], rng.uniform(0.5, 1.0, 6)])
  a = (q * ev) @ q.T
  (vals, vecs, ok), res = _pairs(lambda v: jnp.asarray(a) @ v, 8, 20, 2, 3)
  assert res.tridiag.shape == (8, 8)         # m capped at n
  assert np.all(np.isfinite(vals)) and np.all(np.isfinite(vecs))
  np.testing.assert_allclose(vals[-2:], [3.0, 5.0], rtol=1e-10)
  np.testing.assert_allclose(vals[:3], np.sort(ev)[:3], rtol=1e-10)


def test_breakdown_invariant_krylov_space(x64):
  """Only 3 distinct eigenvalues: the Krylov space has dimension 3, Lanczos stops there."""
  rng = np.random.default_rng(4)
  q, _ = np.linalg.qr(rng.normal(size=(10, 10)))
  a = (q * np.array([5.0, 3.0] + [1.0] * 8)) @ q.T
  (vals, vecs, ok), res = _pairs(lambda v: jnp.asarray(a) @ v, 10, 8, 3, 2)
  assert int(res.valid_len) == 3
  assert np.all(np.isfinite(vals)) and np.all(np.isfinite(res.basis))
  np.testing.assert_array_equal(np.asarray(ok), [False, False, True, True, True])
  np.testing.assert_allclose(vals[2:], [1.0, 3.0, 5.0], rtol=1e-10)
  np.testing.assert_array_equal(np.asarray(vecs[:2]), 0.0)


def _least_squares(n=1001, rows=64, seed=5):
  rng = np.random.default_rng(seed)
  # noise plus five planted directions with well separated strengths
  a, _ = np.linalg.qr(rng.normal(size=(rows, 5)))
  b, _ = np.linalg.qr(rng.normal(size=(n, 5)))
  x = (0.1 * rng.normal(size=(rows, n)) + np.sqrt(rows) * (a * [10., 8., 6., 5., 4.]) @ b.T).astype(np.float32)
  y = rng.normal(size=rows).astype(np.float32)
  w = jnp.asarray(rng.normal(size=n) * 0.01, jnp.float32)
  loss = lambda w, batch: 0.5 * jnp.mean((batch[0] @ w - batch[1]) ** 2)
  return x, y, w, loss


def _sharded_lanczos(p, x, y, w, loss, m=24, k=5):
  n = w.shape[0]
  layout = dho.Layout(n, p, AXIS)

  def body(w, bx, by):
    wv = lax.pcast(w, AXIS, to="varying")

    def hv(v_loc):
      v = lax.pcast(layout.gather(v_loc.astype(jnp.float32)), AXIS, to="varying")
      return layout.reduce(jax.jvp(lambda q: jax.grad(loss)(q, (bx, by)), (wv,), (v,))[1])
    res = dho.lanczos(hv, n, m, jax.random.PRNGKey(0), axis_name=AXIS, num_shards=p)
    vals, vecs, _ = dho.extreme_eigenpairs(res.tridiag, res.basis, k, 0, res.valid_len)
    return res.tridiag, vals, vecs[None], res.basis[None]

  fn = jax.jit(jax.shard_map(body, mesh=mesh(p), in_specs=(jax.P(), jax.P(AXIS), jax.P(AXIS)),
                             out_specs=(jax.P(), jax.P(), jax.P(AXIS), jax.P(AXIS))))
  tri, vals, vecs, basis = fn(w, x, y)
  s = -(-n // p)
  full_vecs = np.asarray(vecs).transpose(1, 0, 2).reshape(k, p * s)[:, :n]
  return tri, vals, full_vecs, basis


def test_sharded_lanczos_shard_invariant_and_memory(x64):
  """Spec 7.2 + 7.3: n=1001 (not divisible by 8), m=24, f32 HVP, P in {1,2,4,8}."""
  x, y, w, loss = _least_squares()
  n, m = 1001, 24
  h = (x.astype(np.float64).T @ x.astype(np.float64)) / x.shape[0]
  true_vals, true_vecs = np.linalg.eigh(h)
  results = {p: _sharded_lanczos(p, x, y, w, loss) for p in (1, 2, 4, 8)}
  tri1, vals1, vecs1, _ = results[1]
  np.testing.assert_allclose(vals1, true_vals[-5:], rtol=1e-6)
  for p, (tri, vals, vecs, basis) in results.items():
    # The leading block (before the planted top space converges) agrees to f32-HVP rounding; later
    # rows live in the noise bulk where Lanczos amplifies reduction-order rounding (not a P effect).
    np.testing.assert_allclose(tri[:8], tri1[:8], atol=1e-5)
    np.testing.assert_allclose(vals, vals1, rtol=1e-5)        # no scaling with P
    np.testing.assert_allclose(vals, true_vals[-5:], rtol=1e-6)
    assert np.min(np.abs(np.sum(vecs * vecs1, axis=1))) >= 1 - 1e-6
    shard_bytes = {sh.data.nbytes for sh in basis.addressable_shards}
    assert shard_bytes == {m * (-(-n // p)) * 8} == {dho.basis_bytes(n, m, p)}
  b1 = next(iter(results[1][3].addressable_shards)).data.nbytes
  b8 = next(iter(results[8][3].addressable_shards)).data.nbytes
  assert (b1, b8) == (192192, 24192) and b8 <= 0.13 * b1


def test_lanczos_float32_without_x64():
  a, _, _ = planted(n=100)
  (vals, _, _), res = _pairs(lambda v: jnp.asarray(a, jnp.float32) @ v, 100, 20, 5)
  assert res.basis.dtype == jnp.float32
  np.testing.assert_allclose(vals, [60, 70, 80, 90, 100], rtol=1e-4)


def test_lanczos_bad_input():
  with pytest.raises(ValueError, match="m must be"):
    dho.lanczos(lambda v: v, 10, 0, jax.random.PRNGKey(0))


def test_hvp_inside_shard_map_equals_global_hvp(x64):
  """dho.hvp(axis_name=...) at pcast params + one pmean == single-device HVP of the global batch
  (guards against the implicit psum of grads w.r.t. replicated params: no factor P)."""
  x, y, w, loss = _least_squares(n=40, rows=64)
  v = jnp.asarray(np.random.default_rng(2).normal(size=40), jnp.float32)
  ref = dho.hvp(loss, w, (x, y), v)
  fn = jax.jit(jax.shard_map(lambda w, v, bx, by: dho.hvp(loss, w, (bx, by), v, axis_name=AXIS), mesh=mesh(8),
                             in_specs=(jax.P(), jax.P(), jax.P(AXIS), jax.P(AXIS)), out_specs=jax.P()))
  np.testing.assert_allclose(fn(w, v, x, y), ref, rtol=1e-5, atol=1e-5)
