"""dho2's base optimizer on coordinate slices (issue 11): its state is built from the parameters (2.5);
a base that is not coordinate-wise is refused, or run exactly on the full vector with replicated_base (2.6)."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import dho
from tests.test_dho_helpers import mesh, run_sharded, run_single, softmax_problem

# W = 3, T = 3: calls 0, 1 are plain base steps, the first refresh is at call 2, the second at call 5.
KW = dict(k=3, l=0, m=12, refresh_every=3, warmup=3, alpha=0.1, momentum="heavy_ball")
STEPS = 6
PARAM_BASES = {"schedule_free_sgd": lambda: optax.contrib.schedule_free_sgd(0.1, b1=0.9),
               "adam": lambda: optax.adam(0.01)}


def _rel(a, b):
  """||a - b|| / ||b|| over all leaves."""
  num = sum(float(jnp.sum((x - y) ** 2)) for x, y in zip(_leaves(a), _leaves(b)))
  den = sum(float(jnp.sum(y ** 2)) for y in _leaves(b))
  return np.sqrt(num / den)


def _leaves(tree):
  return [jnp.asarray(x, jnp.float32) for x in (tree["w"], tree["b"])]


@pytest.mark.parametrize("name", list(PARAM_BASES))
@pytest.mark.parametrize("p", [1, 8])
def test_base_state_built_from_params(name, p):
  """dho2 over p devices == fosi on one device for the first 6 updates (before and after the first
  refresh), f32, <= 1e-5 relative. schedule_free_sgd keeps z = params in its state, so a state
  built from zeros gives a different first update (issue 11, 2.5)."""
  params, loss, batch = softmax_problem(rows=64)
  ref_p, _, ref_u = run_single(dho.fosi(PARAM_BASES[name](), loss, axis_name=None, **KW), params, loss, batch, STEPS)
  ps, _, us, _ = run_sharded(dho.dho2(PARAM_BASES[name](), loss, num_shards=p, **KW), params, loss, batch,
                             STEPS, p)
  errs = [_rel(us[i], ref_u[i]) for i in range(STEPS)]
  assert max(errs) <= 1e-5, errs
  assert _rel(ps[-1], ref_p[-1]) <= 1e-5


def _clip_hb():
  return optax.chain(optax.clip_by_global_norm(0.05), optax.sgd(0.1, momentum=0.9))


def test_global_norm_base_refused_at_init():
  """Sliced over 8 devices, clip_by_global_norm would clip each slice by its own norm: init refuses,
  naming the fix (issue 11, 2.6)."""
  params, loss, _ = softmax_problem(rows=64)
  tx = dho.dho2(optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-3)), loss, num_shards=8, **KW)
  with pytest.raises(ValueError, match=r"not coordinate-wise.*reduce_sum.*replicated_base=True"):
    tx.init(params)


def test_replicated_base_global_norm_exact():
  """replicated_base=True: dho2 over 8 devices with clip_by_global_norm then heavy ball == fosi on one
  device, f32 <= 1e-5 relative on every update; the clip is active (unclipped fosi differs by > 1e-2)."""
  params, loss, batch = softmax_problem(rows=64)
  ref_p, _, ref_u = run_single(dho.fosi(_clip_hb(), loss, axis_name=None, **KW), params, loss, batch, STEPS)
  plain = dho.fosi(optax.sgd(0.1, momentum=0.9), loss, axis_name=None, **KW)
  _, _, plain_u = run_single(plain, params, loss, batch, STEPS)
  assert min(_rel(plain_u[i], ref_u[i]) for i in range(STEPS)) > 1e-2
  tx = dho.dho2(_clip_hb(), loss, num_shards=8, replicated_base=True, **KW)
  ps, ss, us, _ = run_sharded(tx, params, loss, batch, STEPS, 8)
  errs = [_rel(us[i], ref_u[i]) for i in range(STEPS)]
  assert max(errs) <= 1e-5, errs
  assert _rel(ps[-1], ref_p[-1]) <= 1e-5
  vectors = [x for x in jax.tree.leaves(ss[-1].fosi.base_state) if x.ndim]   # full n = 65 on every device
  assert vectors and {sh.data.shape for x in vectors for sh in x.addressable_shards} == {(65,)}


# ---- the static check against an independent numeric test of separability ----------------------
COORDINATEWISE = {
    "sgd": lambda: optax.sgd(0.1), "momentum": lambda: optax.sgd(0.1, momentum=0.9),
    "nesterov": lambda: optax.sgd(0.1, momentum=0.9, nesterov=True), "adam": lambda: optax.adam(1e-2),
    "adamw": lambda: optax.adamw(1e-2, weight_decay=1e-2), "lion": lambda: optax.lion(1e-3),
    "schedule_free_sgd": lambda: optax.contrib.schedule_free_sgd(0.1),
    "inject_hyperparams": lambda: optax.inject_hyperparams(optax.adam)(learning_rate=1e-2),
    "elementwise clip + adam": lambda: optax.chain(optax.clip(0.5), optax.adam(1e-2)),
    "MultiSteps(adam)": lambda: optax.MultiSteps(optax.adam(1e-2), 2).gradient_transformation(),
}
MIXING = {
    "clip_by_global_norm before adam": lambda: optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-2)),
    "clip_by_global_norm after adam": lambda: optax.chain(optax.adam(1e-2), optax.clip_by_global_norm(1e-3)),
    "lamb": lambda: optax.lamb(1e-2), "lars": lambda: optax.lars(1e-2),
    "adafactor": lambda: optax.adafactor(1e-2), "noisy_sgd": lambda: optax.noisy_sgd(0.1, key=0),
}


def _separable(make, steps=3, half=32):
  """Numerically: the base on the full vector == the base on each half separately (own states), for
  halves of very different scale, params and gradients scaled oppositely (so any global norm, norm
  ratio or RMS differs between the two halves)."""
  rng = np.random.default_rng(0)
  scales = np.concatenate([np.full(half, 1e2), np.full(half, 1e-3)]).astype(np.float32)
  x = jnp.asarray(rng.normal(size=2 * half).astype(np.float32) * scales)
  grads = [jnp.asarray(rng.normal(size=2 * half).astype(np.float32) * scales[::-1]) for _ in range(steps)]

  def run(x, gs):
    base = make()
    state = base.init(x)
    for g in gs:
      u, state = base.update(g, state, x)
      x = x + u
    return x
  full = run(x, grads)
  parts = jnp.concatenate([run(x[sl], [g[sl] for g in grads]) for sl in (slice(0, half), slice(half, None))])
  return bool(jnp.allclose(full, parts, rtol=1e-5, atol=1e-7))


@pytest.mark.parametrize("name", list(COORDINATEWISE))
def test_coordinatewise_bases_pass(name):
  assert _separable(COORDINATEWISE[name])
  assert dho.coordinatewise.violation(COORDINATEWISE[name]()) is None


@pytest.mark.parametrize("name", list(MIXING))
def test_mixing_bases_refused(name):
  assert not _separable(MIXING[name])
  assert dho.coordinatewise.violation(MIXING[name]()) is not None


def test_all_finite_gate_refused():
  """apply_if_finite skips the whole step if any entry is non-finite: a reduction over coordinates."""
  assert dho.coordinatewise.violation(optax.apply_if_finite(optax.adam(1e-2), 3)) == "reduce_and"


def test_curvature_basis_layouts():
  """dho.curvature_basis (what a refresh runs; benchmarks/dho.py measures its basis): over 8 devices the
  partitioned basis is each device's (m, ceil(n/P)) slice of the replicated (m, n) one, same tridiagonal."""
  params, loss, batch = softmax_problem(rows=64)
  m, p, n = 12, 8, 65

  def body(params, bx, by):
    out = [dho.curvature_basis(loss, params, (bx, by), m=m, axis_name="data", num_shards=p, partitioned=part)
           for part in (True, False)]
    return tuple(x for res in out for x in (res.tridiag[None], res.basis[None]))
  fn = jax.shard_map(body, mesh=mesh(p),
                     in_specs=(jax.P(), jax.P("data"), jax.P("data")), out_specs=jax.P("data"))
  t_part, v_part, t_rep, v_rep = jax.jit(fn)(params, *batch)
  s = -(-n // p)
  assert v_part.shape == (p, m, s) and v_rep.shape == (p, m, n)
  np.testing.assert_allclose(t_part[0], t_rep[0], atol=1e-5)
  slices = np.pad(np.asarray(v_rep[0]), ((0, 0), (0, p * s - n))).reshape(m, p, s).transpose(1, 0, 2)
  np.testing.assert_allclose(v_part, slices, atol=1e-4)
