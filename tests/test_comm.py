"""The collective-byte counter on programs whose traffic is known exactly."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from common.comm import collective_bytes, dense_allreduce_present, step_bytes

P = jax.P


def _mesh(n):
  return jax.make_mesh((n,), ("data",), devices=jax.devices()[:n], axis_types=(jax.sharding.AxisType.Auto,))


def _count(fn, n, *args, in_specs, out_specs):
  return step_bytes(jax.jit(jax.shard_map(fn, mesh=_mesh(n), in_specs=in_specs, out_specs=out_specs)), *args)


def test_psum_over_four_devices():
  r = _count(lambda x: lax.psum(x, "data"), 4, jnp.ones(64), in_specs=P("data"), out_specs=P())
  assert (r.payload, r.wire) == (64, 96)  # f32[16] per device; ring 2 * 3/4 * 64
  assert [c.kind for c in r.collectives] == ["all-reduce"]


def test_uint8_all_gather():
  r = _count(lambda x: lax.all_gather(x, "data", tiled=True, to="invarying"), 2,
             jnp.ones(32, jnp.uint8), in_specs=P("data"), out_specs=P())
  assert (r.payload, r.wire) == (16, 16)  # each sends its u8[16]; result u8[32]
  assert r.collectives[0].dtypes == ("u8",)


def test_reduce_scatter():
  r = _count(lambda x: lax.psum_scatter(x, "data", tiled=True), 4, jnp.ones(256),
             in_specs=P("data"), out_specs=P("data"))
  assert (r.payload, r.wire) == (256, 192)  # operand f32[64]; ring (n-1) * 64 B


def test_collective_in_loop_counted_per_trip():
  def f(x):
    def body(i, c):  # loop-carried, so XLA cannot hoist the psum out of the loop
      return lax.pcast(lax.psum(c, "data") * 0.5, "data", to="varying")
    return lax.fori_loop(0, 5, body, x)
  r = _count(f, 4, jnp.ones(64), in_specs=P("data"), out_specs=P("data"))
  assert r.payload == 5 * 64 and r.collectives[0].count == 5


def test_conditional_counts_dearest_branch_and_is_flagged():
  def f(x, flag):
    summed = lambda v: lax.pcast(lax.psum(v, "data"), "data", to="varying")
    return lax.cond(flag[0] > 0, summed, lambda v: v * 2.0, x)
  r = _count(f, 4, jnp.ones(64), jnp.ones(4), in_specs=(P("data"), P("data")), out_specs=P("data"))
  assert r.payload == 64
  assert any("conditional" in n for n in r.notes)


def _loss(w, x):
  return jnp.mean((x @ w) ** 2)


def test_hidden_allreduce_of_replicated_params_detected_and_absent_with_pcast():
  w, x = jnp.ones((32, 16)), jnp.ones((64, 32))

  def naive(w, x):  # grad w.r.t. replicated w: the transpose inserts an f32 all-reduce
    return jax.grad(_loss)(w, x)

  def local(w, x):  # grad at varying params: this device's own gradient, no collective
    return jax.grad(_loss)(lax.pcast(w, "data", to="varying"), x)

  r_naive = _count(naive, 8, w, x, in_specs=(P(), P("data")), out_specs=P())
  r_local = _count(local, 8, w, x, in_specs=(P(), P("data")), out_specs=P("data"))
  assert dense_allreduce_present(r_naive, 32 * 16)
  assert r_naive.payload == 32 * 16 * 4
  assert not dense_allreduce_present(r_local, 32 * 16) and r_local.payload == 0


def test_text_input_and_bad_type():
  assert collective_bytes("HloModule m\n").payload == 0
  with pytest.raises(TypeError):
    collective_bytes(3)


def test_all_to_all_and_collective_permute():
  r = _count(lambda x: lax.all_to_all(x, "data", 0, 0, tiled=True), 4, jnp.ones(64),
             in_specs=P("data"), out_specs=P("data"))
  assert [c.kind for c in r.collectives] == ["all-to-all"]
  assert (r.payload, r.wire) == (64, 48)  # f32[16] per device; 3/4 of it leaves the device
  perm = [(i, (i + 1) % 4) for i in range(4)]
  r = _count(lambda x: lax.ppermute(x, "data", perm), 4, jnp.ones(64), in_specs=P("data"), out_specs=P("data"))
  assert [c.kind for c in r.collectives] == ["collective-permute"] and r.payload == 64
