"""The user's SPMD plumbing: the mesh, placing host arrays, per-device optimizer state, and the
``jit(shard_map(...))`` step every transformation is driven by (README "Using a transformation in
your own shard_map step").

Per-device state leaves (DHO2 coordinate slices, sign1bit's per-worker counters and error, and the
local gradients ``optax.MultiSteps`` accumulates) are stored with a leading axis of size P under
``P("data")``; the step drops that axis on entry and re-adds it on exit.
"""
from __future__ import annotations

from typing import Callable

import dho
import jax
import jax.numpy as jnp
import numpy as np
import optax
import sign1bit
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


def _false(tree):
  return jax.tree.map(lambda _: False, tree)


def per_device_marks(state, local_grads: bool = True):
  """bool tree over ``state``: True on leaves that differ per device.

  Finds the packages' states anywhere in a chain / ``inject_hyperparams`` / ``MultiSteps`` state
  (``dho.sharded_leaves`` and ``sign1bit.worker_leaves`` take only the package's own state):
  ``dho.sharded_leaves`` on each ``Dho2State``, ``sign1bit.worker_leaves`` on each sign1bit state,
  and ``MultiStepsState.acc_grads`` when the accumulated gradients are local ones.
  """
  def mark(node):
    if isinstance(node, dho.Dho2State):
      return dho.sharded_leaves(node)
    if isinstance(node, (sign1bit.OneBitGCState, sign1bit.EFSignSGDState)):
      return sign1bit.worker_leaves(node)
    if isinstance(node, optax.MultiStepsState):
      inner = per_device_marks(node.inner_opt_state, local_grads)
      acc = jax.tree.map(lambda _: local_grads, node.acc_grads)
      return node._replace(mini_step=False, gradient_step=False, inner_opt_state=inner, acc_grads=acc,
                           skip_state=_false(node.skip_state))
    return None

  def walk(node):
    found = mark(node)
    if found is not None:
      return found
    if hasattr(node, "_fields"):
      return type(node)(*(walk(getattr(node, f)) for f in node._fields))
    if isinstance(node, (tuple, list)):
      return type(node)(walk(n) for n in node)
    if isinstance(node, dict):
      return {k: walk(v) for k, v in node.items()}
    return _false(node)

  return walk(state)


def specs_of(marks):
  return jax.tree.map(lambda m: jax.P(AXIS) if m else jax.P(), marks)


def stack(state, marks, num_devices: int):
  """Host-side: per-device leaves broadcast to a leading axis of size P."""
  return jax.tree.map(lambda a, m: np.broadcast_to(np.asarray(a), (num_devices,) + np.shape(a)) if m
                      else np.asarray(a), state, marks)


def own(state, marks):
  return jax.tree.map(lambda a, m: a[0] if m else a, state, marks)


def restack(state, marks):
  return jax.tree.map(lambda a, m: a[None] if m else a, state, marks)


def varying(tree):
  return jax.tree.map(lambda a: lax.pcast(a, AXIS, to="varying"), tree)


def sharded_step(mesh, body: Callable, marks, data_specs: tuple, donate: bool = False):
  """``jit(shard_map(step))`` with ``step(params, state, *data) -> (params, state)``.

  ``body(params, state, *local_data) -> (updates, state)`` sees this device's state (per-device
  leaves without their leading axis) and its shard of the data.
  """
  specs = specs_of(marks)

  def step(params, state, *data):
    updates, state = body(params, own(state, marks), *data)
    return optax.apply_updates(params, updates), restack(state, marks)

  sm = jax.shard_map(step, mesh=mesh, in_specs=(jax.P(), specs) + tuple(data_specs),
                     out_specs=(jax.P(), specs))
  return fast_jit(sm, donate_argnums=(0, 1) if donate else ())


def place_state(state, marks, mesh):
  host = stack(state, marks, mesh.shape[AXIS])
  return jax.tree.map(lambda a, s: put(a, mesh, s), host, specs_of(marks))


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
