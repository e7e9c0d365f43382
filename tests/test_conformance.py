"""Runs every registered transformation through the conformance checks (tests/conformance.py)."""
import importlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from common.comm import collective_bytes
from tests.conformance import AXIS, Entry, sharded_run, sharded_step_fn, single_device_run

_MODULES = ("dense", "powersgd", "sfb", "sign1bit", "vr_prox", "dho")


def _entries() -> list[Entry]:
  entries = []
  for name in _MODULES:
    try:
      module = importlib.import_module(f"tests.conformance_{name}")
    except ModuleNotFoundError as e:
      if e.name != f"tests.conformance_{name}":
        raise
      continue
    entries += module.ENTRIES
  return entries


ENTRIES = _entries()
ids = [e.name for e in ENTRIES]


def _mesh():
  return jax.make_mesh((8,), (AXIS,), axis_types=(jax.sharding.AxisType.Auto,))


def _assert_same_structure(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    assert (jnp.shape(u), jnp.asarray(u).dtype) == (jnp.shape(v), jnp.asarray(v).dtype)


@pytest.mark.parametrize("entry", ENTRIES, ids=ids)
def test_single_device_jit_finite_and_shaped(entry):
  params, states = single_device_run(entry)
  for p0, p in zip(jax.tree.leaves(entry.params()), jax.tree.leaves(params)):
    assert p.shape == p0.shape and p.dtype == p0.dtype
    assert bool(jnp.all(jnp.isfinite(p)))
  assert not jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)),
                                       entry.params(), params)), "update changed nothing"
  for s in states[1:]:
    _assert_same_structure(states[0], s)


@pytest.mark.parametrize("entry", ENTRIES, ids=ids)
def test_single_device_has_no_collectives(entry):
  tx = entry.make(axis_name=None, **entry.hparams)
  params = entry.params()
  x, y = entry.data()
  state = tx.init(params)

  def update(params, state):
    return tx.update(entry.grads(params, x, y), state, params, **entry.extras(params, x, y))

  report = collective_bytes(jax.jit(update).lower(params, state).compile())
  assert report.collectives == (), report.summary()


@pytest.mark.parametrize("entry", ENTRIES, ids=ids)
def test_chain_and_inject_hyperparams(entry):
  ref, _ = single_device_run(entry, steps=2)
  chained, _ = single_device_run(
      entry, optax.chain(entry.make(axis_name=None, **entry.hparams), optax.identity()), steps=2)
  injected_tx = optax.inject_hyperparams(entry.make)(axis_name=None, **entry.hparams)
  injected, _ = single_device_run(entry, injected_tx, steps=2)
  for a, b, c in zip(jax.tree.leaves(ref), jax.tree.leaves(chained), jax.tree.leaves(injected)):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(a, c, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("entry", ENTRIES, ids=ids)
def test_sharded_runs_and_state_is_stable(entry):
  params, states, _ = sharded_run(entry, _mesh())
  for s in states[1:]:
    _assert_same_structure(states[0], s)
  for p in jax.tree.leaves(params):
    assert p.sharding.is_fully_replicated and bool(jnp.all(jnp.isfinite(p)))


@pytest.mark.parametrize("entry", [e for e in ENTRIES if e.exact], ids=[e.name for e in ENTRIES if e.exact])
def test_sharded_equals_single_device(entry):
  sharded, _, _ = sharded_run(entry, _mesh())
  single, _ = single_device_run(entry)
  for a, b in zip(jax.tree.leaves(sharded), jax.tree.leaves(single)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=entry.rtol, atol=entry.atol)


@pytest.mark.parametrize("entry", [e for e in ENTRIES if e.payload_bytes],
                         ids=[e.name for e in ENTRIES if e.payload_bytes])
def test_measured_bytes_equal_declared_payload(entry):
  mesh = _mesh()
  step, params, state = sharded_step_fn(entry, mesh)
  x, y = entry.data()
  report = collective_bytes(step.lower(params, state, x, y).compile())
  assert report.payload == pytest.approx(entry.payload_bytes(8)), report.summary()


@pytest.mark.parametrize("entry", ENTRIES, ids=ids)
def test_second_update_does_not_recompile(entry):
  """optax's no-recompile check: the state an update returns has the structure, shapes, dtypes,
  weak types and shardings of the one it got, so a second step reuses the compiled program (on one
  device and in the sharded step)."""
  tx = entry.make(axis_name=None, **entry.hparams)
  params = entry.params()
  x, y = entry.data()
  update = jax.jit(lambda p, s: tx.update(entry.grads(p, x, y), s, p, **entry.extras(p, x, y)))
  state = tx.init(params)
  for _ in range(2):
    _, state = update(params, state)
  assert update._cache_size() == 1
  _, _, step = sharded_run(entry, _mesh(), steps=2)
  assert step._cache_size() == 1
