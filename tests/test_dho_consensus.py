"""dho2(admm="consensus"): spec 4 [I] (b), consensus ADMM with tau local FOSI steps per replica.

Checked against independent references: a numpy FOSI loop (dense Hessian, numpy Lanczos) for identical
data on every device, and the closed-form minimiser (and optimal duals) of a sum of quadratics.
"""
import importlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

import dho
from common import train
from common.comm import collective_bytes, dense_allreduce_present
from common.errors import ConfigError
from configs.common import override
from tests.test_dho_helpers import numpy_fosi_step, numpy_lanczos, run_sharded, softmax_problem

P = 8


def _tile(batch, p=P):
  """The same rows on every device (each device's shard is ``batch``)."""
  return tuple(np.concatenate([np.asarray(b)] * p) for b in batch)


def test_identical_data_equals_single_replica_local_fosi():
  """Identical data on all 8 devices: replicas never diverge, consensus is exact, and the run equals one
  replica of proximal local FOSI (numpy, float64, dense Hessian + numpy Lanczos on H(z) + rho I).

  tau = 3, refresh every 4 calls from call 0 (so call 4 refreshes mid-period, at z, not at x_p)."""
  k, m, tau, rho, alpha, lr, beta, steps = 3, 12, 3, 0.5, 0.5, 0.1, 0.9, 7
  with jax.enable_x64(True):
    params, loss, batch = softmax_problem(rows=8)
    tx = dho.dho2(optax.sgd(lr, momentum=beta), loss, num_shards=P, k=k, m=m, refresh_every=4, warmup=1,
                  alpha=alpha, momentum="heavy_ball", decay=beta, admm="consensus", admm_period=tau,
                  admm_rho=rho)
    ps, ss, us, _ = run_sharded(tx, params, loss, _tile(batch), steps, P)

    flat0, unravel = ravel_pytree(jax.tree.map(lambda a: a.astype(jnp.float64), params))
    n = flat0.shape[0]
    flat_loss = lambda f: loss(unravel(f), batch)
    grad = jax.jit(jax.grad(flat_loss))
    hess = jax.jit(jax.hessian(flat_loss))
    v0 = np.asarray(jax.random.normal(jax.random.PRNGKey(0), (n,), jnp.float64))

  z = np.asarray(flat0)
  x, vel, trace = z.copy(), np.zeros(n), np.zeros(n)

  def base_update(g2):                          # optax.sgd(lr, momentum=beta) in numpy
    nonlocal trace
    trace = g2 + beta * trace
    return -lr * trace

  for t in range(steps):
    if t % 4 == 0:                               # refresh at z: Lanczos on the local objective's Hessian
      hs = np.asarray(hess(z)) + rho * np.eye(n)
      tri, basis = numpy_lanczos(lambda v: hs @ v, v0, m)
      theta, s_mat = np.linalg.eigh(tri)
      vals, vecs = theta[-k:], s_mat[:, -k:].T @ basis
      c = np.clip(abs(vals[-1]) / abs(vals[0]), 1.0, 3.0)
    if t % tau == 0:
      x = z.copy()
    g = np.asarray(grad(x)) + rho * (x - z)     # pi stays 0: every replica equals the consensus
    u, vel = numpy_fosi_step(g, vel, vecs, vals, base_update, alpha, c, "heavy_ball", beta)
    x = x + u
    if (t + 1) % tau == 0:
      z = x.copy()
    got_z = np.asarray(ravel_pytree(ps[t + 1])[0])
    xs = np.asarray(ss[t + 1].admm_x)
    np.testing.assert_allclose(got_z, z, atol=2e-6, err_msg=f"params after call {t}")
    np.testing.assert_allclose(xs, np.broadcast_to(x, xs.shape), atol=2e-6, err_msg=f"x_p after call {t}")
    assert np.max(np.abs(xs - xs[0])) == 0.0                       # replicas bit-identical
    assert np.max(np.abs(np.asarray(ss[t + 1].admm_dual))) < 1e-6   # pi = rho (x_p - z) = rounding only
    moved = bool(np.any(np.asarray(ravel_pytree(us[t])[0]) != 0))
    assert moved == ((t + 1) % tau == 0)                            # params move only at consensus
  np.testing.assert_allclose(ss[-1].fosi.eigvals, vals - rho, rtol=1e-6)   # stored unshifted


def test_quadratic_converges_to_mean_of_local_minimisers():
  """f_p(x) = 0.5 ||x - a_p||^2, different a_p per device: z -> mean_p a_p (argmin of sum f_p), and the
  duals -> a_p - mean(a) (local stationarity). Inexact local solves (4 SGD/Newton steps per period)."""
  d, tau, steps = 10, 4, 160
  a = np.random.default_rng(1).normal(size=(P, d)).astype(np.float32) * 3.0
  loss = lambda p, batch: 0.5 * jnp.sum((p["x"] - batch[0][0]) ** 2)
  params = {"x": jnp.zeros((d,), jnp.float32)}
  tx = dho.dho2(optax.sgd(0.3), loss, num_shards=P, k=1, m=4, refresh_every=1000, warmup=1, alpha=0.5,
                momentum="none", admm="consensus", admm_period=tau, admm_rho=1.0)
  ps, ss, _, _ = run_sharded(tx, params, loss, (a, np.zeros(P, np.int32)), steps, P)
  xstar = a.mean(0)
  err = [float(np.max(np.abs(np.asarray(ps[t]["x"]) - xstar))) for t in range(0, steps + 1, tau)]
  assert err[0] > 1.0
  assert err[-1] < 1e-5, err[-5:]
  assert all(e1 <= e0 * 1.001 + 1e-6 for e0, e1 in zip(err, err[1:])), err   # monotone at period ends
  np.testing.assert_allclose(ss[-1].admm_dual, a - xstar, atol=1e-4)
  np.testing.assert_allclose(np.sum(np.asarray(ss[-1].admm_dual), 0), 0.0, atol=1e-4)


def _regions(text):
  """Computation -> None (reached without a conditional) or the index of the outermost conditional."""
  calls, conds, entry, cur = {}, {}, None, None
  for line in text.splitlines():
    if line and not line[0].isspace() and line.rstrip().endswith("{") and not line.startswith("HloModule"):
      cur = re.match(r"(?:ENTRY\s+)?%?([\w.\-]+)", line).group(1)
      calls[cur], conds[cur] = [], []
      entry = cur if line.startswith("ENTRY") else entry
    elif cur is not None:
      br = re.search(r"branch_computations=\{([^}]*)\}", line)
      if " conditional(" in line and br:
        conds[cur].append(re.findall(r"%?([\w.\-]+)", br.group(1)))
      else:
        calls[cur] += re.findall(r"(?:calls|to_apply|body|condition)=%?([\w.\-]+)", line)
  label, stack, next_id = {entry: None}, [entry], 0
  while stack:
    comp = stack.pop()
    for callee in calls.get(comp, []):
      if callee not in label:
        label[callee] = label[comp]
        stack.append(callee)
    for branches in conds.get(comp, []):
      tag = label[comp] if label[comp] is not None else next_id
      next_id += label[comp] is None
      for b in branches:
        if b not in label:
          label[b] = tag
          stack.append(b)
  return label


def test_compiled_collectives():
  """A local step sends nothing (no collective outside the two conditionals, so no n-float gradient
  all-reduce); the consensus branch is exactly one all-reduce of n f32; the refresh branch is the
  sharded Lanczos + the r x s eigenvector all-gather. Measured payload (dearest branch of each
  conditional) == analytic."""
  params, loss, batch = softmax_problem(rows=8)
  n, k, m = 65, 3, 12
  tx = dho.dho2(optax.adam(0.01), loss, num_shards=P, k=k, m=m, refresh_every=4, warmup=1,
                admm="consensus", admm_period=3, admm_rho=0.5)
  _, ss, _, step = run_sharded(tx, params, loss, _tile(batch), 1, P)
  text = step.lower(params, ss[-1], *_tile(batch)).compile().as_text()
  report = collective_bytes(text)
  label = _regions(text)
  assert all(c.computation in label for c in report.collectives)
  unconditional = [c for c in report.collectives if label[c.computation] is None]
  assert unconditional == [], report.summary()                        # local step: 0 bytes
  dense = [c for c in report.collectives if c.kind == "all-reduce" and c.elements >= n]
  assert len(dense) == 1 and dense[0].elements == n and dense[0].dtypes == ("f32",) and dense[0].count == 1
  assert dense_allreduce_present(report, n)
  sync_branch = [c for c in report.collectives if label[c.computation] == label[dense[0].computation]]
  assert sync_branch == dense, report.summary()                      # the consensus cond holds only it
  assert report.payload == dho.payload_bytes(n, k=k, m=m, num_shards=P, admm="consensus"), report.summary()
  assert dho.payload_bytes(n, k=k, m=m, num_shards=P, admm="consensus", refresh=False) == n * 4
  assert dho.payload_bytes(n, k=k, m=m, num_shards=P, admm="consensus", refresh=False,
                           consensus_step=False) == 0
  # replicated leaves stay replicated: full eigenvectors once per device, x_p / pi_p one row per device
  state = ss[-1]
  assert {sh.data.shape for sh in state.fosi.eigvecs.addressable_shards} == {(k, n)}
  assert {sh.data.shape for sh in state.admm_x.addressable_shards} == {(1, n)}


@pytest.mark.parametrize("kw,match", [
    (dict(admm_period=3), "needs admm_rho"),
    (dict(admm_period=3, admm_rho=0.0), "admm_rho"),
    (dict(admm_period=3, admm_rho=-1.0), "admm_rho"),
    (dict(admm_period=3, admm_rho=float("nan")), "admm_rho"),
    (dict(admm_period=3, admm_rho="1"), "admm_rho"),
    (dict(admm_period=0, admm_rho=1.0), "admm_period"),
    (dict(admm_period=2.5, admm_rho=1.0), "admm_period"),
    (dict(admm_period=None, admm_rho=1.0), "admm_period"),
    (dict(admm_period=3, admm_rho=1.0, curvature_delay=1), "curvature_delay"),
])
def test_bad_arguments_raise(kw, match):
  params, loss, _ = softmax_problem(rows=8)
  with pytest.raises(ValueError, match=match):
    dho.dho2(optax.sgd(0.1), loss, num_shards=P, k=3, admm="consensus", **kw)


def test_rho_needs_consensus_and_unknown_mode_raises():
  _, loss, _ = softmax_problem(rows=8)
  with pytest.raises(ValueError, match="admm_rho"):
    dho.dho2(optax.sgd(0.1), loss, num_shards=P, admm="reference", admm_period=2, admm_rho=1.0)
  with pytest.raises(ValueError, match="admm must be one of"):
    dho.dho2(optax.sgd(0.1), loss, num_shards=P, admm="consenus", admm_period=2, admm_rho=1.0)


def _mlp_config(**overrides):
  config = importlib.import_module("configs.dho2_mlp").get_config("8")
  config.num_steps, config.eval_every, config.log_every = 40, 0, 40
  return override(config, **overrides)


def test_adapter_consensus_runs_and_validates():
  """--config.algo.admm=consensus through common.train: learns, measured bytes == analytic (+4 B loss
  pmean), the n-float all-reduce is the consensus one; missing rho / delay are ConfigErrors."""
  config = _mlp_config(**{"algo.admm": "consensus", "algo.admm_rho": 0.1, "algo.admm_period": 5,
                          "algo.refresh_every": 20, "algo.warmup": 1})
  result = train.run(config, None, quiet=True)
  losses = [h["loss"] for h in result.history]
  assert result.status == "ok" and losses[-1] < 0.5 * losses[0], losses
  assert result.final["bytes_per_step"] == result.final["analytic_bytes_per_step"] + 4
  n = sum(x.size for x in jax.tree.leaves(result.params))
  assert dense_allreduce_present(result.comm, n)
  for field, extra in [("algo.admm_rho", {}), ("algo.admm_rho", {"algo.admm_rho": -1.0}),
                       ("algo.curvature_delay", {"algo.admm_rho": 0.1, "algo.curvature_delay": 3}),
                       ("algo.admm_rho", {"algo.admm": "reference", "algo.admm_rho": 0.1})]:
    with pytest.raises(ConfigError) as err:
      train.validate(_mlp_config(**{"algo.admm": "consensus", **extra}), available_devices=8)
    assert err.value.field == field
