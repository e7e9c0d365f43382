"""Device setup and the 1-D ``"data"`` mesh.

Call ``configure_devices`` before JAX touches a backend: it sets the number of simulated CPU
devices (ignored on GPU/TPU), float64 mode, and, for multi-process runs, initialises JAX's
distributed runtime (gloo collectives on CPU, NCCL on GPUs) so the mesh spans every process.
"""
from __future__ import annotations

import jax
import numpy as np
from absl import logging
from jax.sharding import AxisType, NamedSharding

from common.errors import ConfigError, PeerError

AXIS = "data"


def configure_devices(num_devices: int, *, x64: bool = False, num_processes: int = 1,
                      process_id: int = 0, coordinator: str | None = None,
                      heartbeat_timeout_s: int = 30, init_timeout_s: int = 60) -> None:
  """Sets simulated CPU device count and x64, and joins the distributed runtime if asked.

  Args:
    num_devices: global device count wanted (0 = whatever the platform has). On CPU each
      process simulates ``num_devices // num_processes`` devices.
    x64: enable float64.
    num_processes, process_id, coordinator: multi-process run on JAX's own runtime.
    heartbeat_timeout_s: a peer silent this long counts as lost (``--peer_timeout``).
    init_timeout_s: how long to wait for every process to join (``--init_timeout``).

  Raises:
    ConfigError for a device count that does not split; PeerError when not every process
    joined within ``init_timeout_s``.
  """
  if num_devices < 0:
    raise ConfigError("num_devices", f"must be >= 0 (0 = all available), got {num_devices}")
  if num_processes > 1 and num_devices % num_processes:
    raise ConfigError("num_devices", f"{num_devices} devices do not split over {num_processes} processes")
  jax.config.update("jax_enable_x64", bool(x64))
  if num_devices:
    jax.config.update("jax_num_cpu_devices", num_devices // num_processes)
  if num_processes > 1:
    if not coordinator:
      raise ConfigError("coordinator", "a multi-process run needs --coordinator host:port")
    logging.info("process %d of %d: waiting up to %d s (--init_timeout) for every process at %s",
                 process_id, num_processes, init_timeout_s, coordinator)
    try:
      jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes,
                                 process_id=process_id, initialization_timeout=init_timeout_s,
                                 heartbeat_timeout_seconds=heartbeat_timeout_s)
    except Exception as e:  # JaxRuntimeError DEADLINE_EXCEEDED / UNAVAILABLE with a long dump
      raise PeerError(f"process {process_id}: the {num_processes} processes did not join within "
                      f"--init_timeout={init_timeout_s} s at {coordinator} ({str(e).splitlines()[0][:120]}); "
                      f"start each with the same --coordinator and --num_processes") from None
    logging.info("process %d: all %d processes joined", process_id, num_processes)


def make_mesh(num_devices: int = 0) -> jax.sharding.Mesh:
  """A 1-D mesh with axis ``"data"`` over ``num_devices`` devices (0 = all), Auto axis type."""
  available = jax.device_count()
  if num_devices > available:
    raise ConfigError("num_devices", f"{num_devices} devices requested but {jax.default_backend()} has "
                      f"{available}; use --config.num_devices={available} (or 0 for all)")
  n = num_devices or available
  devices = np.asarray(jax.devices()[:n])
  return jax.sharding.Mesh(devices, (AXIS,), axis_types=(AxisType.Auto,))


def put(x, mesh: jax.sharding.Mesh, spec: jax.P) -> jax.Array:
  """Places a host array (identical on every process) as a global array with ``spec``.

  Works for single- and multi-process meshes: each process fills only its own shards.
  """
  x = np.asarray(x)
  return jax.make_array_from_callback(x.shape, NamedSharding(mesh, spec), lambda idx: x[idx])


def put_tree(tree, mesh, specs):
  return jax.tree.map(lambda x, s: put(x, mesh, s), tree, specs)


def fetch(x) -> np.ndarray:
  """Host copy of a replicated or process-local array (any process)."""
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    if x.is_fully_replicated:
      return np.asarray(x.addressable_data(0))
    from jax.experimental import multihost_utils
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(x)
