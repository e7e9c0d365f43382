"""vr_prox algorithms against independent references (float64, breast_cancer problem B of the spec).

Problem B: X = normalize(StandardScaler(breast_cancer)) (569 x 30, unit rows), y = +-1, no
intercept, P(w) = mean log(1 + exp(-y a.w)) + l1 |w|_1 + (l2/2)|w|^2 with l1 = 3e-3, l2 = 1e-2.
Reference optimum: sklearn LogisticRegression(saga, C = 1/(n (l1 + l2)), l1_ratio = l1/(l1+l2)).
"""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax import lax
from jax.sharding import AxisType

import vr_prox
from common.comm import collective_bytes
from common.references import breast_cancer_elastic_net

L1, L2 = 3e-3, 1e-2
K = 8


@pytest.fixture(autouse=True)
def _x64():
  with jax.enable_x64(True):  # float64 locally (the library never flips global config)
    yield


@pytest.fixture(scope="module")
def problem():
  x, y, w_star = breast_cancer_elastic_net(L1, L2)
  p_star = _objective_np(x, y, w_star)
  assert abs(p_star - 0.306716049462772) < 1e-12  # the spec's agreed value (FISTA, saga)
  return x, y, w_star, p_star


def _objective_np(x, y, w, l1=L1, l2=L2):
  return np.mean(np.logaddexp(0, -y * (x @ w))) + l1 * np.abs(w).sum() + 0.5 * l2 * w @ w


def _grad_np(x, y, w):
  """Mean logistic gradient, written out by hand (independent of jax.grad)."""
  s = -y / (1 + np.exp(y * (x @ w)))
  return x.T @ s / len(y)


def ex_loss(p, data):
  a, b = data
  return jnp.logaddexp(0, -b * (a @ p))


def _mesh(k=K):
  return jax.make_mesh((k,), ("data",), axis_types=(AxisType.Auto,), devices=jax.devices()[:k])


def _shard(x, y, parts):
  """Padded equal-length shards (padding at the end of each), flattened for P('data')."""
  rows = max(len(p) for p in parts)
  k, dim = len(parts), x.shape[1]
  xs, ys, ms = np.zeros((k, rows, dim)), np.zeros((k, rows)), np.zeros((k, rows))
  for i, idx in enumerate(parts):
    xs[i, :len(idx)], ys[i, :len(idx)], ms[i, :len(idx)] = x[idx], y[idx], 1
  return (jnp.asarray(xs.reshape(-1, dim)), jnp.asarray(ys.reshape(-1))), jnp.asarray(ms.reshape(-1))


def _run(tx, x, y, epochs, *, k=K, vr=True, rounds=None, parts=None):
  """Runs the round model; returns the params after every epoch."""
  n, dim = x.shape
  parts = parts or np.array_split(np.arange(n), k)
  data, mask = _shard(x, y, parts)
  rounds = rounds or n // k
  ep = vr_prox.sharded_epoch(ex_loss, tx, _mesh(k), rounds=rounds, variance_reduced=vr)
  p, s, key, out = jnp.zeros(dim), tx.init(jnp.zeros(dim)), jax.random.PRNGKey(0), []
  for _ in range(epochs):
    p, s = ep(p, s, data, mask, key)
    out.append(np.asarray(jax.block_until_ready(p)))
  return out


def _gap(problem, w):
  x, y, _, p_star = problem
  return (_objective_np(x, y, w) - p_star) / p_star


def _support(w, tol=0.0):
  return set(np.flatnonzero(np.abs(w) > tol).tolist())


# ----------------------------------------------------------------------------- exactness
def test_k1_dap_tap_proxsvrg_trajectories_equal_numpy_reference(problem):
  """K = 1, tau = 0: dap_svrg == tap_svrg == prox_svrg == a hand-written ProxSVRG (1e-12 rel)."""
  x, y, _, _ = problem
  n, dim = x.shape
  epochs, lr = 3, 1.0
  prox = vr_prox.prox_elastic_net(L1, L2)
  dap = _run(vr_prox.dap_svrg(lr, prox), x, y, epochs, k=1, rounds=n)
  tap = _run(vr_prox.tap_svrg(lr, prox), x, y, epochs, k=1, rounds=n)
  tx = vr_prox.prox_svrg(lr, prox)
  ep = jax.jit(vr_prox.epoch_fn(ex_loss, tx, rounds=n, axis_name=None))
  p, s, single = jnp.zeros(dim), tx.init(jnp.zeros(dim)), []
  for _ in range(epochs):
    p, s = ep(p, s, (jnp.asarray(x), jnp.asarray(y)), jnp.ones(n), jax.random.PRNGKey(0))
    single.append(np.asarray(p))
  # Xiao-Zhang Alg. 1 in numpy on the same index sequence (last-iterate snapshot).
  # Sample t draws randint(fold_in(fold_in(key, t), 0)); all n·epochs draws in one program (op by op: ~10 s).
  key, w, ref, t = jax.random.PRNGKey(0), np.zeros(dim), [], 0
  draws = np.asarray(jax.jit(jax.vmap(lambda t: jax.random.randint(
      jax.random.fold_in(jax.random.fold_in(key, t), 0), (1,), 0, n)[0]))(jnp.arange(epochs * n)))
  for _ in range(epochs):
    snap, mu = w.copy(), _grad_np(x, y, w)
    for _ in range(n):
      i = int(draws[t])
      v = _grad_np(x[i:i + 1], y[i:i + 1], w) - _grad_np(x[i:i + 1], y[i:i + 1], snap) + mu
      z = w - lr * v
      w = np.sign(z) * np.maximum(np.abs(z) - lr * L1, 0) / (1 + lr * L2)
      t += 1
    ref.append(w.copy())
  for a, b, c, r in zip(dap, tap, single, ref):
    for got in (a, b, c):
      assert np.linalg.norm(got - r) <= 1e-12 * np.linalg.norm(r)
      assert _support(got) == _support(r)


def test_full_gradient_and_objective_uneven_padded_shards(problem):
  x, y, _, _ = problem
  n, dim = x.shape
  sizes = [10, 30, 50, 70, 90, 100, 110, 109]
  parts = np.split(np.arange(n), np.cumsum(sizes)[:-1])
  data, mask = _shard(x, y, parts)
  w = np.random.default_rng(1).normal(size=dim)
  prox = vr_prox.prox_elastic_net(L1, L2)

  def body(p, data, mask):
    mu, count = vr_prox.full_gradient(ex_loss, p, data, mask, "data")
    return mu, count, vr_prox.objective(ex_loss, prox, p, data, mask, "data")

  f = jax.jit(jax.shard_map(body, mesh=_mesh(), in_specs=(jax.P(), jax.P("data"), jax.P("data")),
                            out_specs=(jax.P(), jax.P(), jax.P())))
  mu, count, obj = f(jnp.asarray(w), data, mask)
  ref = _grad_np(x, y, w)
  assert float(count) == n
  assert np.linalg.norm(np.asarray(mu) - ref) <= 1e-14 * np.linalg.norm(ref)
  assert abs(float(obj) - _objective_np(x, y, w)) <= 1e-14 * _objective_np(x, y, w)
  # the mean of shard means is a different (wrong) quantity: the check above can fail
  naive = np.mean([_grad_np(x[p], y[p], w) for p in parts], axis=0)
  assert np.linalg.norm(naive - ref) > 1e-3 * np.linalg.norm(ref)


def test_vr_gradient_unbiased_with_uneven_shards(problem):
  """(1/K) sum_k mean_{i in shard k} v_k(i) = grad f(x) exactly; fails without the shard weights.

  With prox_none and theta = 1 the DAP update is -lr sum_k v_k, and v_k is affine in the
  minibatch, so feeding each device its whole shard enumerates every sample at once.
  """
  x, y, _, _ = problem
  n, dim = x.shape
  sizes = [10, 30, 50, 70, 90, 100, 110, 109]
  parts = np.split(np.arange(n), np.cumsum(sizes)[:-1])
  data, mask = _shard(x, y, parts)
  rng = np.random.default_rng(2)
  snap, w, lr = rng.normal(size=dim), rng.normal(size=dim), 0.5
  tx = vr_prox.dap_svrg(lr, vr_prox.prox_none())

  def local_mean_grad(p, data, mask):
    return jax.grad(lambda q: jnp.sum(ex_loss(q, data) * mask) / jnp.sum(mask))(vr_prox.to_varying(p, "data"))

  def body(w, snap, data, mask, weighted):
    mu, count = vr_prox.full_gradient(ex_loss, snap, data, mask, "data")
    state = vr_prox.refresh(tx.init(w), snap, mu, count)
    state = state._replace(history=w[None])  # the read (delay 0) is w
    extra = {"local_count": jnp.sum(mask)} if weighted else {}
    upd, _ = tx.update(local_mean_grad(w, data, mask), state, w,
                       snapshot_grads=local_mean_grad(snap, data, mask), **extra)
    return upd

  outs = []
  for weighted in (True, False):
    f = jax.jit(jax.shard_map(lambda *a: body(*a, weighted), mesh=_mesh(),
                              in_specs=(jax.P(), jax.P(), jax.P("data"), jax.P("data")), out_specs=jax.P()))
    outs.append(-np.asarray(f(jnp.asarray(w), jnp.asarray(snap), data, mask)) / (lr * K))
  ref = _grad_np(x, y, w)
  assert np.linalg.norm(outs[0] - ref) <= 1e-14 * np.linalg.norm(ref)
  assert np.linalg.norm(outs[1] - ref) > 1e-3 * np.linalg.norm(ref)


def test_state_history_and_reads_never_cross_snapshot():
  """Spec §5.9: the buffer holds the params each update received (bitwise); a read d rounds back is
  the version passed d rounds ago, delay 0 is the caller's params, and no read crosses a refresh."""
  tx = vr_prox.dap_svrg(0.1, vr_prox.prox_l1(0.01), axis_name=None, max_delay=3, delay_schedule="fixed")
  params = jnp.arange(4.0)
  state = vr_prox.refresh(tx.init(params), params, jnp.ones(4), 10)
  versions = []
  for r in range(6):
    d = min(r, 3)
    assert int(vr_prox.read_delay(state, None)) == d
    read = vr_prox.read_params(state, params, None)
    assert np.array_equal(np.asarray(read), np.asarray(versions[-d] if d else params))  # versions[-d] = x_{r-d}
    versions.append(params)
    upd, state = tx.update(read * 0.5, state, params, snapshot_grads=jnp.zeros(4))
    assert np.array_equal(np.asarray(state.history[(state.head - 1) % 4]), np.asarray(params))  # bitwise
    params = optax.apply_updates(params, upd)
  state = vr_prox.refresh(state, params, jnp.ones(4), 10)
  assert int(vr_prox.read_delay(state, None)) == 0
  np.testing.assert_array_equal(np.asarray(vr_prox.read_params(state, params, None)), np.asarray(params))
  with pytest.raises(TypeError, match="needs params"):
    vr_prox.read_params(state, None)


# ----------------------------------------------------------------------------- optimum
def test_prox_svrg_reaches_sklearn_optimum_at_linear_rate(problem):
  x, y, w_star, _ = problem
  n, dim = x.shape
  tx = vr_prox.prox_svrg(1.0, vr_prox.prox_elastic_net(L1, L2))
  ep = jax.jit(vr_prox.epoch_fn(ex_loss, tx, rounds=n, axis_name=None))
  p, s, gaps = jnp.zeros(dim), tx.init(jnp.zeros(dim)), []
  for _ in range(8):
    p, s = ep(p, s, (jnp.asarray(x), jnp.asarray(y)), jnp.ones(n), jax.random.PRNGKey(0))
    gaps.append(_gap(problem, np.asarray(p)))
  assert gaps[-1] <= 1e-9, gaps
  assert _support(np.asarray(p)) == _support(w_star) and len(_support(w_star)) == 25
  slope = (np.log10(gaps[5]) - np.log10(gaps[1])) / 4  # epochs 1..5 (0-based indices 1..5)
  assert slope <= -1.0, (slope, gaps)


@pytest.mark.parametrize("max_delay,schedule", [(3, "uniform"), (7, "uniform"), (7, "cyclic")])
def test_tap_svrg_k8_stale_reaches_optimum(problem, max_delay, schedule):
  _, _, w_star, _ = problem
  tx = vr_prox.tap_svrg(1.0, vr_prox.prox_elastic_net(L1, L2), max_delay=max_delay, delay_schedule=schedule)
  traj = _run(tx, problem[0], problem[1], 12)
  assert _gap(problem, traj[-1]) <= 1e-9, [_gap(problem, w) for w in traj]
  assert _support(traj[-1]) == _support(w_star)  # raw iterate: TAP zeros are exact


def test_relaxed_dap_svrg_reaches_optimum(problem):
  x, y, w_star, _ = problem
  theta = 1 / 32  # = 1/(K (D + 1)) for K = 8, D = 3
  prox = vr_prox.prox_elastic_net(L1, L2)
  tx = vr_prox.dap_svrg(0.5 / theta, prox, max_delay=3, delay_schedule="fixed", relaxation=theta)
  traj = _run(tx, x, y, 15)
  w = traj[-1]
  assert _gap(problem, w) <= 1e-9, [_gap(problem, v) for v in traj]
  clean = np.asarray(vr_prox.prox_cleanup(jnp.asarray(w), jnp.asarray(_grad_np(x, y, w)), prox, 1.0))
  assert _support(clean) == _support(w_star)
  assert _support(w, 1e-12) == _support(w_star)


def test_faithful_dap_svrg_stalls_under_persistent_staleness(problem):
  """Paper rule (theta = 1): in the round model staleness is >= 1 for K = 8, and the dead-zone
  recursion x <- x - x_stale is unstable (spec §2.5). The same run with theta = 1/K converges,
  so the stall is the server rule, and the server really adds (does not average)."""
  x, y, w_star, _ = problem
  prox = vr_prox.prox_elastic_net(L1, L2)
  faithful = _run(vr_prox.dap_svrg(1 / 8, prox), x, y, 30)
  gaps = [_gap(problem, w) for w in faithful]
  assert min(gaps[-5:]) >= 1e-5, gaps
  assert len(_support(faithful[-1], 1e-12)) > len(_support(w_star))  # dense iterate
  relaxed = _run(vr_prox.dap_svrg(1.0, prox, relaxation=1 / 8), x, y, 15)
  assert _gap(problem, relaxed[-1]) <= 1e-9


@pytest.mark.parametrize("which", ["dap_sgd", "tap_sgd"])
def test_no_variance_reduction_does_not_reach_1e6(problem, which):
  x, y, _, _ = problem
  prox = vr_prox.prox_elastic_net(L1, L2)
  tx = (vr_prox.dap_sgd(1 / 8, prox, relaxation=1 / 8) if which == "dap_sgd" else vr_prox.tap_sgd(0.1, prox))
  traj = _run(tx, x, y, 25, vr=False)
  gaps = [_gap(problem, w) for w in traj]
  assert min(gaps) > 1e-6 and np.isfinite(gaps[-1]), gaps


# ----------------------------------------------------------------------------- communication
@pytest.mark.parametrize("server", ["add", "prox"])
def test_epoch_bytes_equal_analytic(problem, server):
  """One epoch = full-gradient psum (d floats + count) + one d-float exchange per round."""
  x, y, _, _ = problem
  n, dim = x.shape
  rounds = 7
  data, mask = _shard(x, y, np.array_split(np.arange(n), K))
  tx = vr_prox.dap_svrg(0.1, vr_prox.prox_l1(L1), server=server, max_delay=2)
  ep = vr_prox.sharded_epoch(ex_loss, tx, _mesh(), rounds=rounds)
  p = jnp.zeros(dim)
  report = collective_bytes(ep.lower(p, tx.init(p), data, mask, jax.random.PRNGKey(0)).compile())
  per_round = vr_prox.payload_bytes(p)
  assert report.payload == (rounds + 1) * per_round + 8, report.summary()
  kind = "all-reduce" if server == "add" else "all-gather"
  assert sum(c.count for c in report.of_kind(kind) if c.elements >= dim) >= rounds


# ----------------------------------------------------------------------------- bad input
def test_bad_input_errors():
  prox = vr_prox.prox_l1(0.1)
  with pytest.raises(ValueError, match="max_delay"):
    vr_prox.dap_svrg(0.1, prox, max_delay=-1)
  with pytest.raises(ValueError, match="delay_schedule"):
    vr_prox.dap_svrg(0.1, prox, delay_schedule="poisson")
  with pytest.raises(ValueError, match="prox"):
    vr_prox.dap_svrg(0.1, "l1")
  with pytest.raises(ValueError, match="learning_rate"):
    vr_prox.tap_svrg(-0.1, prox)
  with pytest.raises(ValueError, match="relaxation"):
    vr_prox.dap_svrg(0.1, prox, relaxation=1.5)
  with pytest.raises(ValueError, match="server"):
    vr_prox.dap_svrg(0.1, prox, server="mean")
  with pytest.raises(ValueError, match="delay_trace"):
    vr_prox.dap_svrg(0.1, prox, max_delay=2, delay_schedule="trace", delay_trace=np.full((4, 8), 3))
  tx = vr_prox.dap_svrg(0.1, prox, axis_name=None)
  with pytest.raises(ValueError, match="snapshot_grads"):
    tx.update(jnp.zeros(3), tx.init(jnp.zeros(3)), jnp.zeros(3))


# ----------------------------------------------------------------------------- serial model
@pytest.mark.parametrize("label,kw,converges", [
    ("dap_fixed7_theta1", dict(server="add", delay_schedule="fixed", learning_rate=1.0), False),
    ("dap_uniform7_theta1", dict(server="add", delay_schedule="uniform", learning_rate=1.0), True),
    ("tap_fixed7", dict(server="prox", delay_schedule="fixed", learning_rate=1.0), True),
    ("dap_fixed7_theta1/8", dict(server="add", delay_schedule="fixed", learning_rate=8.0, relaxation=1 / 8), True),
])
def test_serial_model_dead_zone(problem, label, kw, converges):
  """Update-level delays (spec §2.5): a fixed delay tau = 7 makes the paper's rule stall
  (x <- x - x_{t-7} on zero coordinates has a root of modulus 1.166); uniform delays on {0..7},
  the server prox, and theta = 1/(tau+1) all converge to the sklearn optimum."""
  x, y, w_star, _ = problem
  n = len(y)
  data, mask = _shard(x, y, np.array_split(np.arange(n), K))
  prox = vr_prox.prox_elastic_net(L1, L2)
  f = jax.jit(lambda p, key: vr_prox.serial_epoch(ex_loss, prox, p, data, mask, key, num_workers=K,
                                                  rounds=n // K, max_delay=7, **kw))
  p, gaps = jnp.zeros(x.shape[1]), []
  for e in range(12):
    p = f(p, jax.random.fold_in(jax.random.PRNGKey(0), e))
    gaps.append(_gap(problem, np.asarray(p)))
  if converges:
    assert gaps[-1] <= 1e-9, (label, gaps)
    assert _support(np.asarray(p), 1e-12) == _support(w_star)
  else:
    assert min(gaps[-4:]) >= 1e-5, (label, gaps)
    assert len(_support(np.asarray(p), 1e-12)) > len(_support(w_star))


def test_replayed_trace_equals_the_schedule_it_records(problem):
  """A delay trace replaying the cyclic schedule (worker k reads k mod (D+1) rounds back) gives
  the same run bit for bit; a trace of all-D equals the fixed schedule."""
  x, y, _, _ = problem
  prox = vr_prox.prox_elastic_net(L1, L2)
  d = 3
  cyclic_trace = np.tile(np.arange(K) % (d + 1), (5, 1))
  runs = [_run(vr_prox.tap_svrg(1.0, prox, max_delay=d, **kw), x, y, 2) for kw in (
      dict(delay_schedule="cyclic"), dict(delay_schedule="trace", delay_trace=cyclic_trace),
      dict(delay_schedule="fixed"), dict(delay_schedule="trace", delay_trace=np.full((3, K), d)))]
  np.testing.assert_array_equal(runs[0][-1], runs[1][-1])
  np.testing.assert_array_equal(runs[2][-1], runs[3][-1])
  assert not np.array_equal(runs[0][-1], runs[2][-1])


def test_uneven_shards_converge_to_the_global_optimum(problem):
  """End to end with uneven padded shards: the shard weights w_k = K n_k / n and the exact global
  full gradient keep the fixed point at P* (a mean of shard means would move it)."""
  x, y, w_star, _ = problem
  n = len(y)
  sizes = [10, 30, 50, 70, 90, 100, 110, 109]
  parts = list(np.split(np.arange(n), np.cumsum(sizes)[:-1]))
  tx = vr_prox.tap_svrg(0.5, vr_prox.prox_elastic_net(L1, L2), max_delay=1)
  traj = _run(tx, x, y, 14, parts=parts)
  assert _gap(problem, traj[-1]) <= 1e-9, [_gap(problem, w) for w in traj]
  assert _support(traj[-1]) == _support(w_star)


def _digits(l1, l2):
  """Spec problems C/D: X = normalize(StandardScaler(digits)) (1797 x 64), y = +1 iff target >= 5;
  returns (x, y, w*) with w* from sklearn saga at C = 1/(n (l1 + l2)), l1_ratio = l1/(l1 + l2)."""
  from sklearn.datasets import load_digits
  from sklearn.linear_model import LogisticRegression
  from sklearn.preprocessing import StandardScaler, normalize
  d = load_digits()
  x = normalize(StandardScaler().fit_transform(d.data))
  y = np.where(d.target >= 5, 1.0, -1.0)
  clf = LogisticRegression(C=1 / (len(y) * (l1 + l2)), l1_ratio=l1 / (l1 + l2), solver="saga",
                           fit_intercept=False, tol=1e-12, max_iter=200000).fit(x, y)
  return x, y, clf.coef_.ravel()


def test_problem_c_digits_l1_matches_spec_and_sklearn():
  """Problem C of the spec: digits 1797 x 64, y = +1 iff target >= 5, l1 = 3e-3 (pure l1, not
  strongly convex). ProxSVRG and TAP (K = 8, D = 3 uniform) reach sklearn's P* to 1e-9 with its
  18-coordinate support."""
  l1 = 3e-3
  x, y, w_star = _digits(l1, 0.0)
  n, dim = x.shape
  obj = lambda w: _objective_np(x, y, w, l1=l1, l2=0.0)  # noqa: E731
  p_star = obj(w_star)
  assert abs(p_star - 0.446678029277122) <= 1e-9 * p_star
  assert _support(w_star) == {5, 6, 10, 12, 18, 20, 26, 27, 29, 30, 33, 34, 35, 37, 46, 52, 60, 63}
  prox = vr_prox.prox_l1(l1)
  tx = vr_prox.prox_svrg(1.0, prox)
  ep = jax.jit(vr_prox.epoch_fn(ex_loss, tx, rounds=n, axis_name=None))
  p, s = jnp.zeros(dim), tx.init(jnp.zeros(dim))
  for _ in range(12):
    p, s = ep(p, s, (jnp.asarray(x), jnp.asarray(y)), jnp.ones(n), jax.random.PRNGKey(0))
  assert (obj(np.asarray(p)) - p_star) / p_star <= 1e-9
  assert _support(np.asarray(p)) == _support(w_star)
  traj = _run(vr_prox.tap_svrg(1.0, prox, max_delay=3), x, y, 12)
  assert (obj(traj[-1]) - p_star) / p_star <= 1e-9
  assert _support(traj[-1]) == _support(w_star)


# ----------------------------------------------------------------------------- event model
def test_event_trace_homogeneous_and_heterogeneous():
  homo = vr_prox.event_trace(K, 10 * K)
  np.testing.assert_array_equal(homo.worker, np.tile(np.arange(K), 10))  # round robin
  np.testing.assert_array_equal(homo.delay[K:], K - 1)                     # fixed delay K - 1
  np.testing.assert_array_equal(homo.delay[:K], np.arange(K))
  het = vr_prox.event_trace(K, 400, speeds=np.linspace(1, 2, K), sigma=0.3, server_time=0.01, seed=3)
  assert np.all(np.diff(het.time) >= 0.01 - 1e-12)  # one update per service time at most
  assert len(np.unique(het.delay[K:])) > 3 and het.delay.max() >= K
  # delay = updates since the worker's previous message (its read), recomputed independently
  last = {}
  for t, (k, d) in enumerate(zip(het.worker, het.delay)):
    assert d == t - (last[k] + 1 if k in last else 0)
    last[k] = t
  again = vr_prox.event_trace(K, 400, speeds=np.linspace(1, 2, K), sigma=0.3, server_time=0.01, seed=3)
  np.testing.assert_array_equal(het.delay, again.delay)
  with pytest.raises(ValueError, match="speeds"):
    vr_prox.event_trace(K, 10, speeds=[1.0, 2.0])


def test_event_trace_replay_homogeneous_dap_stalls_tap_converges(problem):
  """Homogeneous workers: round-robin arrivals with delay K - 1 = 7 (spec §4.1c); replayed by the
  serial model, the paper's rule stalls and TAP converges to P*."""
  x, y, w_star, _ = problem
  n = len(y)
  data, mask = _shard(x, y, np.array_split(np.arange(n), K))
  rounds = n // K
  tr = vr_prox.event_trace(K, rounds * K)
  prox = vr_prox.prox_elastic_net(L1, L2)
  gaps = {}
  for server in ("add", "prox"):
    f = jax.jit(lambda p, key: vr_prox.serial_epoch(
        ex_loss, prox, p, data, mask, key, learning_rate=1.0, num_workers=K, rounds=rounds, server=server,
        max_delay=int(tr.delay.max()), delay_schedule="trace", delay_trace=tr.delay, worker_trace=tr.worker))
    p = jnp.zeros(x.shape[1])
    for e in range(10):
      p = f(p, jax.random.fold_in(jax.random.PRNGKey(0), e))
    gaps[server] = _gap(problem, np.asarray(p))
  assert gaps["add"] >= 1e-5 and gaps["prox"] <= 1e-9, gaps


def test_averaged_snapshot_variant_converges(problem):
  """snapshot="average" ([XZ] Thm 3.1: x~_s = mean of the epoch's iterates) also reaches P*."""
  x, y, w_star, _ = problem
  n, dim = x.shape
  tx = vr_prox.prox_svrg(1.0, vr_prox.prox_elastic_net(L1, L2))
  ep = jax.jit(vr_prox.epoch_fn(ex_loss, tx, rounds=n, axis_name=None, snapshot="average"))
  p, s, gaps = jnp.zeros(dim), tx.init(jnp.zeros(dim)), []
  for _ in range(14):
    p, s = ep(p, s, (jnp.asarray(x), jnp.asarray(y)), jnp.ones(n), jax.random.PRNGKey(0))
    gaps.append(_gap(problem, np.asarray(p)))
  assert gaps[-1] <= 1e-9, gaps
  assert all(b < a for a, b in zip(gaps[:6], gaps[1:7]))  # monotone early decrease
  with pytest.raises(ValueError, match="snapshot"):
    vr_prox.epoch_fn(ex_loss, tx, rounds=n, axis_name=None, snapshot="best")


def test_tap_per_round_and_lr_schedule(problem):
  """tap_prox="per_round" (the authors' grouped server, one prox of the summed step) equals the
  per-arrival prox when the prox is linear (none), and differs with l1; a learning-rate schedule
  (callable of the round count) is evaluated per round: a constant schedule equals the constant."""
  x, y, _, _ = problem
  none, l1 = vr_prox.prox_none(), vr_prox.prox_l1(0.05)
  runs = {}
  for name, prox in (("none", none), ("l1", l1)):
    for mode in ("per_update", "per_round"):
      runs[name, mode] = _run(vr_prox.tap_svrg(0.3, prox, tap_prox=mode), x, y, 1, rounds=10)[-1]
  np.testing.assert_allclose(runs["none", "per_round"], runs["none", "per_update"], rtol=1e-12, atol=1e-15)
  assert np.max(np.abs(runs["l1", "per_round"] - runs["l1", "per_update"])) > 1e-4
  const = _run(vr_prox.dap_sgd(0.3, l1, relaxation=1 / 8), x, y, 1, rounds=10, vr=False)[-1]
  sched = _run(vr_prox.dap_sgd(lambda count: 0.3 + 0.0 * count, l1, relaxation=1 / 8), x, y, 1, rounds=10,
               vr=False)[-1]
  np.testing.assert_allclose(sched, const, rtol=1e-14)
  decay = _run(vr_prox.dap_sgd(lambda count: 0.3 / (1.0 + count), l1, relaxation=1 / 8), x, y, 1, rounds=10,
               vr=False)[-1]
  assert not np.allclose(decay, const)


# ----------------------------------------------------------------------------- issue 11: grouped TAP prox
@pytest.mark.parametrize("tap_prox", ["per_update", "per_round"])
def test_tap_grouped_prox_minimizes_f_plus_h_in_1d(tap_prox):
  """Spec §4.1a 1-D check: K = 8 workers all with f = (x - 1)^2 / 2, h = |x| / 2, gamma = 0.1.
  The minimiser of f + h is the closed form x* = 1 - 1/2 = 0.5 (0 in x - 1 + sign(x)/2). One prox
  per round must be prox of K gamma h after the K summed steps; prox of gamma h stops at the
  minimiser of f + h/K, 1 - 1/16 = 0.9375."""
  tx = vr_prox.tap_sgd(0.1, vr_prox.prox_l1(0.5), tap_prox=tap_prox)

  def body(x, state):
    def one(carry, _):
      x, state = carry
      g = vr_prox.to_varying(vr_prox.read_params(state, x), "data") - 1.0  # grad f at the read, per worker
      upd, state = tx.update(g, state, x)
      return (optax.apply_updates(x, upd), state), None

    return lax.scan(one, (x, state), None, length=80)[0][0]

  f = jax.jit(jax.shard_map(body, mesh=_mesh(), in_specs=(jax.P(), jax.P()), out_specs=jax.P()))
  x = np.asarray(jax.block_until_ready(f(jnp.zeros(1), tx.init(jnp.zeros(1)))))
  np.testing.assert_allclose(x, [0.5], rtol=1e-12)


@pytest.mark.parametrize("max_delay", [0, 3])
def test_tap_per_round_reaches_the_sklearn_optimum(problem, max_delay):
  """tap_prox="per_round" on problem B (K = 8, gamma = 1/8, so K gamma = 1 as ProxSVRG's step)
  reaches sklearn's P* to 1e-9 with its exact support: the grouped prox minimises f + h."""
  _, _, w_star, _ = problem
  tx = vr_prox.tap_svrg(1 / K, vr_prox.prox_elastic_net(L1, L2), max_delay=max_delay, tap_prox="per_round")
  traj = _run(tx, problem[0], problem[1], 12)
  assert _gap(problem, traj[-1]) <= 1e-9, [_gap(problem, w) for w in traj]
  assert _support(traj[-1]) == _support(w_star)


# ----------------------------------------------------------------------------- issue 11: shard weights
DIGITS_SPLIT = [49, 99, 149, 199, 249, 299, 349, 404]  # spec §6: contiguous blocks of the sklearn order


@pytest.mark.parametrize("which", ["dap_sgd", "tap_sgd"])
def test_no_variance_reduction_weights_uneven_shards(which):
  """Without variance reduction the shard weights K n_k / n also hold: on problem D (digits,
  l1 = 1e-3, l2 = 1e-2) split 49, 99, ..., 404, DAP-SGD / TAP-SGD with a decaying step and 64
  rows per worker per round end within 1.5e-3 (relative) of sklearn's full-data P*
  (0.571278420498516, spec §6). The mean of shard means (weight 1) has its fixed point 7.1e-3
  above P* (numpy proximal gradient on the shard-mean objective), and runs end at 6e-3..8e-3."""
  l1, l2 = 1e-3, 1e-2
  x, y, w_star = _digits(l1, l2)
  n, dim = x.shape
  obj = lambda w: _objective_np(x, y, w, l1=l1, l2=l2)  # noqa: E731
  p_star = obj(w_star)
  assert abs(p_star - 0.571278420498516) <= 1e-9 * p_star
  parts = list(np.split(np.arange(n), np.cumsum(DIGITS_SPLIT)[:-1]))
  data, mask = _shard(x, y, parts)
  prox, rounds = vr_prox.prox_elastic_net(l1, l2), 200
  step = lambda count: 1.0 / (1.0 + count / rounds)  # noqa: E731
  tx = (vr_prox.dap_sgd(lambda c: K * step(c), prox, relaxation=1 / K) if which == "dap_sgd"
        else vr_prox.tap_sgd(step, prox))
  ep = vr_prox.sharded_epoch(ex_loss, tx, _mesh(), rounds=rounds, batch_size=64, variance_reduced=False)
  p, s, gaps = jnp.zeros(dim), tx.init(jnp.zeros(dim)), []
  for e in range(3):
    p, s = ep(p, s, data, mask, jax.random.PRNGKey(e))
    gaps.append((obj(np.asarray(jax.block_until_ready(p))) - p_star) / p_star)
  assert gaps[-1] <= 1.5e-3, gaps


def test_shard_weights_are_known_or_refused():
  """Every way of calling update either has n for K n_k / n or raises naming the missing value."""
  params = jnp.zeros(3)
  sgd = vr_prox.dap_sgd(0.1, vr_prox.prox_none(), axis_name=None)
  with pytest.raises(ValueError, match="num_rows"):
    sgd.update(jnp.ones(3), sgd.init(params), params, local_count=5)
  with pytest.raises(ValueError, match="local_count"):
    sgd.update(jnp.ones(3), sgd.init(params), params, num_rows=5)
  svrg = vr_prox.dap_svrg(0.1, vr_prox.prox_none(), axis_name=None)
  with pytest.raises(ValueError, match="num_rows"):
    vr_prox.refresh(svrg.init(params), params, jnp.zeros(3), None)
  with pytest.raises(TypeError, match="num_rows"):
    vr_prox.refresh(svrg.init(params), params, jnp.zeros(3))  # pylint: disable=no-value-for-parameter
  # one device, n_k = n: weight 1 from the extra arg and from the n that refresh stored
  upd, _ = sgd.update(jnp.ones(3), sgd.init(params), params, local_count=4, num_rows=4)
  np.testing.assert_array_equal(np.asarray(upd), -0.1 * np.ones(3))
  state = vr_prox.refresh(svrg.init(params), params, jnp.zeros(3), 4)
  upd, _ = svrg.update(jnp.ones(3), state, params, snapshot_grads=jnp.zeros(3), local_count=4)
  np.testing.assert_array_equal(np.asarray(upd), -0.1 * np.ones(3))
  # before any refresh the stored n is unknown: NaN, never a silent weight of 1
  upd, _ = svrg.update(jnp.ones(3), svrg.init(params), params, snapshot_grads=jnp.zeros(3), local_count=4)
  assert np.all(np.isnan(np.asarray(upd)))


# ----------------------------------------------------------------------------- issue 11 §3: post-processing
def _clip_np(u, max_norm):
  norm = np.linalg.norm(u)
  return u if norm <= max_norm else u * (max_norm / norm)


@pytest.mark.parametrize("which", ["dap_sgd", "dap_svrg", "tap_svrg"])
@pytest.mark.parametrize("max_delay", [0, 2])
def test_clip_after_the_transformation_reads_only_real_versions(which, max_delay):
  """``chain(tx, clip_by_global_norm(c))``: the server's versions are the clipped ones, so every read
  (delay 0 and stale) must be a params value the caller actually had. One row a, one worker,
  f(x) = sum_j h_j (x_j - a_j)^2 / 2 with unequal h (so the clipped direction depends on where the
  gradient is taken), prox_none, fixed delay D: x_{r+1} = x_r + clip(-gamma h (x_{r - min(D, r)} - a))
  in NumPy (with one row the VR gradient g(x) - g(x~) + mu is g(x): one reference for all three).
  Before the fix, ``update`` stored its own unclipped x + out as the next version, and round r read
  a point the server never had."""
  lr, clip, rounds = 0.5, 0.01, 6
  a, h = np.array([1.0, -2.0, 3.0]), np.array([1.0, 4.0, 0.25])
  make = {"dap_sgd": vr_prox.dap_sgd, "dap_svrg": vr_prox.dap_svrg, "tap_svrg": vr_prox.tap_svrg}[which]
  tx = optax.chain(make(lr, vr_prox.prox_none(), axis_name=None, max_delay=max_delay, delay_schedule="fixed"),
                   optax.clip_by_global_norm(clip))
  epoch = vr_prox.epoch_fn(lambda p, d: 0.5 * jnp.sum(h * (p - d) ** 2, axis=-1), tx, rounds=rounds,
                           axis_name=None, variance_reduced=which != "dap_sgd",
                           get_state=lambda s: s[0], set_state=lambda s, inner: (inner,) + tuple(s[1:]))
  x0 = np.zeros(3)
  got, _ = jax.jit(epoch)(jnp.asarray(x0), tx.init(jnp.asarray(x0)), jnp.asarray(a[None]), jnp.ones(1),
                          jax.random.PRNGKey(0))
  xs = [x0]
  for r in range(rounds):
    read = xs[r - min(max_delay, r)]
    xs.append(xs[r] + _clip_np(-lr * h * (read - a), clip))
  np.testing.assert_allclose(np.asarray(got), xs[-1], rtol=1e-12, atol=1e-15)
