"""The conformance contract every optax transformation of this repository satisfies.

An algorithm registers ``Entry`` objects in ``tests/conformance_<package>.py`` (a module-level
list ``ENTRIES``); ``tests/test_conformance.py`` runs every entry through every check:

  * init/update under ``jax.jit`` on one device (``axis_name=None``), finite updates shaped
    like the params, and a compiled program with no collectives at all;
  * it works inside ``optax.chain`` and ``optax.inject_hyperparams`` (same updates);
  * the state's tree structure, shapes and dtypes are stable across steps (under jit and
    inside ``shard_map``);
  * inside ``jax.shard_map`` over 8 devices with local gradients (params ``pcast`` to varying)
    it runs and keeps params replicated;
  * where the algorithm is exact, the sharded steps equal the single-device steps on the
    global batch;
  * the bytes measured from the compiled sharded update equal the entry's declared payload;
  * a second update with same-shaped inputs does not recompile (optax's own check).

``init`` returns the global layout of the state (per-worker leaves with a leading axis of size
P) and the entry's ``state_specs`` places it; nothing is stacked or unstacked by hand here.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

AXIS = "data"


def softmax_problem(param_seed: int, data_seed: int):
  """A small softmax regression (12 features, 5 classes, 32 rows) shared by several packages'
  entries: returns ``(params_fn, loss_fn, data_fn)``."""

  def params():
    k1, _ = jax.random.split(jax.random.key(param_seed))
    return {"w": jax.random.normal(k1, (12, 5)) * 0.1, "b": jnp.zeros((5,))}

  def loss(params, x, y):
    logits = x @ params["w"] + params["b"]
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

  def data():
    rng = np.random.default_rng(data_seed)
    return rng.normal(size=(32, 12)).astype(np.float32), rng.integers(0, 5, 32).astype(np.int32)

  return params, loss, data


@dataclasses.dataclass(frozen=True)
class Entry:
  """One transformation under test.

  Attributes:
    name: test id.
    make: ``make(axis_name=..., **hparams) -> GradientTransformation``.
    hparams: numeric hyperparameters (``inject_hyperparams`` schedules them).
    params: ``() -> params`` (small, float32 unless the entry says otherwise).
    loss_fn: ``(params, x, y) -> scalar`` mean loss over the rows given.
    data: ``() -> (x, y)`` the global batch; rows divisible by 8.
    grad_fn: ``(params, x, y) -> grads`` (what ``update`` receives); default
      ``jax.grad(loss_fn)``. Called at varying params inside ``shard_map``.
    extra_args: ``(params, x, y) -> dict`` of keyword arguments for ``update``, computed from
      the data the device holds (local rows inside ``shard_map``, all rows on one device).
    state_specs: ``(state, axis_name) -> PartitionSpec tree`` (the package's ``state_specs``:
      ``P(axis)`` on per-worker leaves, which ``init`` stores with a leading axis of size P);
      default: everything replicated.
    exact: sharded result equals the single-device result on the global batch.
    payload_bytes: ``P -> bytes`` each device sends per update; None skips the byte check.
    steps: updates to run.
    rtol, atol: tolerance of the exactness check.
  """
  name: str
  make: Callable[..., optax.GradientTransformation]
  params: Callable[[], Any]
  loss_fn: Callable[[Any, Any, Any], jax.Array]
  data: Callable[[], tuple[np.ndarray, np.ndarray]]
  hparams: dict = dataclasses.field(default_factory=dict)
  grad_fn: Callable | None = None
  extra_args: Callable | None = None
  state_specs: Callable | None = None
  exact: bool = True
  payload_bytes: Callable[[int], float] | None = None
  steps: int = 3
  rtol: float = 1e-5
  atol: float = 1e-6

  def grads(self, params, x, y):
    if self.grad_fn is not None:
      return self.grad_fn(params, x, y)
    return jax.grad(self.loss_fn)(params, x, y)

  def extras(self, params, x, y) -> dict:
    return self.extra_args(params, x, y) if self.extra_args else {}


  def specs(self, state):
    if self.state_specs is None:
      return jax.tree.map(lambda _: jax.P(), state)
    return self.state_specs(state, AXIS)


def single_device_run(entry: Entry, tx: optax.GradientTransformation | None = None, steps=None):
  """Runs ``steps`` jitted updates on one device with the global batch; returns (params, states)."""
  tx = tx or entry.make(axis_name=None, **entry.hparams)
  params = entry.params()
  x, y = entry.data()
  state = jax.jit(tx.init)(params)
  states = [state]

  @jax.jit
  def step(params, state):
    g = entry.grads(params, x, y)
    updates, state = tx.update(g, state, params, **entry.extras(params, x, y))
    return optax.apply_updates(params, updates), state, updates

  for _ in range(steps or entry.steps):
    params, state, _ = step(params, state)
    states.append(state)
  return params, states


def sharded_step_fn(entry: Entry, mesh: jax.sharding.Mesh):
  """The jitted ``shard_map`` step: local grads at ``pcast`` params, ``tx`` exchanges."""
  tx = entry.make(axis_name=AXIS, **entry.hparams)
  params0 = entry.params()
  state0 = tx.init(params0)
  specs = entry.specs(state0)

  def body(params, state, x, y):
    g = entry.grads(lax.pcast(params, AXIS, to="varying"), x, y)
    updates, state = tx.update(g, state, params, **entry.extras(params, x, y))
    return optax.apply_updates(params, updates), state

  step = jax.jit(jax.shard_map(body, mesh=mesh, in_specs=(jax.P(), specs, jax.P(AXIS), jax.P(AXIS)),
                               out_specs=(jax.P(), specs)))
  return step, params0, state0


def placed(tree, specs, mesh):
  """``tree`` as global arrays laid out by ``specs`` on ``mesh``."""
  return jax.tree.map(lambda a, s: jax.device_put(a, jax.NamedSharding(mesh, s)), tree, specs)


def sharded_run(entry: Entry, mesh, steps=None):
  step, params, state = sharded_step_fn(entry, mesh)
  params, state = placed(params, jax.tree.map(lambda _: jax.P(), params), mesh), placed(state, entry.specs(state), mesh)
  x, y = entry.data()
  states = [state]
  for _ in range(steps or entry.steps):
    params, state = step(params, state, x, y)
    jax.block_until_ready(params)  # never queue collective steps on CPU
    states.append(state)
  return params, states, step
