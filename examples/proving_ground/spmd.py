"""The user's SPMD plumbing: the mesh, placing host arrays, per-device optimizer state, and the
``jit(shard_map(...))`` step every transformation is driven by (README "Using a transformation in
your own shard_map step").

Per-device state leaves (DHO2 coordinate slices, sign1bit's per-worker counters and error, and the
local gradients ``dho.multi_steps`` / ``sign1bit.multi_steps`` accumulate) come from ``init`` with a
leading axis of size P and are placed under ``P("data")``; inside the step each device sees its own
row (leading axis 1), which ``update`` takes and returns (issue 12).
"""
from __future__ import annotations

from typing import Callable

import dho
import jax
import numpy as np
import optax
from jax import lax

AXIS = "data"


# Small programs: LLVM's optimisation costs more than it saves (halves compile time on CPU). The
# same options compile the references, so both sides run the same code generator.
COMPILER_OPTIONS = {"xla_backend_optimization_level": 0}


def fast_jit(fn, **jit_kwargs):
  """``jax.jit(fn, **jit_kwargs)`` compiled with ``COMPILER_OPTIONS`` on its first call."""
  jitted = jax.jit(fn, **jit_kwargs)
  compiled = []

  def call(*args):
    if not compiled:
      compiled.append(jitted.lower(*args).compile(compiler_options=COMPILER_OPTIONS))
    return compiled[0](*args)

  return call


def make_mesh() -> jax.sharding.Mesh:
  """1-D mesh ``("data",)`` over every device of every process (Auto axis type)."""
  return jax.sharding.Mesh(np.asarray(jax.devices()), (AXIS,),
                           axis_types=(jax.sharding.AxisType.Auto,))


def put(x, mesh, spec) -> jax.Array:
  """A host array (the same on every process) as a global array; each process fills its shards."""
  x = np.asarray(x)
  return jax.make_array_from_callback(x.shape, jax.sharding.NamedSharding(mesh, spec), lambda i: x[i])


def fetch(x) -> np.ndarray:
  """Host copy of a replicated global array (any process)."""
  return np.asarray(x.addressable_data(0)) if isinstance(x, jax.Array) else np.asarray(x)


def per_device_marks(state):
  """bool tree over ``state``: True on the leaves that differ per device.

  The packages' own finder (issue 12: ``init`` returns the global layout, per-worker leaves with a
  leading axis of size P; the finder is the same module in ``dho`` and ``sign1bit``), which finds
  their states anywhere in a chain / ``inject_hyperparams`` / ``multi_steps`` state and refuses a
  plain ``optax.MultiSteps`` (its accumulated local gradients differ per device).
  """
  return dho.axis.per_worker(state)


def specs_of(marks):
  return jax.tree.map(lambda m: jax.P(AXIS) if m else jax.P(), marks)


def varying(tree):
  return jax.tree.map(lambda a: lax.pcast(a, AXIS, to="varying"), tree)


def sharded_step(mesh, body: Callable, marks, data_specs: tuple, donate: bool = False):
  """``jit(shard_map(step))`` with ``step(params, state, *data) -> (params, state)``.

  ``body(params, state, *local_data) -> (updates, state)`` sees this device's view of the state
  (per-device leaves with a leading axis of 1, which ``update`` takes and returns) and its shard
  of the data.
  """
  specs = specs_of(marks)

  def step(params, state, *data):
    updates, state = body(params, state, *data)
    return optax.apply_updates(params, updates), state

  sm = jax.shard_map(step, mesh=mesh, in_specs=(jax.P(), specs) + tuple(data_specs),
                     out_specs=(jax.P(), specs))
  return fast_jit(sm, donate_argnums=(0, 1) if donate else ())


def place_state(state, marks, mesh):
  """The global-layout state ``init`` returned, placed: per-device leaves ``P(AXIS)``."""
  return jax.tree.map(lambda a, s: put(a, mesh, s), state, specs_of(marks))


def run_steps(step, params, state, data_per_step, check_donation: bool = False, progress=None):
  """Runs the jitted step once per entry of ``data_per_step``, blocking every step (CPU
  collectives deadlock when steps queue). Returns host params; with ``check_donation`` raises
  if a donated params buffer survived the call. ``progress["step"]`` counts calls started."""
  for t, data in enumerate(data_per_step):
    if progress is not None:
      progress["step"] = t + 1
    before = jax.tree.leaves(params)
    params, state = step(params, state, *data)
    jax.block_until_ready(params)
    if check_donation and not all(b.is_deleted() for b in before):
      raise AssertionError("donate_argnums=(0, 1) but the params buffers were not donated")
  return jax.tree.map(fetch, params)
