"""A sparse problem of 100,000 features through the harness (``configs/vr_prox_sparse.py``, issue 14):
CSR rows on the host, ``EllRows`` on the devices, never densified.

One problem (the config's generator at 500 x 100,000: 400 training rows, 8 devices) runs through
``train.run`` with its rows sparse, and again with the same rows densified (400 x 100,000 floats is
small enough): the first epoch of DAP-SVRG must agree (the ELL gather / scatter-add against flax's
dense ``x @ W``), and the sparse step's compiled arguments must be ~ nonzeros, not rows x features.
"""
import jax
import numpy as np
import pytest

from common import cli, data, models, train
from common.errors import ConfigError

ROWS, FEATURES = 500, 100_000


def _config(**fields):
  config = cli.load_config("configs/vr_prox_sparse.py")
  config.update(dict(dict(num_rows=ROWS, num_features=FEATURES, num_steps=1, eval_every=1, log_every=1), **fields))
  return config


def _no_densify(x, rows=None):
  raise AssertionError(f"densified sparse rows ({x.shape}, padded to {rows})")


def _run(densify: bool) -> dict:
  """``train.run`` of ``_config()`` with its Experiment and compiled step caught on the way; the
  sparse run fails if anything densifies, the dense one gets the same rows densified."""
  seen, build, compile_timed = {}, train.build, train.Experiment.compile_timed

  def spy_build(config, dataset=None, mesh=None):
    if densify:
      dataset = data.Dataset(dataset.name, dataset.x_train.toarray(), dataset.y_train,
                             dataset.x_test.toarray(), dataset.y_test, dataset.num_classes)
    seen["exp"] = build(config, dataset, mesh)
    return seen["exp"]

  def spy_compile(self):
    lowered, seen["compiled"], seconds = compile_timed(self)
    return lowered, seen["compiled"], seconds

  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(train, "build", spy_build)
    mp.setattr(train.Experiment, "compile_timed", spy_compile)
    if not densify:
      mp.setattr(data, "dense", _no_densify)
    seen["result"] = train.run(_config(), quiet=True)
  return seen


@pytest.fixture(scope="module")
def sparse_run():
  return _run(densify=False)


def test_sparse_rows_reach_the_devices_as_ell_and_never_densify(sparse_run):
  exp, result = sparse_run["exp"], sparse_run["result"]
  assert data.is_sparse(exp.dataset.x_train) and exp.dataset.num_features == FEATURES
  assert isinstance(exp.shard.x, data.EllRows)
  x = exp.dataset.x_train
  width = int(x.getnnz(1).max())
  assert exp.shard.x.indices.shape == exp.shard.x.values.shape == (exp.shard.mask.shape[0], width)
  assert exp.shard.x.indices.sharding.spec == jax.P("data")
  # the device rows are the CSR rows, in order: every real row's ELL slots scatter back to it
  mask = np.asarray(exp.shard.mask) > 0
  idx, val = np.asarray(exp.shard.x.indices)[mask], np.asarray(exp.shard.x.values)[mask]
  assert len(idx) == x.shape[0] and np.count_nonzero(val) == x.nnz
  for r in range(0, x.shape[0], 7):
    np.testing.assert_array_equal(np.bincount(idx[r], val[r], FEATURES).astype(np.float32), x[r].toarray()[0])
  assert result.status == "ok" and np.isfinite(result.final["test_loss"]) and result.final["test_accuracy"] > 0.5
  # an f32 program: the lowered text (collectives as written) counts what the compiled one runs, plus the
  # one duplicate scalar psum XLA folds away (3 scalar all-reduces written, 2 run); bf16 would differ 2x
  assert result.final["bytes_source"] == "compiled"
  assert result.final["lowered_bytes_per_step"] == result.final["bytes_per_step"] + 4 > 4


def test_compiled_sparse_step_takes_memory_of_the_nonzeros_not_rows_times_features(sparse_run):
  exp = sparse_run["exp"]
  per_device_rows = exp.shard.mask.shape[0] // 8
  args = sparse_run["compiled"].memory_analysis().argument_size_in_bytes
  ell_bytes = per_device_rows * exp.shard.x.values.shape[1] * 8   # int32 index + float32 value per slot
  params_bytes = 4 * FEATURES
  # per device: the ELL rows (+ labels, mask), the params and DAP-SVRG's state (d-vectors)
  assert ell_bytes < args < 2 * ell_bytes + 2 * params_bytes, (args, ell_bytes, params_bytes)
  assert args < per_device_rows * FEATURES * 4 / 40


@pytest.mark.slow
def test_first_epoch_on_sparse_rows_equals_the_dense_path(sparse_run):
  """The same 400 rows densified (one more compile of the step, a dense one: 20 s at load 15)."""
  dense_run = _run(densify=True)
  assert isinstance(dense_run["exp"].shard.x, jax.Array)
  sparse, dense = sparse_run["result"], dense_run["result"]
  w_sparse, w_dense = (np.asarray(r.params["params"]["Dense_0"]["kernel"]).ravel() for r in (sparse, dense))
  assert np.count_nonzero(w_dense) > 100
  np.testing.assert_allclose(w_sparse, w_dense, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(sparse.history[0]["loss"], dense.history[0]["loss"], rtol=1e-5)
  np.testing.assert_allclose(sparse.final["test_loss"], dense.final["test_loss"], rtol=1e-5)
  # identical communication: the sparse rows change the local work, not what is exchanged
  assert sparse.final["bytes_per_step"] == dense.final["bytes_per_step"] == sparse.final["analytic_bytes_per_step"]
  # and the dense step's arguments do hold rows x features per device
  rows_bytes = dense_run["exp"].shard.mask.shape[0] // 8 * FEATURES * 4
  dense_args = dense_run["compiled"].memory_analysis().argument_size_in_bytes
  assert dense_args > rows_bytes > 40 * sparse_run["compiled"].memory_analysis().argument_size_in_bytes


@pytest.mark.parametrize("fields,named", [
    (dict(model="mlp", widths=(16,)), "model"),
    (dict(model="cnn", num_features=102_400, widths=(16,), channels=(4,)), "model"),
    (dict(algorithm="sfb"), "algorithm"),
])
def test_sparse_rows_with_a_dense_only_model_or_algorithm_are_refused_before_building(monkeypatch, fields, named):
  """4,000 x 100,000 (3,200 training rows): densifying would exceed 2^28 floats; the model or the
  algorithm cannot take ELL rows, so the run stops in ``validate`` with the field and the fix."""
  config = _config(num_rows=4000)
  if "algorithm" in fields:
    config = cli.load_config("configs/vr_prox_sparse.py")
    cli.apply_overrides(config, [("algorithm", "sfb"), ("num_rows", "4000")], say=lambda _: None)
  else:
    config.update(fields)
  monkeypatch.setattr(train, "build", lambda *a, **k: pytest.fail("built (and would compile) a refused config"))
  with pytest.raises(ConfigError) as err:
    train.run(config, quiet=True)
  message = str(err.value)
  assert err.value.field == named and "exceeds 2^28" in message and "max_train_rows" in message
  assert all(m in message for m in models.SPARSE_ROW_MODELS + train.SPARSE_ROW_ALGORITHMS)


@pytest.mark.parametrize("name,classes,bias", [("logistic", 2, False), ("softmax", 5, True)])
def test_linear_models_on_ell_rows_equal_flax_on_dense_rows(name, classes, bias):
  """``linear_on_ell`` (a gather per output column) against flax's ``Dense`` on the densified rows:
  logits, masked loss and its gradient (a scatter-add), with and without the intercept."""
  x, _, _ = data.sparse_logistic_csr(24, 40, nnz=(1, 9), seed=5)
  y = np.random.default_rng(0).integers(0, classes, 24).astype(np.int32)
  model = models.make(name, num_features=40, num_classes=classes, use_bias=bias)
  params = jax.tree.map(lambda p: p + 0.1, model.init(jax.random.key(1)))   # nonzero bias too
  mask = (np.arange(24) < 20).astype(np.float32)

  @jax.jit
  def both(params, ell, dense):
    return [(model.apply(params, rows), jax.grad(model.loss)(params, rows, y, mask)) for rows in (ell, dense)]

  (logits_ell, grad_ell), (logits_dense, grad_dense) = both(params, data.ell_rows(x), x.toarray())
  np.testing.assert_allclose(logits_ell, logits_dense, rtol=1e-5, atol=1e-6)
  assert logits_ell.shape == ((24,) if classes == 2 else (24, classes))
  for a, b in zip(jax.tree.leaves(grad_ell), jax.tree.leaves(grad_dense)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
  with pytest.raises(ValueError, match="takes dense rows, not EllRows"):
    models.make("mlp", num_features=40, num_classes=classes).apply(params, data.ell_rows(x))
