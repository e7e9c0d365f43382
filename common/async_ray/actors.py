"""Server and worker of the asynchronous parameter server (plain classes; ``ps.py`` makes them Ray actors).

Huo, Gu, Huang, *Decoupled Asynchronous Proximal SVRG* (arXiv:1609.06804), Alg. 1 (DAP-SVRG) and the
TAP baseline (spec vr_prox.md §2.2, §2.4). A worker reads x^ and its version, draws a minibatch of
its shard and sends

  DAP: Delta = theta (prox_{gamma h}(x^ - gamma v) - x^),  v = w_k (grad f_B(x^) - grad f_B(x~)) + mu~,
  TAP: d = grad f_B(x^) - grad f_B(x~)   (the server forms v = w_k d + mu~ and applies prox(x - gamma v)),

with the shard weight w_k = K n_k / n of spec §4.3. Both are computed by ``vr_prox`` transformations
with ``axis_name=None`` (one worker, no collectives); the weight reaches them as
``local_count = K n_k`` (their single-worker weight is ``local_count / n``). The server serves one
message at a time (a Ray actor runs its methods serially), refuses a read older than tau
updates (the worker re-reads and recomputes) and records every accepted update's true delay
``version - version read``.

No JAX or Ray at import: a worker sets its JAX flags (one CPU device, one thread) before importing JAX.
"""
from __future__ import annotations

import os
import time

import numpy as np

from common.async_ray import problems as problems_lib


def _setup_jax(x64: bool):
  os.environ["JAX_PLATFORMS"] = "cpu"
  os.environ["XLA_FLAGS"] = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
  import jax
  jax.config.update("jax_enable_x64", bool(x64))
  return jax


def jax_block(x):
  import jax
  return jax.block_until_ready(x)


def _refreshed_state(tx, x_tilde, mu, n):
  """The transformation's state at an epoch start: snapshot x~, full gradient mu~, global n."""
  import vr_prox
  return vr_prox.refresh(tx.init(x_tilde), x_tilde, mu, n)


class Worker:
  """Worker k: owns its shard, computes the shard's gradient sum and the per-message payload."""

  def __init__(self, worker: int, problem, rows, *, variant: str, lr: float, relaxation: float,
               batch_size: int, seed: int, x64: bool, die_at_version: int | None = None, first_epoch: int = 1):
    jax = _setup_jax(x64)
    import jax.numpy as jnp
    import vr_prox
    self.worker, self.batch_size, self.die_at_version = worker, batch_size, die_at_version
    self.data = (np.asarray(problem.x[rows]), np.asarray(problem.y[rows]))
    self.n_k = len(rows)
    # a resumed run (first_epoch > 1) draws a fresh minibatch stream, not a replay of epoch 1's
    self.rng = np.random.default_rng([seed, worker] if first_epoch == 1 else [seed, worker, first_epoch])
    loss = problems_lib.example_loss_fn(problem.name)
    grad = jax.grad(lambda p, batch: jnp.mean(loss(p, batch)))
    self.tx = vr_prox.dap_svrg(lr, problems_lib.make_prox(problem), axis_name=None, relaxation=relaxation)

    def dap(x_hat, state, batch, count):
      delta, _ = self.tx.update(grad(x_hat, batch), state, x_hat, snapshot_grads=grad(state.snapshot, batch),
                                local_count=count)
      return delta

    def tap(x_hat, state, batch, count):
      del count
      return grad(x_hat, batch) - grad(state.snapshot, batch)

    self.step = jax.jit(dap if variant == "dap" else tap)
    self.shard_grad = jax.jit(lambda p, data: vr_prox.full_gradient(loss, p, data, jnp.ones(len(data[1])),
                                                                   axis_name=None))
    self.state, self.count = None, None

  def ready(self):
    return True

  def shard_gradient(self, x_tilde):
    """(mean gradient over this shard, n_k); the driver combines them with row weights n_k / n."""
    mu_k, n_k = self.shard_grad(x_tilde, self.data)
    return np.asarray(mu_k), int(n_k)

  def set_epoch(self, x_tilde, mu, n, num_workers):
    self.state = _refreshed_state(self.tx, x_tilde, mu, n)
    self.count = float(num_workers * self.n_k)   # local_count: weight K n_k / n in a 1-worker transform
    first = np.zeros(self.batch_size, np.int64)  # compile before the timed loop (no draw from the rng)
    jax_block(self.step(x_tilde, self.state, (self.data[0][first], self.data[1][first]), self.count))
    return True

  def run_epoch(self, server):
    """Read, compute, push until the server says the epoch's updates are done."""
    import ray
    x, version = ray.get(server.read.remote())
    comp, rtt = [], []
    while True:
      if self.die_at_version is not None and version >= self.die_at_version:
        os._exit(1)   # injected fault: the process dies as a crashed machine would
      t0 = time.perf_counter()
      idx = self.rng.integers(0, self.n_k, self.batch_size)
      payload = np.asarray(self.step(x, self.state, (self.data[0][idx], self.data[1][idx]), self.count))
      t1 = time.perf_counter()
      status, x_new, version_new = ray.get(server.push.remote(self.worker, payload, version))
      comp.append(t1 - t0)
      rtt.append(time.perf_counter() - t1)
      if status == "stop":
        return {"worker": self.worker, "comp": comp, "rtt": rtt}
      x, version = x_new, version_new


class Server:
  """Holds x and its version; DAP only adds, TAP applies the prox (``vr_prox.tap_svrg``, axis_name=None)."""

  def __init__(self, problem, x0, *, variant: str, lr: float, tau: int, x64: bool,
               die_at_version: int | None = None, version: int = 0):
    self.variant, self.tau, self.die_at_version = variant, int(tau), die_at_version
    self.x = np.array(x0, np.float64 if x64 else np.float32)
    self.version, self.end, self.refused = int(version), 0, 0   # version > 0: a resumed run's
    self.counts, self.state = {}, None
    self.t0 = time.perf_counter()
    self._log = self._empty_log()
    if variant == "tap":
      jax = _setup_jax(x64)
      import jax.numpy as jnp
      import vr_prox
      self.tx = vr_prox.tap_svrg(lr, problems_lib.make_prox(problem), axis_name=None)
      self._apply = jax.jit(lambda x, state, d, count: x + self.tx.update(
          d, state, x, snapshot_grads=jnp.zeros_like(d), local_count=count)[0])

  @staticmethod
  def _empty_log():
    return {"worker": [], "delay": [], "time": [], "service": [], "bytes_up": 0, "bytes_down": 0, "refused": 0}

  def start_epoch(self, updates: int, x_tilde, mu, n, counts):
    """Opens ``updates`` more server updates; TAP also takes the snapshot and mu~."""
    self.end = self.version + int(updates)
    self.counts = {int(k): float(c) for k, c in counts.items()}
    if self.variant == "tap":
      self.state = _refreshed_state(self.tx, x_tilde, mu, n)
      jax_block(self._apply(self.x, self.state, np.zeros_like(self.x), 1.0))   # compile outside the timing
    return self.version

  def ready(self):
    return True

  def read(self):
    return self.x.copy(), self.version

  def push(self, worker: int, payload, read_version: int):
    """One message: ("ok" | "refused" | "stop", current x, current version)."""
    if self.die_at_version is not None and self.version >= self.die_at_version:
      os._exit(1)   # injected fault: the server's process dies (tests of the lost-server error)
    log = self._log
    log["bytes_up"] += payload.nbytes
    if self.version >= self.end:
      return "stop", None, self.version
    delay = self.version - read_version
    if delay > self.tau:
      log["refused"] += 1
      log["bytes_down"] += self.x.nbytes
      return "refused", self.x.copy(), self.version
    t0 = time.perf_counter()
    if self.variant == "dap":
      self.x += payload
    else:
      self.x = np.asarray(self._apply(self.x, self.state, payload, self.counts[worker]))
    t1 = time.perf_counter()
    self.version += 1
    log["worker"].append(worker), log["delay"].append(delay)
    log["time"].append(t1 - self.t0), log["service"].append(t1 - t0)
    log["bytes_down"] += self.x.nbytes
    return "ok", self.x.copy(), self.version

  def pop_log(self):
    """The updates since the last call (worker, delay, server time, service time, bytes)."""
    log, self._log = self._log, self._empty_log()
    return log
