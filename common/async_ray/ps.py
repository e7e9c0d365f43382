"""Driver of the asynchronous DAP-SVRG / TAP-SVRG parameter server on Ray (issue 16).

One server actor and K worker actors on a local Ray node bound to loopback (``start_ray``).
Per epoch ([HGH] Alg. 1, the authors' epoch barrier): the driver snapshots x~ = server x; every
live worker returns its shard's mean gradient and row count (``vr_prox.full_gradient``,
axis_name=None); the driver combines them with the row weights n_k / n (the global mean, spec
§4.4); then the server opens ``updates_per_epoch`` updates and the workers run asynchronously
until they are used up. A worker whose process dies is logged (which worker, at which server
version and wall time) and the run continues with the others; the next epoch's full gradient
and shard weights K n_k / n are over the live shards. A lost server is an error naming it.
"""
from __future__ import annotations

import dataclasses
import os
import time
from typing import Callable

import numpy as np

from common.async_ray import actors, problems as problems_lib


class ServerLost(RuntimeError):
  """The parameter server actor died."""


class RayStartError(RuntimeError):
  """The local Ray node did not come up (e.g. its raylet timed out on an overloaded machine)."""


@dataclasses.dataclass(frozen=True)
class Spec:
  """One run. ``relaxation`` is DAP's theta (the worker sends theta * Delta; 1 = the paper)."""
  problem: str = "elastic_net"
  variant: str = "dap"              # dap | tap
  num_workers: int = 2              # K
  max_delay: int = 4                # tau: a read older than tau server updates is refused
  lr: float = 1.0
  relaxation: float = 1.0
  batch_size: int = 1
  epochs: int = 10
  updates_per_epoch: int = 569      # m
  seed: int = 0
  x64: bool = True
  epoch_timeout_s: float = 120.0
  kill_worker: int = -1             # injected fault: this worker's process exits ...
  kill_at_version: int = 0          # ... when it reads this server version
  kill_server_at_version: int = -1  # injected fault: the server's process exits at this version (-1: never)
  l1: float = 3e-3
  l2: float = 1e-2
  lam: float = 1e-2


def _runtime_env():
  root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)
  return {"env_vars": {"PYTHONPATH": path}}   # actors import common/ from any cwd (same path on a cluster)


def start_ray(num_cpus: int, address: str | None = None, connect_timeout_s: float = 10.0):
  """A private local Ray node on loopback, no dashboard (``address`` None), or ``ray.init(address=...)``
  of a running cluster after a TCP probe of its host:port (``check_ray_address``); returns True if
  this call initialized Ray (the caller shuts it down)."""
  import ray
  if ray.is_initialized():
    return False
  if address is not None:
    check_ray_address(address, connect_timeout_s)
    try:
      ray.init(address=address, include_dashboard=False, configure_logging=False, log_to_driver=False,
               runtime_env=_runtime_env())
    except Exception as e:  # noqa: BLE001 -- ConnectionError, AuthenticationError, RuntimeError, ...
      from common.errors import ConfigError
      ray.shutdown()
      lines = [l.strip() for l in str(e.__cause__ or e).splitlines() if l.strip() and not l.startswith((" ", "Traceback"))]
      why = (lines[-1] if lines else type(e).__name__).split(". ")[0][:300]   # its first sentence
      hint = "; a token-authenticated cluster needs its token (RAY_AUTH_TOKEN)" if "auth" in why.lower() else ""
      raise ConfigError("ray_address", f"could not join the Ray cluster at {address!r}: {why}{hint}") from None
    return True
  for attempt in range(1, 3):   # Ray waits a fixed 30 s for its raylet; an overloaded machine may need two tries
    try:
      ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, configure_logging=False,
               log_to_driver=False, object_store_memory=100 * 1024 * 1024, _node_ip_address="127.0.0.1",
               runtime_env=_runtime_env())
      return True
    except Exception as e:  # noqa: BLE001 -- ray.init raises a bare Exception when its raylet/GCS time out
      ray.shutdown()
      if attempt == 2:
        raise RayStartError(f"the private local Ray node did not start (2 tries): {str(e).splitlines()[0]}") from None
  return True


def check_ray_address(address: str, timeout_s: float = 10.0) -> None:
  """Raises ``common.errors.ConfigError`` naming ``ray_address`` unless a TCP connection to its
  host:port opens within ``timeout_s`` ("auto" is left to ``ray.init``)."""
  import socket
  from common.errors import ConfigError
  if address == "auto":
    return
  hostport = address.split("://", 1)[-1]
  host, _, port = hostport.rpartition(":")
  if not host or not port.isdigit():
    raise ConfigError("ray_address", f"must be host:port (or ray://host:port, or auto), got {address!r}")
  try:
    socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
  except OSError as e:
    raise ConfigError("ray_address", f"no Ray cluster reachable at {address!r} within {timeout_s:g} s "
                      f"({e.strerror or type(e).__name__}); start one (ray start --head) or leave "
                      f"ray_address unset for a private local node") from None


def combine_shard_gradients(parts):
  """mu~ = sum_k n_k mu_k / sum_k n_k and n = sum_k n_k from per-shard (mean gradient, n_k)."""
  n = sum(n_k for _, n_k in parts)
  return sum(n_k * np.asarray(mu_k, np.float64) for mu_k, n_k in parts) / n, n


def _actor_error():
  import ray
  return (ray.exceptions.RayActorError, ray.exceptions.ActorDiedError)


def _get_server(ref, what):
  import ray
  try:
    return ray.get(ref)
  except _actor_error() as e:
    raise ServerLost(f"parameter server actor lost during {what}: {type(e).__name__}: {str(e).splitlines()[0]}") from None


def run(spec: Spec, *, on_epoch: Callable[[dict], None] | None = None, log: Callable[[str], None] = print,
        start: dict | None = None):
  """Runs ``spec.epochs`` epochs; returns {"x", "records", "lost", "p_star", "startup_s"} (wall_time
  in the records counts from when all actors are up). Starts Ray if it is not running
  (and stops it again); ``on_epoch(record)`` after each epoch. ``start`` (a resume): {"step":
  epochs done, "w": x at their end, "version", "wall_time", "cum_bytes"}; the run continues with
  epoch step + 1 from that x, server version and counters."""
  import ray
  started = start_ray(spec.num_workers + 1)
  try:
    return _run(spec, on_epoch or (lambda record: None), log, start)
  finally:
    if started:
      ray.shutdown()


def _start_actors(spec, problem, x0, version0, first_epoch=1):
  import ray
  rows = problems_lib.shard_rows(len(problem.y), spec.num_workers)
  server = ray.remote(num_cpus=0, max_restarts=0)(actors.Server).remote(
      problem, x0, variant=spec.variant, lr=spec.lr, tau=spec.max_delay, x64=spec.x64,
      die_at_version=spec.kill_server_at_version if spec.kill_server_at_version >= 0 else None, version=version0)
  worker_cls = ray.remote(num_cpus=0, max_restarts=0)(actors.Worker)
  workers = {k: worker_cls.remote(k, problem, rows[k], variant=spec.variant, lr=spec.lr,
                                  relaxation=spec.relaxation, batch_size=spec.batch_size, seed=spec.seed,
                                  first_epoch=first_epoch, x64=spec.x64,
                                  die_at_version=spec.kill_at_version if k == spec.kill_worker else None)
             for k in range(spec.num_workers)}
  return server, workers


def _lose(workers, lost, k, server, epoch, t_start, log):
  version = _get_server(server.read.remote(), "the worker-loss report")[1]
  wall = time.perf_counter() - t_start
  lost.append({"worker": k, "epoch": epoch, "version": version, "wall_time": wall})
  workers.pop(k)
  log(f"worker {k} lost at server version {version} (epoch {epoch}, {wall:.1f} s); continuing with "
      f"{len(workers)} worker(s): {sorted(workers)}")
  if not workers:
    raise RuntimeError(f"all workers lost by epoch {epoch}; nothing can make progress")


def _gather_live(workers, refs, lost, server, epoch, t_start, log, timeout_s):
  """ray.get of one call per live worker; a dead worker is logged and dropped."""
  import ray
  out = {}
  pending = dict(refs)
  deadline = time.perf_counter() + timeout_s
  while pending:
    left = deadline - time.perf_counter()
    done, _ = ray.wait(list(pending), num_returns=1, timeout=max(left, 0))
    if not done:
      raise TimeoutError(f"epoch {epoch}: worker(s) {sorted(pending.values())} did not finish within "
                         f"{timeout_s:g} s (config.epoch_timeout_s)")
    k = pending.pop(done[0])
    try:
      out[k] = ray.get(done[0])
    except _actor_error():
      _lose(workers, lost, k, server, epoch, t_start, log)
  return out


def _run(spec, on_epoch, log, start=None):
  import ray
  problem = problems_lib.load(spec.problem, l1=spec.l1, l2=spec.l2, lam=spec.lam)
  start = start or {"step": 0, "w": np.zeros(problem.shape), "version": 0, "wall_time": 0.0, "cum_bytes": 0}
  t_actors = time.perf_counter()
  server, workers = _start_actors(spec, problem, np.asarray(start["w"]).reshape(problem.shape), int(start["version"]),
                                  first_epoch=int(start["step"]) + 1)
  _get_server(server.ready.remote(), "startup")
  _gather_live(workers, {w.ready.remote(): k for k, w in workers.items()}, [], server, 0, t_actors, log,
               spec.epoch_timeout_s)
  startup_s = time.perf_counter() - t_actors   # actor processes and their JAX imports; not in wall_time
  log(f"server and {len(workers)} workers up in {startup_s:.1f} s")
  lost, records = [], []
  t_start = time.perf_counter() - float(start["wall_time"])   # wall time continues a resumed run's
  cum_bytes = int(start["cum_bytes"])
  for epoch in range(int(start["step"]) + 1, spec.epochs + 1):
    x_tilde, version = _get_server(server.read.remote(), f"epoch {epoch} snapshot")
    parts = _gather_live(workers, {w.shard_gradient.remote(x_tilde): k for k, w in workers.items()},
                         lost, server, epoch, t_start, log, spec.epoch_timeout_s)
    mu, n = combine_shard_gradients(parts.values())
    counts = {k: len(workers) * parts[k][1] for k in workers if k in parts}
    _gather_live(workers, {w.set_epoch.remote(x_tilde, mu, n, len(workers)): k for k, w in workers.items()},
                 lost, server, epoch, t_start, log, spec.epoch_timeout_s)
    _get_server(server.start_epoch.remote(spec.updates_per_epoch, x_tilde, mu, n, counts), f"epoch {epoch} start")
    t_inner = time.perf_counter()
    stats = _gather_live(workers, {w.run_epoch.remote(server): k for k, w in workers.items()},
                         lost, server, epoch, t_start, log, spec.epoch_timeout_s)
    inner_s = time.perf_counter() - t_inner
    updates = _get_server(server.pop_log.remote(), f"epoch {epoch} log")
    x, version = _get_server(server.read.remote(), f"epoch {epoch} end")
    loss = problems_lib.objective(problem, x)
    delays = np.asarray(updates["delay"], np.int64)
    cum_bytes += updates["bytes_up"] + updates["bytes_down"]
    record = {
        "step": epoch, "loss": loss,
        "gap": None if problem.p_star is None else (loss - problem.p_star) / problem.p_star,
        "wall_time": time.perf_counter() - t_start, "version": version, "updates": len(delays),
        "updates_per_s": len(delays) / inner_s, "delay_mean": float(delays.mean()) if len(delays) else 0.0,
        "delay_max": int(delays.max()) if len(delays) else 0,
        "delay_hist": np.bincount(delays, minlength=spec.max_delay + 1).tolist() if len(delays) else [],
        "refused": updates["refused"], "bytes_up": updates["bytes_up"], "bytes_down": updates["bytes_down"],
        "cum_bytes": cum_bytes, "workers": sorted(workers),
        "_trace": {"x": x.reshape(problem.shape), "worker": np.asarray(updates["worker"]), "delay": delays,
                   "time": np.asarray(updates["time"]), "service": np.asarray(updates["service"]),
                   "comp": {k: s["comp"] for k, s in stats.items()}, "rtt": {k: s["rtt"] for k, s in stats.items()}},
    }
    records.append(record)
    on_epoch(record)
  return {"x": x.reshape(problem.shape), "records": records, "lost": lost, "p_star": problem.p_star,
          "startup_s": startup_s}
