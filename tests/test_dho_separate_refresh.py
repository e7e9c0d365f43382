"""``dho.separate_refresh``: the curvature refresh as its own program(s) == the in-step ``lax.cond``.

A caller may compile FOSI / DHO2 as the step with ``update(..., refresh=False)`` plus the refresh
alone, run first on scheduled calls: whole (``refresh``, one program) or one Lanczos iteration per
call (``start`` / ``iterate`` / ``finish``, as the harness does, so that no program holds the HVP
loop). The iterates must be those of the one-program step.
"""
import jax
import numpy as np
import optax
import pytest
from jax import lax

import dho
from tests.test_dho_helpers import AXIS, mesh, sharded_step, softmax_problem

KW = dict(k=3, l=0, m=12, refresh_every=3, alpha=0.1, momentum="heavy_ball")
STEPS = 7   # refreshes at 0-based calls 0, 3, 6 (dho2, W = 1) or 1, 4 (fosi with W = 2)


def _split_steps(tx, state, loss, p, params):
  """(step with refresh=False, refresh alone, stepped refresh, due), each ``jit(shard_map)`` over p
  devices; the stepped refresh runs ``start``, ``iterate`` (one program, called ``iterations`` times)
  and ``finish``, as the harness does."""
  specs = dho.state_specs(state, AXIS)
  sep = dho.separate_refresh(tx)

  def body(params, state, bx, by):
    g = jax.grad(loss)(lax.pcast(params, AXIS, to="varying"), (bx, by))
    u, state = tx.update(g, state, params, batch=(bx, by), refresh=False)
    return optax.apply_updates(params, u), state, u

  def shmap(fn, in_specs, out_specs):
    return jax.jit(jax.shard_map(fn, mesh=mesh(p), in_specs=in_specs, out_specs=out_specs))

  data = (jax.P(), specs, jax.P(AXIS), jax.P(AXIS))
  step = shmap(body, data, (jax.P(), specs, jax.P()))
  refresh = shmap(lambda params, state, bx, by: sep.refresh(state, params, (bx, by)), data, specs)
  lz_specs = dho.state_specs(sep.start(params), AXIS)
  iterate = shmap(lambda params, lz, bx, by: sep.iterate(lz, params, (bx, by)), (jax.P(), lz_specs) + data[2:],
                  lz_specs)
  finish = shmap(lambda params, state, lz: sep.finish(state, lz, params), (jax.P(), specs, lz_specs), specs)

  def stepped(params, state, bx, by):
    lz = sep.start(params)
    for _ in range(sep.iterations(params)):
      lz = iterate(params, lz, bx, by)
    return finish(params, state, lz)
  return step, refresh, stepped, sep.due


@pytest.mark.parametrize("variant", ["fosi", "dho2", "dho2_delay"])
def test_separate_refresh_equals_in_step(variant):
  """Float32 on 8 devices, 7 calls with refreshes at several of them: the two-program run's updates and
  eigenvalues equal the one-program run's (the same functions on the same inputs; XLA may fuse the
  split programs differently, so equality is to float32 rounding, 1e-6)."""
  params, loss, batch = softmax_problem(rows=64)
  base = optax.adam(0.01)
  if variant == "fosi":
    tx = dho.fosi(base, loss, axis_name=AXIS, warmup=2, **KW)
  else:
    tx = dho.dho2(base, loss, num_shards=8, curvature_delay=2 if variant == "dho2_delay" else 0, **KW)
  state0 = tx.init(params)
  one = sharded_step(tx, state0, loss, 8)
  step, refresh, stepped, due = _split_steps(tx, state0, loss, 8, params)
  p1, s1, refreshed = params, state0, []
  split = {"stepped": (stepped, params, state0)}   # as the harness runs it
  if variant == "fosi":   # the whole refresh as one program (the README's split_step covers dho2)
    split["whole"] = (refresh, params, state0)
  for call in range(STEPS):
    p1, s1, u1 = one(p1, s1, *batch)
    if due(split["stepped"][2]):
      refreshed.append(call)
    for name, (refresh_fn, p2, s2) in split.items():
      if due(s2):
        s2 = refresh_fn(p2, s2, *batch)
      p2, s2, u2 = step(p2, s2, *batch)
      jax.block_until_ready((p1, p2))
      split[name] = (refresh_fn, p2, s2)
      for a, b in zip(jax.tree.leaves(u1), jax.tree.leaves(u2)):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-5, atol=1e-6, err_msg=f"{name} call {call}")
  assert refreshed == ([1, 4] if variant == "fosi" else [0, 3, 6]), refreshed
  for name, (_, _, s2) in split.items():
    fs1, fs2 = (s1, s2) if variant == "fosi" else (s1.fosi, s2.fosi)
    assert np.abs(np.asarray(fs1.eigvals)).max() > 0       # a refresh happened and its pairs are in use
    np.testing.assert_allclose(np.asarray(fs2.eigvals), np.asarray(fs1.eigvals), rtol=1e-5, err_msg=name)


def test_without_the_refresh_program_the_pairs_stay_empty():
  """``refresh=False`` really skips the refresh (so the split run's curvature comes from the refresh program):
  after scheduled calls the eigenvalues are still the empty pairs' zeros."""
  params, loss, batch = softmax_problem(rows=64)
  tx = dho.dho2(optax.adam(0.01), loss, num_shards=8, **KW)
  step, _, _, due = _split_steps(tx, tx.init(params), loss, 8, params)
  state = tx.init(params)
  assert due(state)                                       # call 0 is scheduled (W = 1)
  params, state, _ = step(params, state, *batch)
  assert not due(state) and float(np.abs(np.asarray(state.fosi.eigvals)).max()) == 0.0


def test_bad_refresh_arguments_are_refused():
  params, loss, batch = softmax_problem(rows=64)
  tx = dho.fosi(optax.adam(0.01), loss, axis_name=None, **KW)
  state = tx.init(params)
  with pytest.raises(ValueError, match="refresh must be None"):
    tx.update(params, state, params, batch=batch, refresh=jax.numpy.array(True))
  with pytest.raises(ValueError, match="separate_refresh needs the transformation"):
    dho.separate_refresh(optax.chain(optax.identity(), tx))
  consensus = dho.dho2(optax.sgd(0.1), loss, axis_name=None, admm="consensus", admm_rho=1.0, admm_period=2, **KW)
  with pytest.raises(ValueError, match="separate_refresh needs"):
    dho.separate_refresh(consensus)
  with pytest.raises(ValueError, match="takes no refresh argument"):
    consensus.update(params, consensus.init(params), params, batch=batch, refresh=False)
