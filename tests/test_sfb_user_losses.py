"""SFB inside a user's own project (issue 11, items 2.1-2.4): losses that use a factored kernel
outside its Dense call, nn.remat / nn.scan models, bf16 layers, and the chain order.

Every gradient is compared with single-device ``jax.grad`` of the same loss on the global batch.
"""
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax import lax

import sfb
from common.comm import collective_bytes, dense_allreduce_present

AXIS, P, ROWS = "data", 8, 2


def _mesh():
  return jax.make_mesh((P,), (AXIS,), axis_types=(jax.sharding.AxisType.Auto,))


def _sharded(body, out_specs=jax.P()):
  return jax.jit(jax.shard_map(body, mesh=_mesh(), in_specs=(jax.P(), jax.P(AXIS), jax.P(AXIS)),
                               out_specs=out_specs))


def _mean_gradient_fn(loss_fn, plan):
  grad_fn = sfb.factored_value_and_grad(loss_fn, plan)

  def body(params, x, y):
    _, grads = grad_fn(lax.pcast(params, AXIS, to="varying"), x, y)
    return sfb.sfb_mean_gradient(grads, AXIS, params)

  return _sharded(body)


def _rel_err(got, want):
  num = sum(float(jnp.sum((jnp.asarray(a, jnp.float32) - jnp.asarray(b, jnp.float32)) ** 2))
            for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)))
  den = sum(float(jnp.sum(jnp.asarray(b, jnp.float32) ** 2)) for b in jax.tree.leaves(want))
  return (num / den) ** 0.5


def _data(features=12, classes=5, seed=0):
  kx, ky = jax.random.split(jax.random.key(seed))
  return (jax.random.normal(kx, (P * ROWS, features)),
          jax.random.randint(ky, (P * ROWS,), 0, classes))


class MLP(nn.Module):
  widths: tuple = (16,)
  outputs: int = 5
  dtype: object = None

  @nn.compact
  def __call__(self, x):
    for w in self.widths:
      x = nn.relu(nn.Dense(w, dtype=self.dtype)(x))
    return nn.Dense(self.outputs, dtype=self.dtype)(x)


class TiedAutoencoder(nn.Module):
  """Decoder ``h @ kernelᵀ`` shares the encoder Dense's kernel (tied weights)."""

  @nn.compact
  def __call__(self, x):
    encoder = nn.Dense(6)
    h = jnp.tanh(encoder(x))
    return h @ encoder.variables["params"]["kernel"].T


def _ce_loss(model, penalty=0.0):
  def loss_fn(params, x, y):
    data = optax.softmax_cross_entropy_with_integer_labels(model.apply(params, x), y).mean()
    if not penalty:
      return data
    kernel = params["params"]["Dense_0"]["kernel"]
    bias = params["params"]["Dense_0"]["bias"]
    return data + penalty * (jnp.sum(kernel ** 2) + jnp.sum(bias ** 2))
  return loss_fn


# --- 1. a factored kernel used outside its Dense call -------------------------------------------


def test_l2_penalty_written_in_the_loss_travels_dense_next_to_the_factors():
  """loss + 1e-2·Σ(kernel² + bias²) of Dense_0: the penalty's gradient is not lost (it was: 0.24
  relative error), it is pmean-ed densely, and the plan and the measured bytes both show it."""
  model = MLP()
  loss_fn = _ce_loss(model, penalty=1e-2)
  x, y = _data()
  params = model.init(jax.random.key(0), x[:1])
  plan = sfb.plan(loss_fn, params, x, y, num_devices=P, rule="always")
  fn = _mean_gradient_fn(loss_fn, plan)
  assert _rel_err(fn(params, x, y), jax.grad(loss_fn)(params, x, y)) <= 1e-5

  dense0 = plan.layers[0]
  assert (dense0.name, dense0.extra_floats) == ("Dense_0", 12 * 16 + 16)
  assert plan.layers[1].extra_floats == 0
  assert "+ dense" in plan.table().splitlines()[3]
  report = collective_bytes(fn.lower(params, x, y).compile())
  assert report.payload == sfb.payload_bytes(plan), report.summary()
  assert dense_allreduce_present(report, 12 * 16), report.summary()
  # the byte rules see the extra term: a 64→64 layer that SFB wins (P·b·(J+D) = 2,048 < 4,160
  # floats) goes dense once its kernel also travels densely
  wide = MLP(widths=(64,))
  xw = jax.random.normal(jax.random.key(2), (P * ROWS, 64))
  pw = wide.init(jax.random.key(0), xw[:1])
  assert sfb.plan(_ce_loss(wide), pw, xw, y, num_devices=P).layers[0].use_sfb
  assert not sfb.plan(_ce_loss(wide, 1e-2), pw, xw, y, num_devices=P).layers[0].use_sfb


def test_tied_weights_get_both_gradient_terms():
  model = TiedAutoencoder()
  x, _ = _data()
  y = jnp.zeros((P * ROWS,))
  params = model.init(jax.random.key(0), x[:1])
  loss_fn = lambda p, x, y: jnp.mean((model.apply(p, x) - x) ** 2)
  plan = sfb.plan(loss_fn, params, x, y, num_devices=P, rule="always")
  assert plan.layers[0].extra_floats == 12 * 6      # kernel used again; the bias is not
  got = _mean_gradient_fn(loss_fn, plan)(params, x, y)
  assert _rel_err(got, jax.grad(loss_fn)(params, x, y)) <= 1e-5


def test_without_an_extra_use_no_dense_term_is_sent():
  """Detection is structural (trace time): a plain loss gets no extra all-reduce at all."""
  model = MLP()
  loss_fn = _ce_loss(model)
  x, y = _data()
  params = model.init(jax.random.key(0), x[:1])
  plan = sfb.plan(loss_fn, params, x, y, num_devices=P, rule="always")
  assert all(l.extra_floats == 0 for l in plan.layers)
  report = collective_bytes(_mean_gradient_fn(loss_fn, plan).lower(params, x, y).compile())
  assert report.of_kind("all-reduce") == () and report.payload == sfb.payload_bytes(plan), report.summary()


def test_plan_of_a_different_loss_is_refused():
  model = MLP()
  x, y = _data()
  params = model.init(jax.random.key(0), x[:1])
  plan = sfb.plan(_ce_loss(model), params, x, y, num_devices=P, rule="always")
  with pytest.raises(ValueError, match="Dense_0.*used outside its Dense call.*sfb.plan"):
    sfb.factored_value_and_grad(_ce_loss(model, 1e-2), plan)(params, x[:ROWS], y[:ROWS])


# --- 2. nn.remat / nn.scan -----------------------------------------------------------------------


class Block(nn.Module):
  @nn.compact
  def __call__(self, x, _=None):
    return nn.relu(nn.Dense(12)(x)), None


class Lifted(nn.Module):
  kind: str

  @nn.compact
  def __call__(self, x):
    x = nn.Dense(12)(x)
    if self.kind == "remat":
      x, _ = nn.remat(Block)()(x)
    else:
      x, _ = nn.scan(Block, variable_axes={"params": 0}, split_rngs={"params": True}, length=3)()(x, None)
    return nn.Dense(5)(x)


@pytest.mark.parametrize("kind, lifted", [("remat", "CheckpointBlock_0"), ("scan", "ScanBlock_0")])
def test_remat_and_scan_layers_are_refused_by_name_and_planned_dense(kind, lifted):
  model = Lifted(kind)
  loss_fn = _ce_loss(model)
  x, y = _data()
  params = model.init(jax.random.key(0), x[:1])
  with pytest.raises(ValueError, match=f"{lifted}/Dense_0.*inside.*{lifted}"):
    sfb.plan(loss_fn, params, x, y, num_devices=P, layers=[(lifted, "Dense_0")])
  with pytest.raises(ValueError, match=f"{lifted}/Dense_0.*inside.*{lifted}"):
    sfb.factored_value_and_grad(loss_fn, [(lifted, "Dense_0")])(params, x[:ROWS], y[:ROWS])
  plan = sfb.plan(loss_fn, params, x, y, num_devices=P, rule="always")
  assert {l.name: l.use_sfb for l in plan.layers} == {"Dense_0": True, f"{lifted}/Dense_0": False,
                                                     "Dense_1": True}
  assert f"dense (in {lifted})" in plan.table()
  fn = _mean_gradient_fn(loss_fn, plan)
  assert _rel_err(fn(params, x, y), jax.grad(loss_fn)(params, x, y)) <= 1e-5
  assert collective_bytes(fn.lower(params, x, y).compile()).payload == sfb.payload_bytes(plan)


# --- 3. bf16 layers ------------------------------------------------------------------------------


def test_bf16_layers_send_bf16_factors_and_keep_the_forward_pass():
  """Dense(dtype=bf16) with f32 params: the probe has the layer's output dtype, so the loss is the
  user's bit for bit and U, V travel as bf16. Gradient tolerance: 1e-2 relative (Frobenius) —
  the reference's bf16 weight-gradient matmul rounds to 8 significand bits (2^-8 = 3.9e-3)."""
  model = MLP(dtype=jnp.bfloat16)
  loss_fn = _ce_loss(model)
  x, y = _data()
  params = model.init(jax.random.key(0), x[:1])
  plan = sfb.plan(loss_fn, params, x, y, num_devices=P, rule="always")
  loss, grads = sfb.factored_value_and_grad(loss_fn, plan)(params, x[:ROWS], y[:ROWS])
  assert loss.dtype == jnp.bfloat16 and loss == loss_fn(params, x[:ROWS], y[:ROWS])
  factors = grads["params"]["Dense_0"]["kernel"]
  assert factors.u.dtype == factors.v.dtype == jnp.bfloat16

  fn = _mean_gradient_fn(loss_fn, plan)
  lowered = fn.lower(params, x, y).as_text()
  gathers = re.findall(r"stablehlo.all_gather.*->\s*tensor<([^>]*)>", lowered)
  assert gathers and all(g.endswith("bf16") for g in gathers), gathers
  assert sfb.payload_bytes(plan) == 2 * ROWS * ((12 + 16) + (16 + 5))
  got = fn(params, x, y)
  assert all(a.dtype == jnp.float32 for a in jax.tree.leaves(got))
  assert _rel_err(got, jax.grad(loss_fn)(params, x, y)) <= 1e-2


# --- 4. chain order and gradient accumulation -----------------------------------------------------


def _step_fn(loss_fn, plan, tx, axis_name=AXIS):
  grad_fn = sfb.factored_value_and_grad(loss_fn, plan)

  def body(params, x, y, state):
    _, grads = grad_fn(params if axis_name is None else lax.pcast(params, axis_name, to="varying"), x, y)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  return body


@pytest.mark.parametrize("first", [optax.scale(2.0), optax.scale(2), optax.clip_by_global_norm(1e-3),
                                   optax.add_decayed_weights(1e-2), optax.adam(1e-2)],
                         ids=["scale_float", "scale_int", "clip_by_global_norm", "decay", "adam"])
def test_a_transformation_before_scale_by_sfb_is_refused(first):
  model = MLP()
  loss_fn = _ce_loss(model)
  x, y = _data()
  params = model.init(jax.random.key(0), x[:1])
  plan = sfb.plan(loss_fn, params, x, y, num_devices=P, rule="always")
  tx = optax.chain(first, sfb.scale_by_sfb(None), optax.sgd(0.1))
  with pytest.raises((ValueError, TypeError, AttributeError), match="put sfb.scale_by_sfb first in the chain"):
    _step_fn(loss_fn, plan, tx, None)(params, x[:ROWS], y[:ROWS], tx.init(params))


def test_multisteps_around_the_chain_is_refused_with_the_fix():
  model = MLP()
  loss_fn = _ce_loss(model)
  x, y = _data()
  params = model.init(jax.random.key(0), x[:1])
  plan = sfb.plan(loss_fn, params, x, y, num_devices=P, rule="always")
  tx = optax.MultiSteps(optax.chain(sfb.scale_by_sfb(None), optax.sgd(0.1)), 2).gradient_transformation()
  with pytest.raises((ValueError, TypeError), match="MultiSteps.*after sfb.scale_by_sfb"):
    _step_fn(loss_fn, plan, tx, None)(params, x[:ROWS], y[:ROWS], tx.init(params))


def test_gradient_accumulation_after_scale_by_sfb_equals_single_device_accumulation():
  """chain(scale_by_sfb, MultiSteps(adam, k)): factors cross the wire every micro-step; the
  optimizer steps every k with the mean of k exact gradients — single-device MultiSteps of jax.grad."""
  k, steps = 2, 4
  model = MLP()
  loss_fn = _ce_loss(model)
  xs = jax.random.normal(jax.random.key(7), (steps, P * ROWS, 12))
  ys = jax.random.randint(jax.random.key(8), (steps, P * ROWS), 0, 5)
  params = model.init(jax.random.key(0), xs[0, :1])
  plan = sfb.plan(loss_fn, params, xs[0], ys[0], num_devices=P, rule="always")
  tx = optax.chain(sfb.scale_by_sfb(AXIS), optax.MultiSteps(optax.adam(1e-2), k).gradient_transformation())
  ref_tx = optax.MultiSteps(optax.adam(1e-2), k).gradient_transformation()
  body = _step_fn(loss_fn, plan, tx)
  step = jax.jit(jax.shard_map(body, mesh=_mesh(), in_specs=(jax.P(), jax.P(AXIS), jax.P(AXIS), jax.P()),
                               out_specs=(jax.P(), jax.P())))
  p, s = params, tx.init(params)
  ref_p, ref_s = params, ref_tx.init(params)
  for t in range(steps):
    p, s = jax.block_until_ready(step(p, xs[t], ys[t], s))
    updates, ref_s = ref_tx.update(jax.grad(loss_fn)(ref_p, xs[t], ys[t]), ref_s, ref_p)
    ref_p = optax.apply_updates(ref_p, updates)
    if t == 0:
      assert _rel_err(p, params) == 0.0      # no step before k micro-batches
  assert _rel_err(jax.tree.map(lambda a, b: a - b, p, params),
                  jax.tree.map(lambda a, b: a - b, ref_p, params)) <= 1e-5
  gathered = collective_bytes(step.lower(p, xs[0], ys[0], s).compile()).of_kind("all-gather")
  assert sum(c.elements for c in gathered) == P * ROWS * ((12 + 16) + (16 + 5))
