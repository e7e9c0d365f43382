"""PowerSGD (common/powersgd.py) against an independent NumPy reference of Vogels et al. Alg. 1 + 2.

The reference simulates W workers with explicit means (no JAX) and orthogonalizes with classical
Gram-Schmidt instead of QR: only P̂ P̂ᵀ enters the estimate, so column signs do not matter.
"""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax import lax

from common import powersgd
from common.comm import collective_bytes, dense_allreduce_present

AXIS, W = "data", 8
P = jax.P


def _mesh():
  return jax.make_mesh((W,), (AXIS,), axis_types=(jax.sharding.AxisType.Auto,))


def _gram_schmidt(p):
  p = p.copy()
  for j in range(p.shape[1]):
    for k in range(j):
      p[:, j] -= (p[:, k] @ p[:, j]) * p[:, k]
    p[:, j] /= np.linalg.norm(p[:, j])
  return p


def _reference(grads_per_step, q0, rank):
  """NumPy PowerSGD for one matrix: grads_per_step[t][w] is worker w's (n, m) gradient at step t.
  Returns the estimates Ĝ_t and the final per-worker errors."""
  q, errors, estimates = q0.astype(np.float64), None, []
  for grads in grads_per_step:
    errors = np.zeros_like(grads) if errors is None else errors
    deltas = grads + errors
    p_hat = _gram_schmidt(np.mean([d @ q for d in deltas], axis=0))
    q = np.mean([d.T @ p_hat for d in deltas], axis=0)
    estimate = p_hat @ q.T
    errors = deltas - estimate
    estimates.append(estimate)
  return estimates, errors


def _sharded_update(tx, params):
  state0 = tx.init(params)
  specs = powersgd.state_specs(state0, AXIS)

  def body(g, state):
    return tx.update(jax.tree.map(lambda x: x[0], g), state, params)

  step = jax.jit(jax.shard_map(body, mesh=_mesh(), in_specs=(P(AXIS), specs), out_specs=(P(), specs)))
  return step, state0


@pytest.mark.parametrize("rank", [1, 3])
def test_sharded_steps_equal_numpy_reference(rank):
  rng = np.random.default_rng(0)
  steps, n, m = 4, 20, 12
  grads = rng.normal(size=(steps, W, n, m)).astype(np.float32)
  bias = rng.normal(size=(steps, W, m)).astype(np.float32)
  params = {"kernel": jnp.zeros((n, m)), "bias": jnp.zeros((m,))}
  tx = powersgd.scale_by_powersgd(rank, axis_name=AXIS, num_workers=W, seed=3)
  step, state = _sharded_update(tx, params)
  q0 = np.asarray(state.q["kernel"])
  want, want_errors = _reference(grads.astype(np.float64), q0, rank)
  for t in range(steps):
    updates, state = step({"kernel": grads[t], "bias": bias[t]}, state)
    jax.block_until_ready(updates)
    np.testing.assert_allclose(updates["kernel"], want[t], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(updates["bias"], bias[t].mean(0), rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(state.error["kernel"], want_errors, rtol=1e-4, atol=1e-5)


def test_low_rank_mean_is_recovered_exactly():
  """If the mean gradient has rank <= r, one power step with a generic Q reproduces it."""
  rng = np.random.default_rng(1)
  u = rng.normal(size=(16, 1))
  grads = np.stack([u @ rng.normal(size=(1, 10)) for _ in range(W)]).astype(np.float32)  # mean: rank 1
  params = {"kernel": jnp.zeros((16, 10))}
  step, state = _sharded_update(powersgd.scale_by_powersgd(1, axis_name=AXIS, num_workers=W), params)
  updates, state = step({"kernel": grads}, state)
  np.testing.assert_allclose(updates["kernel"], grads.mean(0), rtol=1e-5, atol=1e-5)
  # Each worker's error is its own gradient minus the mean (the reference's e_w = Δ_w − Ĝ).
  np.testing.assert_allclose(state.error["kernel"], grads - grads.mean(0), rtol=1e-4, atol=1e-5)


def test_error_feedback_telescopes():
  """Σ_t Ĝ_t + mean_w e_w(T) = Σ_t mean_w g_w(t): nothing the compression drops is lost."""
  rng = np.random.default_rng(2)
  grads = rng.normal(size=(6, W, 24, 18)).astype(np.float32)
  params = {"kernel": jnp.zeros((24, 18))}
  step, state = _sharded_update(powersgd.scale_by_powersgd(2, axis_name=AXIS, num_workers=W), params)
  sent = np.zeros((24, 18))
  for g in grads:
    updates, state = step({"kernel": g}, state)
    sent += np.asarray(updates["kernel"], np.float64)
  np.testing.assert_allclose(sent + np.asarray(state.error["kernel"]).mean(0), grads.sum(0).mean(0),
                             rtol=1e-4, atol=1e-4)


def test_measured_bytes_equal_payload_and_no_dense_allreduce():
  params = {"conv": jnp.zeros((3, 3, 8, 16)), "dense": {"kernel": jnp.zeros((64, 10)), "bias": jnp.zeros(10)},
            "tiny": jnp.zeros((2, 2))}          # tiny: r(n+m) >= nm, so it travels dense
  rank = 2
  tx = optax.chain(powersgd.scale_by_powersgd(rank, axis_name=AXIS, num_workers=W), optax.sgd(0.1))
  state0 = tx.init(params)
  specs = powersgd.state_specs(state0, AXIS)

  def body(params, state, x):
    loss = lambda p: sum(jnp.sum(jnp.tanh(v * x[0, 0])) for v in jax.tree.leaves(p))
    g = jax.grad(loss)(lax.pcast(params, AXIS, to="varying"))
    updates, state = tx.update(g, state, params)
    return optax.apply_updates(params, updates), state

  step = jax.jit(jax.shard_map(body, mesh=_mesh(), in_specs=(P(), specs, P(AXIS)), out_specs=(P(), specs)))
  report = collective_bytes(step.lower(params, state0,
                                       jnp.ones((W, 1))).compile())
  expected = 4 * (rank * (72 + 16) + rank * (64 + 10) + 10 + 4)
  assert powersgd.payload_bytes(params, rank) == expected
  assert report.payload == expected, report.summary()
  assert not dense_allreduce_present(report, 3 * 3 * 8 * 16), report.summary()
  assert not dense_allreduce_present(report, 64 * 10), report.summary()


@pytest.mark.parametrize("rank", [0, -1, 1.5])
def test_bad_rank_is_refused(rank):
  with pytest.raises(ValueError, match="rank"):
    powersgd.scale_by_powersgd(rank)


def test_axis_needs_the_number_of_workers():
  with pytest.raises(ValueError, match="num_workers=W"):
    powersgd.scale_by_powersgd(1, axis_name=AXIS)
