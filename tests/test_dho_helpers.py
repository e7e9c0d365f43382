"""Shared fixtures of the dho tests (no tests here): toy problems, numpy reference FOSI, sharded runners."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

import dho

AXIS = "data"


def mesh(p):
  return jax.make_mesh((p,), (AXIS,), axis_types=(jax.sharding.AxisType.Auto,), devices=jax.devices()[:p])


def planted(n=200, top=(100., 90., 80., 70., 60.), seed=0, smallest=None):
  """Symmetric A = Q diag(ev) Q^T with planted top eigenvalues, rest in [0.01, 1]."""
  rng = np.random.default_rng(seed)
  q, _ = np.linalg.qr(rng.normal(size=(n, n)))
  ev = np.concatenate([np.asarray(top), rng.uniform(0.01, 1.0, n - len(top))])
  if smallest is not None:
    ev[np.argmin(ev)] = smallest
  return (q * ev) @ q.T, ev, q


def quad_loss(a, xstar):
  a, xstar = jnp.asarray(a), jnp.asarray(xstar)

  def loss(params, batch):
    del batch
    d = params["x"] - xstar.astype(params["x"].dtype)
    return 0.5 * d @ (a.astype(d.dtype) @ d)
  return loss


def softmax_problem(seed=0, rows=64, d=12, c=5, dtype=np.float32):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(rows, d)).astype(dtype)
  y = rng.integers(0, c, rows).astype(np.int32)
  params = {"w": jnp.asarray(rng.normal(size=(d, c)) * 0.1, dtype), "b": jnp.zeros((c,), dtype)}

  def loss(p, batch):
    bx, by = batch
    logits = bx @ p["w"] + p["b"]
    return optax.softmax_cross_entropy_with_integer_labels(logits, by).mean() + 1e-3 * jnp.sum(p["w"] ** 2)
  return params, loss, (x, y)


def mlp_problem(widths=(64, 256, 256, 10), rows=128, seed=0):
  """A tanh MLP with softmax cross-entropy on random data (n = 85,002 with the default widths, the
  digits MLP's shape)."""
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(rows, widths[0])).astype(np.float32)
  y = rng.integers(0, widths[-1], rows).astype(np.int32)
  params = [{"w": jnp.asarray(rng.normal(size=(a, b)) / np.sqrt(a), jnp.float32), "b": jnp.zeros((b,), jnp.float32)}
            for a, b in zip(widths[:-1], widths[1:])]

  def loss(p, batch):
    h, by = batch
    for i, layer in enumerate(p):
      h = h @ layer["w"] + layer["b"]
      h = jnp.tanh(h) if i + 1 < len(p) else h
    return optax.softmax_cross_entropy_with_integer_labels(h, by).mean()
  return params, loss, (x, y)


def run_single(tx, params, loss, batch, steps):
  """jit single-device loop: returns (params list, state list, update list)."""
  state = tx.init(params)

  @jax.jit
  def step(params, state):
    g = jax.grad(loss)(params, batch)
    u, state = tx.update(g, state, params, batch=batch)
    return optax.apply_updates(params, u), state, u

  ps, ss, us = [params], [state], []
  for _ in range(steps):
    params, state, u = step(params, state)
    ps.append(params), ss.append(state), us.append(u)
  return ps, ss, us


def sharded_step(tx, state, loss, p, donate=False):
  """``jit(shard_map(step))`` over p devices: local gradient at ``pcast`` params, ``tx.update`` with
  the local batch; state placed by ``state_specs``. Returns ``step(params, state, x, y)``.
  ``donate``: params and state are donated (as the harness's step does) and only they come back,
  so XLA cannot keep temporaries in spare output buffers."""
  specs = dho.state_specs(state, AXIS)

  def body(params, state, bx, by):
    g = jax.grad(loss)(lax.pcast(params, AXIS, to="varying"), (bx, by))
    u, state = tx.update(g, state, params, batch=(bx, by))
    return optax.apply_updates(params, u), state, u

  if donate:
    return jax.jit(jax.shard_map(lambda *a: body(*a)[:2], mesh=mesh(p),
                                 in_specs=(jax.P(), specs, jax.P(AXIS), jax.P(AXIS)), out_specs=(jax.P(), specs)),
                   donate_argnums=(0, 1))
  return jax.jit(jax.shard_map(body, mesh=mesh(p), in_specs=(jax.P(), specs, jax.P(AXIS), jax.P(AXIS)),
                               out_specs=(jax.P(), specs, jax.P())))


def run_sharded(tx, params, loss, batch, steps, p):
  """shard_map loop over p devices (batch rows split; ``init``'s global layout placed by ``state_specs``)."""
  state = tx.init(params)
  step = sharded_step(tx, state, loss, p)
  ps, ss, us = [params], [state], []
  for _ in range(steps):
    params, state, u = step(params, state, *batch)
    jax.block_until_ready(params)
    ps.append(params), ss.append(state), us.append(u)
  return ps, ss, us, step


def numpy_lanczos(hv, v0, m):
  """Independent numpy Lanczos (full double re-orth), float64: returns (T, V)."""
  n = v0.shape[0]
  V = np.zeros((m, n)); T = np.zeros((m, m))
  v = v0 / np.linalg.norm(v0)
  for i in range(m):
    V[i] = v
    w = hv(v)
    T[i, i] = w @ v
    if i + 1 < m:
      w = w - V.T @ (V @ w)
      w = w - V.T @ (V @ w)
      b = np.linalg.norm(w)
      T[i, i + 1] = T[i + 1, i] = b
      v = w / b
  return T, V


def numpy_fosi_step(g, vel, eigvecs, eigvals, base_update, alpha, c, rule, beta):
  """FOSI update of spec 2.2 in numpy (base_update(g2) -> already-negated base step)."""
  lr = 1.0 / np.abs(eigvals)
  g1 = eigvecs.T @ (eigvecs @ g)
  g2 = g - g1
  vel = {"ema": (1 - beta) * g1 + beta * vel, "heavy_ball": g1 + beta * vel,
         "nesterov": (1 + beta) * g1 + beta ** 2 * vel, "none": g1}[rule]
  newt = eigvecs.T @ (lr * (eigvecs @ vel))
  d = base_update(g2)
  d = d - eigvecs.T @ (eigvecs @ d)
  return c * d - alpha * newt, vel
