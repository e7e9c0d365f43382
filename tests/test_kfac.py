"""K-FAC through kfac-jax (``config.algorithm = "kfac"``, common/algos/kfac.py).

* the first update on one dense layer with softmax cross-entropy equals the paper's formula written
  out in NumPy: A = E[ā āᵀ] (inputs with a ones column for the bias), G = E_i[diag(p_i) - p_i p_iᵀ]
  (the exact Fisher/GGN of softmax CE w.r.t. the logits, ``ggn_exact``), and the update
  -α (A + π√λ I)⁻¹ ∇W̄ (G + √λ/π I)⁻¹ with π² = (tr A / dim A) / (tr G / dim G) (Martens & Grosse
  2015 §6.3; kfac-jax's ``pi_adjusted_kronecker_inverse``);
* on 8 devices the step equals the single-device step on the same global batch, on a refresh step
  and on the steps between (factor EMAs per worker, all-reduced only on refresh);
* the compiled step's measured bytes per branch equal the analytic count written out from the
  layer shapes (parameters every step, the factors on refresh steps, plus the loss pmean);
* a model kfac cannot run here (transformer, cnn) is one ``error:`` line naming the field.
"""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from common import cli, mesh as mesh_lib, models, train
from common.algos import kfac
from common.data import Shard
from tests.test_launch_bad_inputs import _assert_one_line, _launch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs", "kfac_mlp.py")


def _hyper(lr=1.0, momentum=0.0, damping=1e-2, curvature_ema=0.95, inverse_update_period=1):
  return kfac.Hyper(lr, momentum, damping, curvature_ema, inverse_update_period)


def _problem(rows, features=5, classes=3, widths=(), seed=0):
  model = models.make("mlp", num_features=features, num_classes=classes, widths=widths)
  params = jax.device_get(model.init(jax.random.key(seed)))
  rng = np.random.default_rng(seed)
  batch = Shard(rng.normal(size=(rows, features)).astype(np.float32),
                rng.integers(0, classes, rows).astype(np.int32), np.ones(rows, np.float32))
  return model, params, batch


def _single_device(model, params, batch, mode="ggn_exact"):
  loss_fn = kfac.registered_loss(model)
  estimator = kfac.make_estimator(loss_fn, mode)
  kfac.finalize(estimator, params, batch)
  state = kfac.init(estimator, params, batch, jax.random.key(0))
  return jax.jit(lambda p, s, b, h: kfac.step(estimator, loss_fn, h, p, s, b, jax.random.key(1), None),
                 static_argnums=3), state


def _reference_first_update(params, batch, lr, damping):
  """NumPy, float64: -lr (A + π√λ I)⁻¹ ∇W̄ (G + √λ/π I)⁻¹ for one dense layer with softmax CE."""
  dense = params["params"]["Dense_0"]
  w = np.vstack([np.asarray(dense["kernel"], np.float64), np.asarray(dense["bias"], np.float64)[None]])
  x = np.hstack([np.asarray(batch.x, np.float64), np.ones((len(batch.y), 1))])
  logits = x @ w
  p = np.exp(logits - logits.max(1, keepdims=True))
  p /= p.sum(1, keepdims=True)
  onehot = np.eye(w.shape[1])[batch.y]
  n = len(batch.y)
  grad = x.T @ (p - onehot) / n                                  # ∇W̄ of the mean CE
  a = x.T @ x / n
  g = np.mean([np.diag(pi) - np.outer(pi, pi) for pi in p], axis=0)
  pi = np.sqrt((np.trace(a) / len(a)) / (np.trace(g) / len(g)))
  root = np.sqrt(damping)
  step = np.linalg.solve(a + pi * root * np.eye(len(a)), grad) @ np.linalg.inv(g + root / pi * np.eye(len(g)))
  return -lr * step


@pytest.mark.parametrize("damping", [1e-3, 1e-1])
def test_first_update_is_the_papers_pi_damped_kronecker_inverse(damping):
  model, params, batch = _problem(rows=16)
  step, state = _single_device(model, params, batch)
  new, _, loss = step(params, state, batch, _hyper(lr=0.5, damping=damping))
  expected = _reference_first_update(params, batch, 0.5, damping)
  dense = new["params"]["Dense_0"]
  got = np.vstack([np.asarray(dense["kernel"]), np.asarray(dense["bias"])[None]])
  start = np.vstack([params["params"]["Dense_0"]["kernel"], params["params"]["Dense_0"]["bias"][None]])
  np.testing.assert_allclose(got - start, expected, rtol=2e-4, atol=2e-6 * np.abs(expected).max())
  np.testing.assert_allclose(loss, model.loss(params, batch.x, batch.y), rtol=1e-6)


def _sharded(model, params, features, rows_per_device, hyper, mode="ggn_exact"):
  mesh = mesh_lib.make_mesh(8)
  loss_fn = kfac.registered_loss(model)
  estimator = kfac.make_estimator(loss_fn, mode)
  example = kfac.example_batch(params, features, rows_per_device)
  kfac.finalize(estimator, params, example, mesh)
  state = kfac.init(estimator, params, example, jax.random.key(0))
  curvature = jax.tree.map(lambda x: np.stack([np.asarray(x)] * 8), state.curvature)
  specs = kfac.KfacState(jax.tree.map(lambda _: jax.P("data"), curvature),
                         jax.tree.map(lambda _: jax.P(), state.velocity), jax.P())

  def local(params, state, batch, hyper):
    own = state._replace(curvature=jax.tree.map(lambda x: x[0], state.curvature))
    params, own, loss = kfac.step(estimator, loss_fn, hyper, params, own, batch, jax.random.key(1), "data")
    return params, own._replace(curvature=jax.tree.map(lambda x: x[None], own.curvature)), loss

  step = jax.jit(jax.shard_map(lambda p, s, b: local(p, s, b, hyper), mesh=mesh,
                               in_specs=(jax.P(), specs, jax.P("data")), out_specs=(jax.P(), specs, jax.P())))

  placed = mesh_lib.put_tree(state._replace(curvature=curvature), mesh, specs)
  return step, placed, mesh


def test_eight_devices_equal_one_device_on_the_same_global_batch():
  model, params, _ = _problem(rows=8, features=6, classes=4, widths=(7,))
  hyper = _hyper(lr=0.3, momentum=0.9, damping=1e-2, inverse_update_period=2)
  single, state = _single_device(model, params, _problem(rows=32, features=6, classes=4, widths=(7,))[2])
  sharded, placed, mesh = _sharded(model, params, 6, 4, hyper)
  p1 = p8 = params
  for seed in range(3):   # steps 1 (refresh), 2 (cached inverses, local EMAs), 3 (refresh)
    batch = _problem(rows=32, features=6, classes=4, widths=(7,), seed=10 + seed)[2]
    p1, state, loss1 = single(p1, state, batch, hyper)
    rows = jax.tree.map(lambda x: mesh_lib.put(x, mesh, jax.P("data")), batch)
    p8, placed, loss8 = sharded(p8, placed, rows)
    jax.block_until_ready(loss8)
    np.testing.assert_allclose(float(loss8), float(loss1), rtol=1e-5)
    for a, b in zip(jax.tree.leaves(p8), jax.tree.leaves(p1)):
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-4, atol=2e-5)
  factors = [np.asarray(f.value) for block in placed.curvature.blocks_states for f in block.factors]
  assert all(f.shape[0] == 8 for f in factors)                       # per worker


def _config(**overrides):
  config = cli.load_config(CONFIG)
  config.update(dict(widths=(16,), batch_size=32, num_steps=4, eval_every=0, log_every=1000,
                     checkpoint_every=0, **overrides))
  return config


def test_measured_bytes_per_branch_equal_the_layer_count():
  config = _config(**{"algo": dict(inverse_update_period=3)})
  result = train.run(config, quiet=True)
  assert result.status == "ok" and np.isfinite(result.history[-1]["loss"])
  dims = [64, 16, 10]                      # digits features, widths, classes
  params = sum(n * m + m for n, m in zip(dims[:-1], dims[1:]))
  factors = sum((n + 1) ** 2 + m ** 2 for n, m in zip(dims[:-1], dims[1:]))   # A with the bias column, G
  assert result.final["bytes_per_branch"] == {"refresh": 4 * (params + factors) + 4, "plain": 4 * params + 4}
  assert [row["bytes"] for row in result.history] == [4 * (params + factors) + 4, 4 * params + 4,
                                                      4 * params + 4, 4 * (params + factors) + 4]
  assert result.final["analytic_bytes_per_step"] == 4 * (params + factors)


@pytest.mark.parametrize("args", [["--config.model=transformer", "--config.dataset=text"], ["--config.model=cnn"]],
                         ids=["transformer", "cnn"])
def test_unsupported_model_is_one_line_naming_the_field(tmp_path, args):
  proc, _ = _launch(["--config", CONFIG, *args], str(tmp_path))
  _assert_one_line(proc, "config.model")
