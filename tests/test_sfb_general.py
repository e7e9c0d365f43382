"""SFB on nn.DenseGeneral and nn.Einsum kernels (issue 14): attention projections, sequence rows.

A multi-axis kernel is one matrix product ``y[rows, J] = x[rows, D] @ K[D, J]`` after grouping
its axes (``sfb.contraction``); every check compares against an independent reference:
single-device ``jax.grad`` on the global batch, the dense data-parallel step, and the bytes of
the compiled program.
"""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax import lax

import sfb
from common.baseline import dense_data_parallel
from common.comm import collective_bytes, dense_allreduce_present

AXIS, P = "data", 8
VOCAB, WIDTH, HEADS, T, B = 24, 32, 4, 8, 2 * P     # 2 sequences of 8 tokens per device


def _mesh():
  return jax.make_mesh((P,), (AXIS,), axis_types=(jax.sharding.AxisType.Auto,))


def _rel_err(got, want):
  num = sum(float(jnp.sum((a - b) ** 2)) for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)))
  return (num / sum(float(jnp.sum(b ** 2)) for b in jax.tree.leaves(want))) ** 0.5


# --- models ----------------------------------------------------------------------------------------


class EinsumAttention(nn.Module):
  """Causal self-attention from nn.Einsum, with kernels and outputs in permuted axis orders
  (q/k/v kernel (H, D, Dh), heads-first outputs) so the flattening is not the identity."""

  @nn.compact
  def __call__(self, x):
    dh = WIDTH // HEADS
    q, k, v = (nn.Einsum((HEADS, WIDTH, dh), "btd,hdk->bhtk", name=n)(x) for n in ("query", "key", "value"))
    logits = jnp.einsum("bhtk,bhsk->bhts", q, k) / np.sqrt(dh)
    logits = jnp.where(jnp.tril(jnp.ones((x.shape[1], x.shape[1]), bool)), logits, -1e9)
    ctx = jnp.einsum("bhts,bhsk->bhtk", jax.nn.softmax(logits), v)
    return nn.Einsum((HEADS, dh, WIDTH), "bhtk,hkd->btd", name="out")(ctx)


class TinyLM(nn.Module):
  """Decoder block: token + position embedding, causal attention, MLP, untied output head."""
  attention: str = "flax"

  @nn.compact
  def __call__(self, tokens):
    pos = self.param("pos", nn.initializers.normal(0.02), (T, WIDTH))
    x = nn.Embed(VOCAB, WIDTH)(tokens) + pos[: tokens.shape[1]]
    h = nn.LayerNorm()(x)
    if self.attention == "flax":
      x = x + nn.MultiHeadDotProductAttention(HEADS)(h, mask=nn.make_causal_mask(tokens))
    else:
      x = x + EinsumAttention()(h)
    x = x + nn.Dense(WIDTH)(nn.gelu(nn.Dense(2 * WIDTH)(nn.LayerNorm()(x))))
    return nn.Dense(VOCAB)(nn.LayerNorm()(x))


class TinyCNN(nn.Module):
  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Conv(4, (3, 3))(x))
    x = nn.relu(nn.Conv(8, (3, 3))(x))
    x = nn.relu(nn.Dense(32)(x.reshape(x.shape[0], -1)))
    return nn.Dense(10)(x)


def _lm(attention="flax"):
  return _lm_of(attention)


# Built once per module and initialised by one compiled program (op-by-op flax init compiles every
# initializer on its own: ~30 s for TinyLM on 2 busy cores); the checks hold for any parameters.
@functools.cache
def _lm_of(attention):
  model = TinyLM(attention)
  tokens = jax.random.randint(jax.random.key(1), (B, T + 1), 0, VOCAB)
  params = jax.jit(model.init)(jax.random.key(0), tokens[:, :T])

  def loss_fn(params, tokens):
    logits = model.apply(params, tokens[:, :-1])
    return optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:]).mean()

  return loss_fn, params, (tokens,)


@functools.cache
def _cnn():
  model = TinyCNN()
  kx, ky = jax.random.split(jax.random.key(2))
  x, y = jax.random.normal(kx, (B, 8, 8, 1)), jax.random.randint(ky, (B,), 0, 10)
  params = jax.jit(model.init)(jax.random.key(0), x[:1])

  def loss_fn(params, x, y):
    return optax.softmax_cross_entropy_with_integer_labels(model.apply(params, x), y).mean()

  return loss_fn, params, (x, y)


def _single_device_grad(loss_fn):
  """The reference: ``jax.grad`` of the loss on the global batch, on one device (compiled, not op by op)."""
  return jax.jit(jax.grad(loss_fn))


def _sharded(body, n_args, out_specs=jax.P()):
  return jax.jit(jax.shard_map(body, mesh=_mesh(), in_specs=(jax.P(),) + (jax.P(AXIS),) * n_args,
                               out_specs=out_specs))


def _mean_gradient_fn(loss_fn, plan, n_args):
  grad_fn = sfb.factored_value_and_grad(loss_fn, plan)

  def body(params, *args):
    _, grads = grad_fn(lax.pcast(params, AXIS, to="varying"), *args)
    return sfb.sfb_mean_gradient(grads, AXIS, params)

  return _sharded(body, n_args)


# --- one layer at a time, single device ---------------------------------------------------------

ATTN = ("MultiHeadDotProductAttention_0",)
LAYER_FORMS = {   # name: (layer, input shape, (D, J, rows))
    "dense_on_sequence": (nn.Dense(6), (3, 5, 7), (7, 6, 15)),
    "dense_general_heads": (nn.DenseGeneral((2, 3)), (3, 5, 7), (7, 6, 15)),
    "dense_general_out_projection": (nn.DenseGeneral(6, axis=(-2, -1)), (3, 5, 2, 4), (8, 6, 15)),
    "dense_general_inner_axes": (nn.DenseGeneral((2, 3), axis=(1, -1)), (3, 4, 5, 2), (8, 6, 15)),
    "einsum_qkv": (nn.Einsum((7, 2, 3), "btd,dhk->bthk"), (3, 5, 7), (7, 6, 15)),
    "einsum_permuted": (nn.Einsum((2, 7, 3), "btd,hdk->bhtk"), (3, 5, 7), (7, 6, 15)),
    "einsum_out_projection": (nn.Einsum((2, 3, 6), "bhtk,hkd->btd"), (3, 2, 5, 3), (6, 6, 15)),
    "einsum_ellipsis": (nn.Einsum((7, 6), "...d,dk->...k"), (3, 5, 7), (7, 6, 15)),
    "einsum_transposed_kernel": (nn.Einsum((6, 7), "btd,jd->tjb"), (3, 5, 7), (7, 6, 15)),
}


@pytest.mark.parametrize("name", list(LAYER_FORMS))
def test_each_layer_form_factors_to_the_exact_gradient(name):
  """Kernel and bias gradients rebuilt from the factors equal jax.grad, for every flattening."""
  layer, shape, (d, j, rows) = LAYER_FORMS[name]
  x = jax.random.normal(jax.random.key(3), shape)
  params = layer.init(jax.random.key(4), x)
  target = jax.random.normal(jax.random.key(5), jax.eval_shape(layer.apply, params, x).shape)
  loss_fn = lambda p, x: jnp.mean(jnp.tanh(layer.apply(p, x)) * target)
  plan = sfb.plan(loss_fn, params, x, num_devices=1, rule="always")
  (lp,) = plan.layers
  assert (lp.in_features, lp.out_features, lp.rows, lp.kernel_shape) == (
      d, j, rows, params["params"]["kernel"].shape)
  assert lp.dense_floats == j * d + j
  _, grads = sfb.factored_value_and_grad(loss_fn, plan)(params, x)
  assert grads["params"]["kernel"].u.shape == (rows, j) and grads["params"]["kernel"].v.shape == (rows, d)
  got = sfb.sfb_mean_gradient(grads, None, params)
  want = jax.grad(loss_fn)(params, x)
  assert _rel_err(got, want) <= 1e-6
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)


def _custom_dot_general(lhs, rhs, dims, precision=None, preferred_element_type=None):
  return lax.dot_general(lhs, jnp.round(rhs * 8) / 8, dims, precision=precision)


REFUSED = {   # name: (layer factory, input shape, reason pattern)
    "batch_dims": (lambda: nn.DenseGeneral(3, batch_dims=(0,), name="proj"), (4, 5, 7),
                   "batch_dims=.0,.*batched matmul"),
    "batched_einsum": (lambda: nn.Einsum((2, 7, 3), "bhd,hdk->bhk", name="proj"), (4, 2, 7),
                       "label.*h.*batched matmul"),
    "summed_einsum": (lambda: nn.Einsum((7, 3), "btd,dk->bk", name="proj"), (4, 5, 7),
                      "sums label.*t.*not x_flat @ K"),
    "custom_dot_general": (lambda: nn.Dense(3, dot_general=_custom_dot_general, name="proj"), (4, 7),
                           "custom dot_general"),
}


@pytest.mark.parametrize("name", list(REFUSED))
def test_forms_that_are_not_one_contraction_are_refused_by_name_and_planned_dense(name):
  make_layer, shape, reason = REFUSED[name]

  class Net(nn.Module):
    @nn.compact
    def __call__(self, x):
      h = make_layer()(x)
      return nn.Dense(2, name="head")(h.reshape(x.shape[0], -1))

  model = Net()
  x = jax.random.normal(jax.random.key(3), shape)
  params = model.init(jax.random.key(4), x)
  loss_fn = lambda p, x: jnp.mean(model.apply(p, x) ** 2)
  with pytest.raises(ValueError, match=f"layer proj cannot be factored: .*{reason}"):
    sfb.plan(loss_fn, params, x, num_devices=1, layers=[("proj",)])
  with pytest.raises(ValueError, match=f"layer proj cannot be factored: .*{reason}"):
    sfb.factored_value_and_grad(loss_fn, [("proj",)])(params, x)
  plan = sfb.plan(loss_fn, params, x, num_devices=1, rule="always")
  assert [l.name for l in plan.layers] == ["head"] and plan.refused[0][0] == "proj"
  assert plan.other_floats == sum(a.size for a in jax.tree.leaves(params["params"]["proj"]))
  assert "proj: dense" in plan.table()
  got = sfb.sfb_mean_gradient(sfb.factored_value_and_grad(loss_fn, plan)(params, x)[1], None, params)
  assert _rel_err(got, jax.grad(loss_fn)(params, x)) <= 1e-6


def test_a_layer_called_with_two_equations_is_refused():
  class TwoWays(nn.Module):
    @nn.compact
    def __call__(self, x):
      e = nn.Einsum((4, 4), use_bias=False)
      return e(x, "bd,dk->bk") + e(x, "bd,kd->bk")

  model = TwoWays()
  x = jnp.ones((2, 4))
  params = model.init(jax.random.key(0), x)
  loss_fn = lambda p, x: jnp.sum(model.apply(p, x) ** 2)
  with pytest.raises(ValueError, match="Einsum_0 is called with two different contractions"):
    sfb.plan(loss_fn, params, x, num_devices=1, layers=[("Einsum_0",)])
  assert sfb.plan(loss_fn, params, x, num_devices=1, rule="always").refused[0][0] == "Einsum_0"


def test_projections_of_one_input_share_v_and_a_plan_for_other_inputs_is_refused():
  """Self-attention: q/k/v read the same array, so key and value hold query's v (sent once);
  a plan made for self-attention does not fit cross-attention (its bytes would be wrong)."""
  mha = nn.MultiHeadDotProductAttention(2, qkv_features=8)
  x, kv = jax.random.normal(jax.random.key(0), (2, 3, 8)), jax.random.normal(jax.random.key(1), (2, 3, 8))
  params = jax.jit(mha.init)(jax.random.key(2), x)
  self_loss = lambda p, x, kv: jnp.mean(mha.apply(p, x) ** 2)
  cross_loss = lambda p, x, kv: jnp.mean(mha.apply(p, x, kv) ** 2)
  plan = sfb.plan(self_loss, params, x, kv, num_devices=1, rule="always")
  assert [l.shares_input for l in plan.layers] == ["", "query", "query", ""]
  assert [l.sfb_floats for l in plan.layers] == [6 * 16, 6 * 8, 6 * 8, 6 * 16]
  _, grads = sfb.factored_value_and_grad(self_loss, plan)(params, x, kv)
  assert grads["params"]["key"]["kernel"].v is grads["params"]["query"]["kernel"].v
  got = sfb.sfb_mean_gradient(grads, None, params)
  assert _rel_err(got, _single_device_grad(self_loss)(params, x, kv)) <= 1e-6
  cross = sfb.plan(cross_loss, params, x, kv, num_devices=1, rule="always")
  assert [l.shares_input for l in cross.layers] == ["", "", "key", ""]
  with pytest.raises(ValueError, match="layer key shares its input with query in the loss the plan was made"):
    sfb.factored_value_and_grad(cross_loss, plan)(params, x, kv)


def test_kernel_axes_must_flatten_to_the_factors_matrix():
  u, v = jnp.ones((3, 6)), jnp.ones((3, 4))
  with pytest.raises(ValueError, match=r"kernel_axes \(0, 2\) of kernel_shape \(4, 2, 3\) do not flatten"):
    sfb.SufficientFactors(u, v, kernel_shape=(4, 2, 3), kernel_axes=(0, 2)).validate()
  with pytest.raises(ValueError, match="kernel_shape and kernel_axes together"):
    sfb.SufficientFactors(u, v, "paper", kernel_shape=(4, 2, 3), kernel_axes=(0, 1, 2))
  ok = sfb.SufficientFactors(u, v, kernel_shape=(2, 4, 3), kernel_axes=(1, 0, 2))
  np.testing.assert_allclose(sfb.reconstruct(ok), np.full((2, 4, 3), 3.0))
  assert ok.param_shape() == (2, 4, 3) and ok.matrix_shape() == (4, 6)


# --- whole models on 8 devices -------------------------------------------------------------------


@pytest.mark.parametrize("attention", ["flax", "einsum"])
def test_transformer_attention_projections_factor_exactly_with_measured_bytes(attention):
  """Every projection (q/k/v (D, H, Dh), out (H, Dh, D)), the MLP and the head factored, with
  rows = b·T positions per device; embedding, positions and layer norms all-reduced."""
  loss_fn, params, args = _lm(attention)
  plan = sfb.plan(loss_fn, params, *args, num_devices=P, rule="always")
  prefix = "MultiHeadDotProductAttention_0" if attention == "flax" else "EinsumAttention_0"
  by_name = {l.name: l for l in plan.layers}
  for proj in ("query", "key", "value", "out"):
    l = by_name[f"{prefix}/{proj}"]
    assert (l.in_features, l.out_features, l.rows, l.use_sfb) == (WIDTH, WIDTH, (B // P) * T, True)
    assert f"{prefix}/{proj}" in plan.table()
  assert len(plan.layers) == 7
  fn = _mean_gradient_fn(loss_fn, plan, 1)
  assert _rel_err(fn(params, *args), _single_device_grad(loss_fn)(params, *args)) <= 1e-5
  report = collective_bytes(fn.lower(params, *args).compile())
  assert report.payload == sfb.payload_bytes(plan), report.summary()
  gathered = sum(c.elements * c.count for c in report.of_kind("all-gather"))
  assert gathered == sum(l.sfb_floats for l in plan.layers), report.summary()
  reduced = sum(c.elements * c.count for c in report.of_kind("all-reduce"))
  assert reduced == plan.other_floats == VOCAB * WIDTH + T * WIDTH + 6 * WIDTH, report.summary()


def test_cnn_conv_kernels_dense_head_factored_with_measured_bytes():
  loss_fn, params, args = _cnn()
  plan = sfb.plan(loss_fn, params, *args, num_devices=P)
  assert [(l.name, l.in_features, l.out_features, l.rows, l.use_sfb) for l in plan.layers] == [
      ("Dense_0", 8 * 8 * 8, 32, 2, True), ("Dense_1", 32, 10, 2, False)]
  conv_floats = sum(a.size for k in ("Conv_0", "Conv_1") for a in jax.tree.leaves(params["params"][k]))
  assert plan.other_floats == conv_floats
  fn = _mean_gradient_fn(loss_fn, plan, 2)
  assert _rel_err(fn(params, *args), _single_device_grad(loss_fn)(params, *args)) <= 1e-5
  report = collective_bytes(fn.lower(params, *args).compile())
  assert report.payload == sfb.payload_bytes(plan), report.summary()
  assert not dense_allreduce_present(report, 8 * 8 * 8 * 32), report.summary()


def test_payload_rule_on_the_transformer_sees_b_times_t_rows():
  """With rows = b·T = 16 per device the payload rule leaves the 32×32 projections dense
  (P·16·64 = 8,192 > 1,056 floats); counting only b = 2 rows would have picked SFB (1,024)."""
  loss_fn, params, args = _lm()
  plan = sfb.plan(loss_fn, params, *args, num_devices=P)
  attention = [l for l in plan.layers if l.path[0] == ATTN[0]]
  assert [l.rows for l in attention] == [(B // P) * T] * 4
  assert not any(l.use_sfb for l in plan.layers)
  assert sfb.choose_sfb(WIDTH, WIDTH, B // P, P)
  short = sfb.plan(loss_fn, params, args[0][:, :2], num_devices=P)   # T = 1: rows = b
  assert [(l.rows, l.use_sfb) for l in short.layers if l.path[0] == ATTN[0]] == [(B // P, True)] * 4
  fn = _mean_gradient_fn(loss_fn, short, 1)
  report = collective_bytes(fn.lower(params, args[0][:, :2]).compile())
  assert report.payload == sfb.payload_bytes(short), report.summary()


@pytest.mark.parametrize("model", ["transformer", "cnn"])
def test_sharded_sfb_steps_equal_dense_data_parallel_steps(model):
  """Three SGD-momentum steps on 8 devices: the SFB arm (every matrix layer factored) and the
  dense data-parallel arm (pmean of local jax.grad) run in one program and stay together."""
  loss_fn, params, args = _lm() if model == "transformer" else _cnn()
  plan = sfb.plan(loss_fn, params, *args, num_devices=P, rule="always")
  grad_fn = sfb.factored_value_and_grad(loss_fn, plan)
  sfb_tx = optax.chain(sfb.scale_by_sfb(AXIS), optax.sgd(0.3, momentum=0.9))
  dense_tx = dense_data_parallel(optax.sgd(0.3, momentum=0.9), AXIS)

  def step(arms, *args):
    (p_sfb, s_sfb), (p_dense, s_dense) = arms
    u_sfb, s_sfb = sfb_tx.update(grad_fn(lax.pcast(p_sfb, AXIS, to="varying"), *args)[1], s_sfb, p_sfb)
    g_dense = jax.grad(loss_fn)(lax.pcast(p_dense, AXIS, to="varying"), *args)
    u_dense, s_dense = dense_tx.update(g_dense, s_dense, p_dense)
    return (optax.apply_updates(p_sfb, u_sfb), s_sfb), (optax.apply_updates(p_dense, u_dense), s_dense)

  fn = _sharded(step, len(args))
  arms = ((params, sfb_tx.init(params)), (params, dense_tx.init(params)))
  for _ in range(3):
    arms = jax.block_until_ready(fn(arms, *args))
  (p_sfb, _), (p_dense, _) = arms
  moved = lambda p: jax.tree.map(lambda a, b: a - b, p, params)
  assert _rel_err(moved(p_sfb), moved(p_dense)) <= 1e-5
  assert _rel_err(p_dense, params) > 1e-3   # the steps did move the params


def _report():
  """Plan tables and measured vs analytic bytes of the two test models (BUILD_NOTES numbers):
  ``python -m tests.test_sfb_general``."""
  for name, (loss_fn, params, args), rules in (("transformer", _lm(), ("payload", "always")),
                                                ("cnn", _cnn(), ("payload",))):
    print(f"## {name}: {sum(a.size for a in jax.tree.leaves(params)):,} parameters, global batch "
          f"{args[0].shape}, P={P}")
    for rule in rules:
      plan = sfb.plan(loss_fn, params, *args, num_devices=P, rule=rule)
      report = collective_bytes(_mean_gradient_fn(loss_fn, plan, len(args)).lower(params, *args).compile())
      print(plan.table())
      print(f"measured payload {report.payload:,.0f} B/device/step vs sfb.payload_bytes "
            f"{sfb.payload_bytes(plan):,} B ({len(report.collectives)} collectives)\n")


if __name__ == "__main__":
  import tests.conftest  # noqa: F401  (8 simulated CPU devices, before JAX starts)
  _report()
