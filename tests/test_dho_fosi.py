"""dho: FOSI update semantics (spec invariants 4-10, 12 on one device; bad input)."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import dho
from tests.test_dho_helpers import numpy_fosi_step, numpy_lanczos, planted, quad_loss, run_single, softmax_problem


@pytest.fixture
def x64():
  with jax.enable_x64(True):
    yield


def _quad_setup(smallest=None):
  a, ev, q = planted(smallest=smallest)
  rng = np.random.default_rng(7)
  xstar = rng.normal(size=200)
  x0 = xstar + rng.normal(size=200)
  return a, ev, q, xstar, {"x": jnp.asarray(x0)}


def _one_step(tx, params, loss):
  state = tx.init(params)
  g = jax.grad(loss)(params, None)
  u, state = jax.jit(lambda g, s, p: tx.update(g, s, p, batch=jnp.zeros(1)))(g, state, params)
  return optax.apply_updates(params, u), u, state


def _components(x, xstar, q, idx):
  d = np.asarray(x) - xstar
  return q[:, idx].T @ d


def test_newton_step_exact_in_subspace(x64):
  """Spec 7.6: fosi_sgd, base lr 0, alpha 1, W=1: top-5 component of x - x* shrinks >= 1e6, rest fixed."""
  a, ev, q, xstar, params = _quad_setup()
  loss = quad_loss(a, xstar)
  tx = dho.fosi_sgd(optax.sgd(0.0), loss, axis_name=None, k=5, m=20, alpha=1.0, warmup=1, refresh_every=100)
  new, _, state = _one_step(tx, params, loss)
  top, rest = np.arange(5), np.arange(5, 200)
  before, after = _components(params["x"], xstar, q, top), _components(new["x"], xstar, q, top)
  assert np.max(np.abs(after)) <= 1e-6 * np.max(np.abs(before))
  np.testing.assert_allclose(_components(new["x"], xstar, q, rest), _components(params["x"], xstar, q, rest),
                             atol=1e-8)
  np.testing.assert_allclose(np.sort(np.asarray(state.eigvals)), [60, 70, 80, 90, 100], rtol=1e-6)


def test_fosi_adam_ema_multiplies_top_component_by_0_9(x64):
  """Spec 7.7: EMA (1-beta) g1 + beta vel without bias correction -> factor exactly 0.9."""
  a, ev, q, xstar, params = _quad_setup()
  loss = quad_loss(a, xstar)
  tx = dho.fosi_adam(optax.sgd(0.0), loss, axis_name=None, k=5, m=20, alpha=1.0, warmup=1, refresh_every=100)
  new, _, state = _one_step(tx, params, loss)
  top = np.arange(5)
  ratio = _components(new["x"], xstar, q, top) / _components(params["x"], xstar, q, top)
  np.testing.assert_allclose(ratio, 0.9, rtol=1e-6)
  assert float(state.scale) == 1.0


def test_scale_c_as_specified(x64):
  """Spec 7.8: fosi_sgd(sgd(0.01)) c = 100/60 and complement update = -c * 0.01 * g2; clip 1.5; adam 1."""
  a, ev, q, xstar, params = _quad_setup()
  loss = quad_loss(a, xstar)
  kw = dict(k=5, m=20, alpha=0.0, warmup=1, refresh_every=100)
  _, u, state = _one_step(dho.fosi_sgd(optax.sgd(0.01), loss, axis_name=None, **kw), params, loss)
  assert float(state.scale) == pytest.approx(100 / 60, rel=1e-9)
  g = np.asarray(jax.grad(loss)(params, None)["x"])
  proj = q[:, :5] @ q[:, :5].T
  g2 = g - proj @ g
  np.testing.assert_allclose(np.asarray(u["x"]), -(100 / 60) * 0.01 * g2, atol=1e-9)
  _, _, s2 = _one_step(dho.fosi_momentum(optax.sgd(0.01), loss, axis_name=None, scale_clip=1.5, **kw), params, loss)
  assert float(s2.scale) == 1.5
  _, _, s3 = _one_step(dho.fosi_adam(optax.sgd(0.01), loss, axis_name=None, **kw), params, loss)
  assert float(s3.scale) == 1.0


def test_negative_curvature_uses_abs_eigenvalue(x64):
  """Spec 7.9: smallest eigenvalue -2, l=1, alpha 1, base lr 0: that component is multiplied by 2."""
  a, ev, q, xstar, params = _quad_setup(smallest=-2.0)
  loss = quad_loss(a, xstar)
  neg = int(np.argmin(ev))
  tx = dho.fosi_sgd(optax.sgd(0.0), loss, axis_name=None, k=5, l=1, alpha=1.0, warmup=1, refresh_every=100)
  new, _, state = _one_step(tx, params, loss)
  assert float(state.eigvals[0]) == pytest.approx(-2.0, rel=1e-8)
  ratio = _components(new["x"], xstar, q, [neg]) / _components(params["x"], xstar, q, [neg])
  np.testing.assert_allclose(ratio, 2.0, rtol=1e-6)


@pytest.mark.parametrize("base", [optax.adam(0.01), optax.sgd(0.1, momentum=0.9), optax.sgd(0.1)],
                         ids=["adam", "hb", "sgd"])
def test_r0_bit_equal_to_base_and_before_warmup(base):
  """Spec 7.4: k=l=0 -> bit-equal every step; k>0 -> bit-equal for calls before W-1.

  Both transformations get the same gradients and params (precomputed along the base optimizer's
  trajectory), so only the update programs are compared.
  """
  params, loss, batch = softmax_problem()
  plain = _PlainBase(base)
  grad = jax.jit(jax.grad(loss))
  txs = {"base": plain, "r0": dho.fosi(base, loss, axis_name=None, k=0, l=0),
         "w5": dho.fosi(base, loss, axis_name=None, k=3, m=12, warmup=5, refresh_every=3)}
  states = {k: tx.init(params) for k, tx in txs.items()}
  steps = {k: jax.jit(lambda g, s, p, tx=tx: tx.update(g, s, p, batch=batch)) for k, tx in txs.items()}
  for i in range(6):
    g = grad(params, batch)
    out = {}
    for k in txs:
      u, states[k] = steps[k](g, states[k], params)
      out[k] = np.concatenate([np.ravel(a) for a in jax.tree.leaves(u)])
    np.testing.assert_array_equal(out["r0"], out["base"])
    if i < 4:
      np.testing.assert_array_equal(out["w5"], out["base"])
    else:                                  # call 4 = W-1 refreshes; from then on FOSI differs
      assert np.max(np.abs(out["w5"] - out["base"])) > 1e-4
    params = jax.tree.map(lambda p, u: p + u, params, _unflat(out["base"], params))


def _unflat(flat, like):
  return jax.flatten_util.ravel_pytree(like)[1](jnp.asarray(flat))


class _PlainBase:
  """The base optimizer on the flattened vector (the reference's semantics), batch ignored."""

  def __init__(self, base):
    self.base = base

  def init(self, params):
    return self.base.init(jax.flatten_util.ravel_pytree(params)[0])

  def update(self, g, state, params, batch=None):
    flat_p, unravel = jax.flatten_util.ravel_pytree(params)
    u, state = self.base.update(jax.flatten_util.ravel_pytree(g)[0], state, flat_p)
    return unravel(u), state


def test_refresh_schedule_w5_t3():
  """Spec 7.5: W=5, T=3 -> refreshes at 0-based calls 4, 7, 10 (non-quadratic loss)."""
  params, loss, batch = softmax_problem()
  tx = dho.fosi(optax.sgd(0.1), loss, axis_name=None, k=2, m=8, warmup=5, refresh_every=3)
  _, states, _ = run_single(tx, params, loss, batch, 12)
  changed = [i for i in range(12) if not np.array_equal(states[i + 1].eigvals, states[i].eigvals)]
  assert changed == [4, 7, 10]


def test_matches_numpy_reference_fosi(x64):
  """Spec 7.10 (second half): our unsharded FOSI = an independent numpy FOSI, same start vector."""
  params, loss, batch = softmax_problem(dtype=np.float64)
  params = jax.tree.map(lambda a: a.astype(jnp.float64), params)
  k, m, alpha, beta, lr = 3, 12, 0.1, 0.9, 0.1
  tx = dho.fosi_momentum(optax.sgd(lr), loss, axis_name=None, k=k, m=m, warmup=2, refresh_every=3, alpha=alpha)
  ps, states, us = run_single(tx, params, loss, batch, 5)
  flat0, unravel = jax.flatten_util.ravel_pytree(params)
  n = flat0.shape[0]
  v0 = np.asarray(jax.random.normal(jax.random.PRNGKey(0), (n,), jnp.float64))
  x = np.asarray(flat0)
  vel = np.zeros(n); vecs = np.zeros((k, n)); vals = np.ones(k); c = 1.0
  grad = lambda x: np.asarray(jax.flatten_util.ravel_pytree(jax.grad(loss)(unravel(x), batch))[0])
  for call in range(5):
    if call + 1 >= 2 and (call + 1 - 2) % 3 == 0:
      hv = lambda v: np.asarray(dho.hvp(loss, unravel(jnp.asarray(x)), batch, jnp.asarray(v)))
      t, basis = numpy_lanczos(hv, v0, m)
      th, s = np.linalg.eigh(t)
      vals, vecs = th[-k:], s[:, -k:].T @ basis
      c = float(np.clip(abs(vals[-1]) / abs(vals[0]), 1.0, 3.0))
    if call < 1:
      vecs_used, vals_used = np.zeros((k, n)), np.ones(k)
    else:
      vecs_used, vals_used = vecs, vals
    u, vel = numpy_fosi_step(grad(x), vel, vecs_used, vals_used, lambda g2: -lr * g2, alpha,
                             c if call >= 1 else 1.0, "heavy_ball", beta)
    np.testing.assert_allclose(np.asarray(jax.flatten_util.ravel_pytree(us[call])[0]), u, atol=1e-9)
    x = x + u


def test_compiles_once_and_state_stable():
  """Spec 7.12: one compiled step across refresh and plain calls; structure/dtypes unchanged."""
  params, loss, batch = softmax_problem()
  traces = []

  def counting_loss(p, b):
    traces.append(1)
    return loss(p, b)
  tx = dho.fosi(optax.adam(0.01), counting_loss, axis_name=None, k=2, m=8, warmup=2, refresh_every=2)
  state = tx.init(params)
  step = jax.jit(lambda g, s, p: tx.update(g, s, p, batch=batch))
  s0 = state
  for _ in range(5):
    g = jax.grad(loss)(params, batch)
    u, state = step(g, state, params)
    params = optax.apply_updates(params, u)
    assert jax.tree.structure(state) == jax.tree.structure(s0)
    assert [(a.shape, a.dtype) for a in jax.tree.leaves(state)] == [(a.shape, a.dtype) for a in jax.tree.leaves(s0)]
  assert step._cache_size() == 1
  assert len(traces) == 1                 # traced once (inside the refresh branch)
  assert "callback" not in step.lower(g, state, params).as_text()


def test_bad_input_errors():
  params, loss, batch = softmax_problem()         # n = 65
  base = optax.sgd(0.1)
  with pytest.raises(ValueError, match="k \\+ l = 70 exceeds"):
    dho.fosi(base, loss, axis_name=None, k=60, l=10, m=80).init(params)
  with pytest.raises(ValueError, match="m \\(Lanczos iterations\\) must be >= k \\+ l"):
    dho.fosi(base, loss, axis_name=None, k=5, l=2, m=6)
  with pytest.raises(ValueError, match="refresh_every"):
    dho.fosi(base, loss, axis_name=None, refresh_every=0)
  with pytest.raises(ValueError, match="momentum"):
    dho.fosi(base, loss, axis_name=None, momentum="adamish")
  with pytest.raises(ValueError, match="curvature batch"):
    tx = dho.fosi(base, loss, axis_name=None, k=2, m=8)
    tx.update(jax.grad(loss)(params, batch), tx.init(params), params)
  with pytest.raises(ValueError, match="num_shards"):
    dho.dho2(base, loss, num_shards=4, axis_name=None)
  with pytest.raises(ValueError, match="curvature_delay"):
    dho.dho2(base, loss, refresh_every=4, curvature_delay=4)
  with pytest.raises(ValueError, match="admm"):
    dho.dho2(base, loss, admm="consensus-ish")


@pytest.mark.parametrize("make", [dho.fosi, dho.fosi_adam, lambda b, f: dho.dho2(b, f, num_shards=1),
                                  lambda b, f: dho.consensus_admm(b, f, admm_rho=1.0, admm_period=2, num_shards=1)],
                         ids=["fosi", "fosi_adam", "dho2", "consensus_admm"])
def test_axis_default_is_data_and_unbound_axis_is_named(make):
  """Issue 12 §4: every constructor defaults to axis_name="data"; its update outside shard_map
  names the axis and the fix (axis_name=None) instead of JAX's unbound-axis NameError."""
  params, loss, batch = softmax_problem()
  tx = make(optax.sgd(0.1), loss)
  with pytest.raises(ValueError, match="axis_name='data' is not a mesh axis here.*axis_name=None"):
    tx.update(jax.grad(loss)(params, batch), tx.init(params), params, batch=batch)
