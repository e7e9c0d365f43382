"""Sufficient Factor Broadcasting: exactness, measured bytes, plan rules, paper models, errors."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax import lax

import sfb
from common.comm import collective_bytes, dense_allreduce_present

AXIS = "data"
P = 8


def _mesh():
  return jax.make_mesh((P,), (AXIS,), axis_types=(jax.sharding.AxisType.Auto,))


class MLP(nn.Module):
  widths: tuple = (256, 128)
  outputs: int = 10

  @nn.compact
  def __call__(self, x):
    for w in self.widths:
      x = nn.relu(nn.Dense(w)(x))
    return nn.Dense(self.outputs)(x)


def _problem(widths=(256, 128), features=512, rows_per_device=8, seed=0):
  model = MLP(widths)
  kx, ky, kp = jax.random.split(jax.random.key(seed), 3)
  x = jax.random.normal(kx, (P * rows_per_device, features))
  y = jax.random.randint(ky, (P * rows_per_device,), 0, 10)
  params = model.init(kp, x[:1])

  def loss_fn(params, x, y):
    return optax.softmax_cross_entropy_with_integer_labels(model.apply(params, x), y).mean()

  return loss_fn, params, x, y


def _sharded_mean_gradient(loss_fn, plan):
  grad_fn = sfb.factored_value_and_grad(loss_fn, plan)

  def body(params, x, y):
    _, grads = grad_fn(lax.pcast(params, AXIS, to="varying"), x, y)
    return sfb.sfb_mean_gradient(grads, AXIS, params)

  return jax.jit(jax.shard_map(body, mesh=_mesh(), in_specs=(jax.P(), jax.P(AXIS), jax.P(AXIS)),
                               out_specs=jax.P()))


@pytest.mark.parametrize("widths", [(), (256, 128)], ids=["mlr", "mlp"])
def test_reconstructed_gradient_equals_single_device_grad(widths):
  loss_fn, params, x, y = _problem(widths)
  plan = sfb.plan(loss_fn, params, x, y, num_devices=P, rule="always")
  assert len(plan.sfb_layers) == len(widths) + 1
  got = _sharded_mean_gradient(loss_fn, plan)(params, x, y)
  want = jax.grad(loss_fn)(params, x, y)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6, rtol=0)


def test_hybrid_plan_table_and_measured_bytes():
  """sfb.md §5.4: MLP 512-256-128-10, P=8, b=8 — hybrid factors fc1, fc2 and all-reduces fc3."""
  loss_fn, params, x, y = _problem()
  plan = sfb.plan(loss_fn, params, x, y, num_devices=P)
  assert [l.use_sfb for l in plan.layers] == [True, True, False]
  assert [(l.sfb_floats, l.dense_floats) for l in plan.layers] == [
      (49_152, 131_328), (24_576, 32_896), (8_832, 1_290)]
  assert sfb.gathered_bytes(plan) == 300_072 and sfb.dense_bytes(plan) == 662_056
  assert "Dense_2" in plan.table() and "dense" in plan.table()

  fn = _sharded_mean_gradient(loss_fn, plan)
  report = collective_bytes(fn.lower(params, x, y).compile())
  assert report.payload == sfb.payload_bytes(plan), report.summary()
  gathered = sum(c.elements * c.count for c in report.of_kind("all-gather"))
  assert gathered == P * 8 * ((512 + 256) + (256 + 128)), report.summary()
  reduced = sum(c.elements * c.count for c in report.of_kind("all-reduce"))
  assert reduced == 128 * 10 + 10, report.summary()
  for d, j in ((512, 256), (256, 128)):  # no all-reduce of an SFB layer's J×D kernel
    assert not dense_allreduce_present(report, d * j), report.summary()


def test_naive_grad_of_replicated_params_hides_the_dense_all_reduce():
  """The trap the pcast avoids: jax.grad w.r.t. replicated params all-reduces J×D in f32."""
  loss_fn, params, x, y = _problem(widths=())

  def naive(params, x, y):
    return jax.grad(loss_fn)(params, x, y)

  fn = jax.jit(jax.shard_map(naive, mesh=_mesh(), in_specs=(jax.P(), jax.P(AXIS), jax.P(AXIS)),
                             out_specs=jax.P()))
  assert dense_allreduce_present(collective_bytes(fn.lower(params, x, y).compile()), 512 * 10)
  plan = sfb.plan(loss_fn, params, x, y, num_devices=P, rule="always")
  report = collective_bytes(_sharded_mean_gradient(loss_fn, plan).lower(params, x, y).compile())
  assert not dense_allreduce_present(report, 512 * 10), report.summary()
  assert report.of_kind("all-reduce") == ()


def test_break_even_rules():
  """sfb.md §5.5: digits MLR (D=64, J=10, P=8) and the large-J synthetic problem."""
  payload = [b for b in (1, 2, 3, 4, 8) if sfb.choose_sfb(64, 10, b, P, "payload", use_bias=False)]
  wire = [b for b in (1, 2, 3, 4, 8) if sfb.choose_sfb(64, 10, b, P, "wire", use_bias=False)]
  assert payload == [1] and wire == [1, 2]
  assert sfb.choose_sfb(2000, 1000, 4, P)
  assert 2000 * 1000 / (P * 4 * 3000) == pytest.approx(20.83, abs=0.01)
  assert sfb.choose_sfb(2000, 1000, 83, P) and not sfb.choose_sfb(2000, 1000, 84, P)  # crossover b≈83
  assert sfb.choose_sfb(1, 1, 1000, P, "always") and not sfb.choose_sfb(2000, 1000, 1, P, "never")


def test_time_rule_charges_the_reconstruction_flops():
  """With infinitely fast devices the time rule is the wire rule (minus the bias's +J); with slow
  ones it picks dense where the extra 2(P−1)·b·J·D flops outweigh the all-reduce."""
  fast = sfb.CostModel(flops_per_s=1e30, link_bytes_per_s=1.25e9)
  grid = (1, 4, 16, 64, 150, 166, 167, 256)
  assert ([sfb.choose_sfb(2000, 1000, b, P, "time", use_bias=False, cost=fast) for b in grid]
          == [sfb.choose_sfb(2000, 1000, b, P, "wire", use_bias=False) for b in grid])
  # F = 38.6 GFLOP/s, 10 Gb/s: extra 2·7·b·2e6/F + 7·b·3000·4/1.25e9 vs 2·7/8·2.001e6·4/1.25e9 → b* ≈ 14.7
  slow = sfb.CostModel(flops_per_s=38.6e9, link_bytes_per_s=1.25e9)
  picks = [b for b in range(1, 40) if sfb.choose_sfb(2000, 1000, b, P, "time", cost=slow)]
  assert picks == list(range(1, 15))
  with pytest.raises(ValueError, match="needs cost"):
    sfb.choose_sfb(2000, 1000, 4, P, "time")
  with pytest.raises(ValueError, match="flops_per_s > 0"):
    sfb.CostModel(flops_per_s=0.0, link_bytes_per_s=1.0)


def test_shared_layer_concatenates_call_sites():
  class Tied(nn.Module):
    @nn.compact
    def __call__(self, x):
      dense = nn.Dense(16)
      return nn.Dense(3)(dense(nn.relu(dense(x[..., :16])))) + x[..., 16:19]

  model = Tied()
  x = jax.random.normal(jax.random.key(1), (P * 2, 19))
  params = model.init(jax.random.key(0), x[:1])
  loss_fn = lambda p, x: jnp.mean(model.apply(p, x) ** 2)
  plan = sfb.plan(loss_fn, params, x, num_devices=P, rule="always")
  assert [(l.name, l.rows) for l in plan.layers] == [("Dense_0", 4), ("Dense_1", 2)]
  _, grads = sfb.factored_value_and_grad(loss_fn, plan)(params, x[:2])
  assert grads["params"]["Dense_0"]["kernel"].u.shape == (4, 16)
  got = sfb.sfb_mean_gradient(grads, None, params)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(jax.grad(loss_fn)(params, x[:2]))):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)


def _paper_cases():
  k = jax.random.split(jax.random.key(3), 8)
  x = jax.random.normal(k[0], (12, 7))
  y = jax.random.randint(k[1], (12,), 0, 5)
  w = jax.random.normal(k[2], (5, 7)) * 0.3
  l = jax.random.normal(k[3], (4, 7)) * 0.3
  x2 = jax.random.normal(k[4], (12, 7))
  similar = jnp.arange(12) % 2 == 0
  b = sfb.unit_columns(jax.random.normal(k[5], (7, 9)))
  codes = sfb.sparse_codes(b, x, 0.1)
  wn = jnp.abs(jax.random.normal(k[6], (7, 3)))
  h = sfb.nmf_codes(wn, jnp.abs(x))
  return {
      "softmax": (sfb.softmax_factors, w, (x, y), lambda w: optax.softmax_cross_entropy_with_integer_labels(
          x @ w.T, y).mean()),
      "squared_hinge": (sfb.squared_hinge_factors, w, (x, y), lambda w: jnp.sum(jnp.maximum(
          0, 1 - (2 * jax.nn.one_hot(y, 5) - 1) * (x @ w.T)) ** 2) / 12),
      "metric_learning": (lambda l, *a: sfb.metric_learning_factors(l, *a, margin_weight=0.7), l,
                          (x, x2, similar), lambda l: jnp.mean(jnp.where(
                              similar, jnp.sum(((x - x2) @ l.T) ** 2, 1),
                              0.7 * jnp.maximum(0, 1 - jnp.sum(((x - x2) @ l.T) ** 2, 1))))),
      "sparse_coding": (lambda b, *a: sfb.sparse_coding_factors(b, *a, l1=0.1), b, (x, codes),
                        lambda b: 0.5 * jnp.sum((x - codes @ b.T) ** 2) / 12 + 0.1 * jnp.sum(
                            jnp.abs(codes)) / 12),
      "nmf": (sfb.nmf_factors, wn, (jnp.abs(x), h), lambda w: 0.5 * jnp.sum((jnp.abs(x) - h @ w.T) ** 2) / 12),
  }


@pytest.mark.parametrize("name", ["softmax", "squared_hinge", "metric_learning", "sparse_coding", "nmf"])
def test_paper_model_factors_equal_autodiff(name):
  factor_fn, param, args, reference_loss = _paper_cases()[name]
  loss, factors = factor_fn(param, *args)
  assert factors.layout == "paper" and factors.matrix_shape() == param.shape
  np.testing.assert_allclose(loss, reference_loss(param), rtol=1e-6)
  np.testing.assert_allclose(sfb.reconstruct(factors), jax.grad(reference_loss)(param), atol=1e-6)


def test_codes_and_projections():
  rng = np.random.default_rng(0)
  b = sfb.unit_columns(jnp.asarray(rng.normal(size=(6, 4)) * 3))
  assert float(jnp.max(jnp.linalg.norm(b, axis=0))) <= 1 + 1e-6
  x = jnp.asarray(rng.normal(size=(5, 6)))
  s = sfb.sparse_codes(b, x, l1=0.5, steps=2000)
  grad = (s @ b.T - x) @ b  # ISTA fixed point: -grad ∈ λ ∂‖s‖₁
  on = s != 0
  assert 0 < int(on.sum()) < on.size
  np.testing.assert_allclose(grad[on], -0.5 * jnp.sign(s[on]), atol=1e-4)
  assert float(jnp.max(jnp.abs(grad[~on]))) <= 0.5 + 1e-4
  w = jnp.abs(jnp.asarray(rng.normal(size=(6, 3))))
  h = sfb.nmf_codes(w, jnp.abs(x), steps=2000)
  g = (h @ w.T - jnp.abs(x)) @ w  # KKT of NNLS: h ≥ 0, g ≥ 0, h·g = 0
  assert float(jnp.min(h)) >= 0 and float(jnp.min(g)) >= -1e-4 and float(jnp.max(jnp.abs(h * g))) < 1e-4
  tx = optax.chain(optax.sgd(1.0), sfb.project(sfb.nonnegative))
  params = {"w": jnp.array([0.5, -0.2])}
  updates, _ = tx.update({"w": jnp.array([1.0, -1.0])}, tx.init(params), params)
  np.testing.assert_allclose(optax.apply_updates(params, updates)["w"], [0.0, 0.8])


def test_bad_input_errors():
  class WithConv(nn.Module):
    @nn.compact
    def __call__(self, x):
      return nn.Dense(3)(nn.Conv(4, (3,))(x).reshape(x.shape[0], -1))

  model = WithConv()
  x = jnp.ones((P, 5, 2))
  params = model.init(jax.random.key(0), x[:1])
  loss_fn = lambda p, x: jnp.mean(model.apply(p, x) ** 2)
  with pytest.raises(ValueError, match="Conv.*not an nn.Dense"):
    sfb.plan(loss_fn, params, x, num_devices=P, layers=[("Conv_0",)])
  with pytest.raises(ValueError, match="Conv.*not an nn.Dense"):
    sfb.factored_value_and_grad(loss_fn, [("Conv_0",)])(params, x)
  with pytest.raises(ValueError, match="rows 12 do not divide by num_devices=8"):
    sfb.plan(loss_fn, params, jnp.ones((12, 5, 2)), num_devices=P)
  with pytest.raises(ValueError, match="rule must be one of"):
    sfb.plan(loss_fn, params, x, num_devices=P, rule="fastest")
  with pytest.raises(ValueError, match="same rows"):
    sfb.SufficientFactors(jnp.ones((3, 2)), jnp.ones((4, 5))).validate()
  bad = {"w": sfb.SufficientFactors(jnp.ones((3, 2)), jnp.ones((3, 5)))}
  with pytest.raises(ValueError, match=r"give a \(5, 2\) gradient, but the parameter has shape \(2, 5\)"):
    sfb.scale_by_sfb(None).update(bad, optax.EmptyState(), {"w": jnp.ones((2, 5))})
  with pytest.raises(ValueError, match="layout"):
    sfb.SufficientFactors(jnp.ones((3, 2)), jnp.ones((3, 5)), layout="torch")
