"""The collective-byte counter on programs whose traffic is known exactly."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from common.comm import COMPILED, LOWERED, collective_bytes, dense_allreduce_present, lowered_collective_bytes

P = jax.P


def _mesh(n):
  return jax.make_mesh((n,), ("data",), devices=jax.devices()[:n], axis_types=(jax.sharding.AxisType.Auto,))


def _lowered(fn, n, *args, in_specs, out_specs):
  return jax.jit(jax.shard_map(fn, mesh=_mesh(n), in_specs=in_specs, out_specs=out_specs)).lower(*args)


def _count(fn, n, *args, in_specs, out_specs, taken=None):
  """The compiled program's count, after checking that the lowered program's count (StableHLO, parsed
  independently) gives the same payload, wire bytes and per-execution kinds: these programs send f32/u8,
  which XLA:CPU does not upcast, so the two texts must agree."""
  lowered = _lowered(fn, n, *args, in_specs=in_specs, out_specs=out_specs)
  compiled = collective_bytes(lowered.compile(), taken)
  text = lowered_collective_bytes(lowered, taken)
  assert (text.payload, text.wire, text.notes != ()) == (compiled.payload, compiled.wire, compiled.notes != ())
  assert sorted(c.kind for c in text.collectives for _ in range(c.count)) == \
      sorted(c.kind for c in compiled.collectives for _ in range(c.count))
  assert (compiled.source, text.source) == (COMPILED, LOWERED)
  return compiled


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


def test_loop_trip_count_from_the_lowered_scan():
  """``lax.scan`` lowers to a ``stablehlo.while`` counting 0..length; both texts count 7 trips."""
  def f(x):
    body = lambda c, _: (lax.pcast(lax.psum(c, "data"), "data", to="varying"), None)
    return lax.scan(body, x, None, length=7)[0]
  r = _count(f, 4, jnp.ones(64), in_specs=P("data"), out_specs=P("data"))
  assert r.payload == 7 * 64


def test_taken_picks_the_branch_in_both_texts():
  def f(x, flag):
    def summed(v):
      return lax.pcast(lax.psum(v, "data"), "data", to="varying")

    def doubled(v):
      return v * 2.0
    return lax.cond(flag[0] > 0, summed, doubled, x)
  args = dict(in_specs=(P("data"), P("data")), out_specs=P("data"))
  assert _count(f, 4, jnp.ones(64), jnp.ones(4), taken={"summed": True}, **args).payload == 64
  assert _count(f, 4, jnp.ones(64), jnp.ones(4), taken={"summed": False}, **args).payload == 0


@pytest.mark.parametrize("op, out", [
    (lambda x: lax.psum(x, "data"), P()),                                         # all-reduce of bf16[16]
    (lambda x: lax.psum_scatter(x, "data", tiled=True), P("data")),               # reduce-scatter, operand bf16[16]
    (lambda x: lax.all_gather(x, "data", tiled=True, to="invarying"), P()),       # all-gather, operand bf16[16]
    (lambda x: lax.ppermute(x, "data", [(i, (i + 1) % 4) for i in range(4)]), P("data")),   # collective-permute
    (lambda x: lax.all_to_all(x, "data", 0, 0, tiled=True), P("data")),           # all-to-all of bf16[16]
], ids=["psum", "psum_scatter", "all_gather", "ppermute", "all_to_all"])
def test_bf16_lowered_counts_2_bytes_compiled_counts_the_f32_it_runs_on_cpu(op, out):
  """XLA:CPU sends these bf16 collectives as f32 (convert, f32 collective, convert): the compiled text
  counts 4 B per element, the lowered program 2 B, the dtype the program sends."""
  want = 16 * 2                                   # each of 4 devices contributes its bf16[16]
  lowered = _lowered(op, 4, jnp.ones(64, jnp.bfloat16), in_specs=P("data"), out_specs=out)
  text, compiled = lowered_collective_bytes(lowered), collective_bytes(lowered.compile())
  assert text.payload == want and text.collectives[0].dtypes == ("bf16",)
  assert "from the lowered program" in text.summary() and "from the compiled program" in compiled.summary()
  if jax.default_backend() == "cpu":
    assert compiled.payload == 2 * want and set(compiled.collectives[0].dtypes) == {"f32"}   # all-to-all: a tuple
  else:
    assert compiled.payload == want


def test_sfb_bf16_factors_report_their_bf16_payload():
  """tests/test_sfb_user_losses.py's bf16 case: the lowered count equals ``sfb.payload_bytes`` (2 B per
  factor entry); the compiled count on CPU is twice that (the gathers run in f32)."""
  import sfb
  from tests.test_sfb_user_losses import MLP, _ce_loss, _data, _mean_gradient_fn
  model = MLP(dtype=jnp.bfloat16)
  loss_fn = _ce_loss(model)
  x, y = _data()
  params = model.init(jax.random.key(0), x[:1])
  plan = sfb.plan(loss_fn, params, x, y, num_devices=8, rule="always")
  lowered = _mean_gradient_fn(loss_fn, plan).lower(params, x, y)
  text = lowered_collective_bytes(lowered)
  assert text.payload == sfb.payload_bytes(plan) and {c.dtypes for c in text.collectives} == {("bf16",)}
  if jax.default_backend() == "cpu":
    assert collective_bytes(lowered.compile()).payload == 2 * sfb.payload_bytes(plan)


def test_lowered_input_errors():
  assert lowered_collective_bytes("module @m {\n}\n").payload == 0
  with pytest.raises(TypeError):
    lowered_collective_bytes(3)
  dynamic = ('  %1 = "stablehlo.all_gather"(%0) <{all_gather_dim = 0 : i64, replica_groups = dense<[[0, 1]]> : '
             'tensor<1x2xi64>}> : (tensor<?xf32>) -> tensor<?xf32>')
  with pytest.raises(ValueError, match="dynamically shaped"):
    lowered_collective_bytes(f"module @m {{\n  func.func public @main() {{\n{dynamic}\n  }}\n}}\n")


def test_taken_when_the_cond_sits_inside_a_function_of_the_branch_name():
  """dho's ``_Setup.refresh`` calls ``maybe_refresh``, whose ``lax.cond`` branch is also named ``refresh``: the
  no-op branch's terminator carries the cond's own location (a stack through ``_Setup.refresh``), which
  must not make it a ``refresh`` branch too."""
  def refresh(x, flag):                # the enclosing function
    def refresh(v):                    # the branch
      return lax.pcast(lax.psum(v, "data"), "data", to="varying")
    return lax.cond(flag[0] > 0, refresh, lambda v: v, x)
  args = dict(in_specs=(P("data"), P("data")), out_specs=P("data"))
  assert _count(refresh, 4, jnp.ones(64), jnp.ones(4), taken={"refresh": True}, **args).payload == 64
  assert _count(refresh, 4, jnp.ones(64), jnp.ones(4), taken={"refresh": False}, **args).payload == 0
