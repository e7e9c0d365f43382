"""The SPMD references of the Ray gradient-coding runs (issue 16: "converge to the same optima").

``spmd_run``: the same method, data, allocation, seed and learning rate as a ``gc.GCSpec``, run
by ``sign1bit``'s transformation (``gc.spmd_transform``) inside ``shard_map`` on a K-device mesh,
one jitted step per call (blocked), as the SPMD version runs it: worker i differentiates
sum_{k in S_i} f_k at ``lax.pcast(w, axis, to="varying")``, all-gathers its packed message and
every device decodes the same g_t = (B/N) sum_{i in R_t} q_i (Li & Skoglund, arXiv:2403.14716;
spec sign1bit.md §2.3). With ``wait="all"`` and no delays both runtimes draw the same quantizer
keys (``worker_key(fold_in(key(seed), t), i)``) from the same w_t, so their iterates agree; with
stragglers the SPMD mask is drawn from the key (fixed s, or Bernoulli p) where Ray takes arrival
order, so only the objective levels compare.

``optimum``: F* of the l2-regularised softmax regression F(w) = (1/N) sum_k f_k on the training
rows of ``gc.load_digits`` (scipy L-BFGS-B in float64, gradient norm <= 1e-8).

The caller's process needs K devices (``XLA_FLAGS=--xla_force_host_platform_device_count=8``).
"""
from __future__ import annotations

import numpy as np

from common.async_ray import gc

AXIS = "data"


def spmd_run(spec: gc.GCSpec, num_steps: int) -> np.ndarray:
  """[num_steps + 1, D] float32 iterates w_0 = 0, ..., w_T of the SPMD run of ``spec``."""
  import jax
  import jax.numpy as jnp
  import sign1bit
  from jax import lax
  from common.digits_softmax import D, local_loss
  k = spec.num_workers
  if len(jax.devices()) < k:
    raise ValueError(f"the SPMD reference needs {k} devices, this process has {len(jax.devices())} "
                     f"(set XLA_FLAGS=--xla_force_host_platform_device_count={k})")
  mesh = jax.make_mesh((k,), (AXIS,), axis_types=(jax.sharding.AxisType.Auto,), devices=jax.devices()[:k])
  xs, ys, _, _ = gc.load_digits(spec)
  xs, ys = sign1bit.shard_partitions((xs, ys), gc.make_allocation(spec), mesh, AXIS)
  tx = gc.spmd_transform(spec, AXIS)
  state = tx.init(jnp.zeros(D, jnp.float32))
  specs = sign1bit.state_specs(state, AXIS)

  def body(w, st, x, y):   # x: this device's [1, l, rows, 65] block
    g = jax.grad(local_loss)(lax.pcast(w, AXIS, to="varying"), x[0], y[0])
    u, st = tx.update(g, st)
    return w - spec.lr * u, st

  step = jax.jit(jax.shard_map(body, mesh=mesh, in_specs=(jax.P(), specs, jax.P(AXIS), jax.P(AXIS)),
                               out_specs=(jax.P(), specs)))
  w = jnp.zeros(D, jnp.float32)
  ws = [np.asarray(w)]
  for _ in range(num_steps):
    w, state = jax.block_until_ready(step(w, state, xs, ys))   # block each step (CPU collectives)
    ws.append(np.asarray(w))
  return np.stack(ws)


def _objective_and_grad(w, x, y, lam):
  """F(w) and its gradient in float64 NumPy (mean softmax cross-entropy + (lam/2)||w||^2)."""
  from common.digits_softmax import NC, NF
  w = w.reshape(NF, NC)
  logits = x @ w
  p = np.exp(logits - logits.max(1, keepdims=True))
  p /= p.sum(1, keepdims=True)
  f = float(np.mean(np.log(p[np.arange(len(y)), y]) * -1.0) + 0.5 * lam * np.sum(w * w))
  p[np.arange(len(y)), y] -= 1.0
  return f, (x.T @ p / len(y) + lam * w).ravel()


def optimum(spec: gc.GCSpec) -> tuple[float, np.ndarray]:
  """(F*, w*) on ``spec``'s training rows (F = mean over all rows: equal partitions make it
  (1/N) sum_k f_k); raises if L-BFGS-B does not reach a gradient norm of 1e-8."""
  from scipy.optimize import minimize
  from common.digits_softmax import D, LAM
  xs, ys, _, _ = gc.load_digits(spec)
  x, y = xs.reshape(-1, xs.shape[-1]).astype(np.float64), ys.reshape(-1)
  res = minimize(_objective_and_grad, np.zeros(D), args=(x, y, LAM), jac=True, method="L-BFGS-B",
                 options={"maxiter": 20000, "gtol": 1e-12, "ftol": 0.0})
  gnorm = float(np.linalg.norm(_objective_and_grad(res.x, x, y, LAM)[1]))
  if gnorm > 1e-8:
    raise RuntimeError(f"L-BFGS-B stopped at gradient norm {gnorm:.2e} ({res.message})")
  return float(res.fun), res.x
