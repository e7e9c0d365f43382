"""sign1bit through the harness: config errors named, partition layout, exact SGC step, bytes, §8.8 smoke."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl import flags
from ml_collections import config_flags

from common import comm, train
from common.algos import sign1bit as adapter
from common.errors import ConfigError
from configs import sign1bit_digits
from configs.common import override

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(arg=None, **overrides):
  config = sign1bit_digits.get_config(arg)
  config.num_steps, config.eval_every, config.log_every = 5, 0, 10 ** 6
  return override(config, **overrides)


# ----------------------------------------------------------------------------- configuration


@pytest.mark.parametrize("field,overrides", [
    ("algo.scheme", {"algo.scheme": "qsgd"}),
    ("algo.allocation", {"algo.allocation": "random"}),
    ("algo.partitions", {"algo.partitions": "dirichlet"}),
    ("algo.wire", {"algo.wire": "int4"}),
    ("algo.straggler_prob", {"algo.straggler_prob": 1.0}),
    ("algo.straggler_prob", {"algo.straggler_prob": -0.1}),
    ("algo.bound", {"algo.bound": "0"}),
    ("algo.bound", {"algo.bound": "-0.5"}),
    ("algo.bound", {"algo.bound": "infinity-ish"}),
    ("algo.bound", {"algo.bound": "nan"}),
    ("algo.redundancy", {"algo.redundancy": 3}),                                  # frc: 3 does not divide 8
    ("algo.redundancy", {"algo.allocation": "cyclic", "algo.redundancy": 9}),
    ("algo.redundancy", {"algo.allocation": "bibd", "algo.redundancy": 2}),
    ("num_devices", {"algo.allocation": "bibd", "algo.redundancy": 3}),          # Fano needs 7 devices
    ("algo.partitions_per_group", {"algo.partitions_per_group": 0}),
    ("algo.partitions_per_group", {"algo.allocation": "cyclic", "algo.partitions_per_group": 2}),   # frc only
    ("algo.allocation", {"algo.allocation": "custom"}),                          # needs a matrix
    ("algo.bound", {"algo.bound": "inf"}),
    ("algo.wire", {"algo.wire": "int8_psum"}),                                   # with bound = linf
    ("algo.wire", {"algo.wire": "int8_psum", "algo.scheme": "sgc"}),
    ("algo.wire", {"algo.wire": "int8_psum", "algo.scheme": "ef_signsgd"}),
    ("algo.l2", {"algo.l2": -1e-3}),
    ("optimizer", {"optimizer": "adam"}),
])
def test_bad_config_names_the_field(field, overrides):
  config = _config(**overrides)
  with pytest.raises(ConfigError) as err:
    train.validate(config, available_devices=8)
  assert err.value.field == field, str(err.value)
  assert str(err.value).startswith(f"config.{field}: ")


@pytest.mark.parametrize("overrides", [
    {},
    {"algo.bound": "0.625", "algo.wire": "int8_psum"},
    {"algo.allocation": "cyclic", "algo.redundancy": 3},
    {"algo.allocation": "bibd", "algo.redundancy": 7},                           # complement design
    {"algo.allocation": "bibd", "algo.redundancy": 3, "num_devices": 7, "batch_size": 7},   # Fano
    {"algo.scheme": "signsgd_majority", "algo.redundancy": 3},                   # d=1 baselines ignore d
    {"algo.straggler_prob": 0.0},
])
def test_good_configs_validate(overrides):
  train.validate(_config(**overrides), available_devices=8)


@pytest.mark.parametrize("arg", ["gc", "const", "sgc", "shuffled", "ef", "mv", "is", "is_1bit", "mv,shuffled"])
def test_config_args_validate(arg):
  train.validate(_config(arg), available_devices=8)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")   # config_flags loads the file with load_module
@pytest.mark.parametrize("value,parsed", [("linf", "linf"), ("0.5", 0.5), ("1", 1.0), ("LINF", "linf")])
def test_bound_from_the_command_line(value, parsed):
  argv = ["launch.py", f"--config={os.path.join(ROOT, 'configs', 'sign1bit_digits.py')}",
          f"--config.algo.bound={value}"]
  fv = flags.FlagValues()   # as launch.py defines it; overrides are discovered from argv
  config_flags.DEFINE_config_file("config", None, "config", flag_values=fv, lock_config=True, sys_argv=argv)
  fv(argv)
  assert fv.config.algo.bound == value
  assert adapter.parse_bound(fv.config.algo.bound) == parsed
  train.validate(fv.config, available_devices=8)


def test_const_arg_is_the_provable_bound():
  config = _config("const")
  # B = l G / (d (1 - p)) with G = 1, l = 1, d = 2, p = 0.2
  assert adapter.parse_bound(config.algo.bound) == pytest.approx(1 / (2 * 0.8))
  assert config.lr == 0.03


# ----------------------------------------------------------------------------- data layout


@pytest.mark.parametrize("partitions", ["sorted", "shuffled"])
def test_partition_rows_cover_every_row_d_times(partitions):
  config = _config(**{"algo.partitions": partitions})
  dataset = train.load_dataset(config)
  n = dataset.num_train
  rows = adapter.partition_rows(config, n, 8)
  assert len(rows) == 8
  counts = np.bincount(np.concatenate(rows), minlength=n)
  np.testing.assert_array_equal(counts, 2)                          # frc d = 2: every row exactly twice
  for g in range(4):                                                # group g = workers 2g, 2g+1 hold partition g
    np.testing.assert_array_equal(rows[2 * g], rows[2 * g + 1])
  sizes = [len(rows[2 * g]) for g in range(4)]
  assert max(sizes) - min(sizes) <= 1 and sum(sizes) == n
  labels = [dataset.y_train[rows[2 * g]] for g in range(4)]
  if partitions == "sorted":
    for g in range(4):
      assert np.all(np.diff(labels[g]) >= 0)
      if g:
        assert labels[g - 1][-1] <= labels[g][0]
  else:
    assert len(np.unique(labels[0])) == 10
  assert adapter.partition_rows(config, n, 8)[3].tolist() == rows[3].tolist()   # deterministic


def test_cyclic_rows_and_weights_match_the_harness_shard():
  config = _config(**{"algo.allocation": "cyclic", "algo.redundancy": 3})
  exp = train.build(config)
  n = exp.dataset.num_train
  rows = adapter.partition_rows(config, n, 8)
  np.testing.assert_array_equal(np.bincount(np.concatenate(rows), minlength=n), 3)
  alloc = adapter.make_allocation(config, 8)
  weights = adapter.row_weights(alloc, n)
  mask = np.asarray(exp.shard.mask).reshape(8, -1)
  assert weights.shape == mask.shape
  np.testing.assert_array_equal(weights > 0, mask > 0)
  np.testing.assert_allclose(weights.sum(1), alloc.load, rtol=1e-6)   # Σ over ℓ partitions of n_k · (1/n_k)
  y = np.asarray(exp.shard.y).reshape(8, -1)
  for i in range(8):
    np.testing.assert_array_equal(y[i, :len(rows[i])], exp.dataset.y_train[rows[i]])


# ----------------------------------------------------------------------------- exactness


def _objective(model, x, y, parts, l2):
  """F(w) = (1/N) Σ_k [mean loss over partition k + (λ/2)‖w‖²], on one device."""
  def f(params):
    sq = sum(jnp.sum(v ** 2) for v in jax.tree.leaves(params))
    return jnp.mean(jnp.stack([model.loss(params, x[idx], y[idx]) for idx in parts])) + 0.5 * l2 * sq
  return f


@pytest.mark.parametrize("allocation,d", [("frc", 2), ("cyclic", 3)])
def test_sgc_without_stragglers_is_full_gradient_descent(allocation, d):
  lr = 0.7
  config = _config("sgc", lr=lr, **{"algo.straggler_prob": 0.0, "algo.allocation": allocation,
                                   "algo.redundancy": d})
  exp = train.build(config)
  ds = exp.dataset
  n_parts = 4 if allocation == "frc" else 8
  parts = np.array_split(np.argsort(ds.y_train, kind="stable"), n_parts)   # independent of the adapter
  F = jax.jit(_objective(exp.model, jnp.asarray(ds.x_train), jnp.asarray(ds.y_train), parts, 1e-3))
  grad_F = jax.jit(jax.grad(F))
  ref = jax.device_get(exp.params)
  params, state = exp.params, exp.opt_state
  for step in (1, 2, 3):
    params, state, metrics = exp.step_fn(params, state, exp.shard, exp.key(step))
    jax.block_until_ready(metrics)
    assert float(metrics["loss"]) == pytest.approx(float(F(ref)), rel=1e-5)   # exact F at the step's params
    assert float(metrics["active"]) == 8
    ref = jax.tree.map(lambda w, g: w - lr * g, ref, grad_F(ref))
    for a, b in zip(jax.tree.leaves(jax.device_get(params)), jax.tree.leaves(ref)):
      np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)
  assert float(metrics["uplink_bits"]) == 3 * 8 * 32 * 650


# ----------------------------------------------------------------------------- bytes


@pytest.mark.parametrize("arg,overrides,payload", [
    ("gc", {}, 82 + 4 + 4),                                            # bits + f32 scale + loss psum
    ("const", {}, 82 + 4 + 4),                                         # bits + (loss, clipped) psum
    ("const", {"algo.wire": "int8_psum"}, 650 + 8),
    ("sgc", {}, 4 * 650 + 4),
    ("is", {}, 4 * 650 + 4),
    ("is_1bit", {}, 82 + 4 + 4),
    ("is_1bit", {"algo.bound": "1.0"}, 82 + 8),
    ("mv", {}, 82 + 4),
    ("mv", {"algo.wire": "int8_psum"}, 650 + 4),
    ("ef", {}, 82 + 4 + 4),
])
def test_measured_bytes_equal_analytic(arg, overrides, payload):
  exp = train.build(_config(arg, **overrides))
  report = comm.collective_bytes(exp.compile())
  assert exp.method.analytic_payload == payload
  assert report.payload == payload, report.summary()
  if exp.config.algo.scheme not in ("sgc", "ignore_stragglers"):
    assert not comm.dense_allreduce_present(report, 650), report.summary()
    assert not any("f32" in c.dtypes and c.elements >= 650 for c in report.collectives), report.summary()
  if exp.config.algo.wire == "packed" and exp.config.algo.scheme not in ("sgc", "ignore_stragglers"):
    assert any(c.kind == "all-gather" and "u8[8,82]" in c.shape for c in report.collectives), report.summary()


# ----------------------------------------------------------------------------- training


def test_spec_8_8_smoke_linf():
  """Spec §8.8: W=8, frc d=2, p=0.2, label-sorted, B='linf', lr 0.3, 1500 steps -> F <= 0.34, acc >= 0.95."""
  config = _config()
  config.num_steps = 1500
  result = train.run(config, quiet=True)
  assert result.status == "ok" and result.step == 1500
  assert result.history[-1]["loss"] <= 0.34, result.history[-1]
  assert result.final["test_accuracy"] >= 0.95, result.final
  assert result.comm.payload == result.final["analytic_bytes_per_step"] == 90
  active = np.array([h["active"] for h in result.history])
  assert np.all((active >= 0) & (active <= 8))
  assert abs(active.mean() / 8 - 0.8) < 0.03                          # 1 - p, 12000 Bernoulli draws
  bits = np.array([h["uplink_bits"] for h in result.history])
  np.testing.assert_allclose(bits, (650 + 32) * np.cumsum(active), rtol=1e-6)


@pytest.mark.slow
def test_spec_8_8_smoke_constant_bound():
  """Spec §8.8: constant B = lG/(d(1-p)) = 0.625, lr 0.03, 1500 steps -> F <= 0.70; B is provably safe: no clipping."""
  config = _config("const")
  config.num_steps = 1500
  result = train.run(config, quiet=True)
  assert result.history[-1]["loss"] <= 0.70, result.history[-1]
  assert max(h["clipped"] for h in result.history) == 0.0


def test_ef_keeps_per_worker_error_state():
  result = train.run(_config("ef"), quiet=True)
  state = result.opt_state
  errors = jax.tree.leaves(state[0].error)
  assert errors and all(e.shape[0] == 8 for e in errors)
  assert all(e.sharding.spec == jax.P("data") for e in errors)
  kernel = np.asarray(state[0].error["params"]["Dense_0"]["kernel"])
  assert np.abs(kernel).max() > 0
  assert not np.allclose(kernel[0], kernel[2])                         # workers 0 and 2 hold different data
  assert state[0].key.dtype == np.uint32                               # raw key data, placeable
  assert result.history[-1]["loss"] < result.history[0]["loss"]


def test_clip_count_is_per_worker_and_counted():
  result = train.run(_config("const", **{"algo.bound": "0.001"}), quiet=True)   # far below |c|: clips
  clip = np.asarray(result.opt_state[0].clip_count)
  assert clip.shape == (8,) and clip.max() > 0
  assert all(0 < h["clipped"] <= 1 for h in result.history if h["active"] > 0)


def test_resume_is_bit_identical(tmp_path):
  config = _config("ef", num_steps=12, checkpoint_every=4)
  straight = train.run(config, str(tmp_path / "straight"), quiet=True)
  interrupted = str(tmp_path / "interrupted")
  train.run(config, interrupted, quiet=True, stop_after=8)
  resumed = train.run(config, interrupted, quiet=True)
  assert resumed.history[0]["step"] == 9
  assert [h["loss"] for h in resumed.history] == [h["loss"] for h in straight.history[8:]]
  for a, b in zip(jax.tree.leaves(straight.params), jax.tree.leaves(resumed.params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  for a, b in zip(jax.tree.leaves(straight.opt_state), jax.tree.leaves(resumed.opt_state)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_x64_state_dtypes_are_stable_and_bytes_match():
  """With x64 the counters must stay int32 (the compiled step is re-fed its own state); the loss and
  clip psum is then f64: 82 + 2 * 8 bytes."""
  with jax.enable_x64(True):
    result = train.run(_config("const", x64=True, num_steps=3), quiet=True)
    assert result.status == "ok"
    assert result.comm.payload == result.final["analytic_bytes_per_step"] == 82 + 16
    s = result.opt_state[0]
    assert s.count.dtype == s.active_total.dtype == s.last_active.dtype == s.clip_count.dtype == np.int32
    assert jax.tree.leaves(result.params)[0].dtype == np.float64
