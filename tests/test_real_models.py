"""The cnn and transformer configs through the harness (issue 14), on shrunken models.

A dense sharded step equals the single-device SGD step on the same sampled rows; an SFB step with
every matrix layer factored (attention projections included) equals the dense step, and its
measured bytes equal the plan's; the language model's validation bits per character match a
NumPy evaluation; every algorithm arg of both configs builds and takes two steps.
"""
import functools
import math

import jax
import numpy as np
import pytest

from common import cli, data, train
from common.algos.base import AXIS
from configs import cnn_digits, transformer_text

TINY = {
    "cnn": dict(channels=(8, 8, 8), widths=(32,), batch_size=32),
    "transformer": dict(seq_len=8, d_model=16, num_heads=2, num_layers=1, batch_size=16, max_train_rows=256),
}
CONFIGS = {"cnn": cnn_digits, "transformer": transformer_text}


def _config(model, arg, **over):
  config = CONFIGS[model].get_config(arg)
  for k, v in dict(TINY[model], eval_every=0, log_every=1, **over).items():
    config[k] = v
  if config.algorithm == "sign1bit":
    config.max_train_rows = 64
  return config


def _host(tree):
  return jax.tree.map(lambda a: np.array(jax.device_get(a)), tree)


def _one_step(config):
  exp = train.build(config)
  compiled = exp.compile()
  before = _host(exp.params)
  params, _, metrics = compiled(exp.params, exp.opt_state, exp.shard, exp.key(1))
  jax.block_until_ready(metrics)
  return exp, compiled, before, _host(params)


@functools.cache
def _dense_sgd_step(model):
  """``_one_step`` of the dense config under SGD (lr 0.5), built once per module: the dense test
  checks it against single-device ``jax.grad``, the SFB test against its own step."""
  return _one_step(_config(model, "dense", optimizer="sgd", lr=0.5))


def _sampled_rows(exp, step):
  """The rows every device samples at ``step``, as ``local_gradient_method`` draws them."""
  num_devices = exp.mesh.shape[AXIS]
  host = data.shard_rows(exp.dataset.x_train, exp.dataset.y_train, num_devices)
  rows = len(host.y) // num_devices
  b = exp.config.batch_size // num_devices
  parts = []
  for d in range(num_devices):
    block = data.Shard(*(a[d * rows:(d + 1) * rows] for a in (host.x, host.y, host.mask)))
    parts.append(data.sample_batch(block, jax.random.fold_in(exp.key(step), d), b))
  return np.concatenate([p.x for p in parts]), np.concatenate([p.y for p in parts])


def _norm(tree):
  return float(np.sqrt(sum(np.sum(np.square(np.asarray(x, np.float64))) for x in jax.tree.leaves(tree))))


def _step_error(got, want, before):
  """‖got − want‖ / ‖want − before‖: the error relative to the step itself (a leaf whose true
  gradient is 0, such as the attention key bias, cannot dominate)."""
  return _norm(jax.tree.map(np.subtract, got, want)) / _norm(jax.tree.map(np.subtract, want, before))


@pytest.mark.parametrize("model", ["cnn", pytest.param("transformer", marks=pytest.mark.slow)])
def test_dense_sharded_step_equals_the_single_device_step(model):
  exp, _, before, after = _dense_sgd_step(model)
  x, y = _sampled_rows(exp, 1)
  grads = jax.jit(jax.grad(exp.model.loss))(before, x, y)   # one device, compiled (op by op: ~50 s)
  want = jax.tree.map(lambda p, g: p - 0.5 * g, before, grads)
  assert _step_error(after, want, before) < 1e-5


@pytest.mark.parametrize("model", ["cnn", pytest.param("transformer", marks=pytest.mark.slow)])
def test_sfb_on_every_matrix_layer_equals_dense_and_sends_the_plans_bytes(model):
  dense = _dense_sgd_step(model)
  exp, compiled, before, after = _one_step(_config(model, "sfb_all", optimizer="sgd", lr=0.5))
  assert _step_error(after, dense[3], before) < 1e-5
  from common import comm
  measured = comm.collective_bytes(compiled).payload
  assert measured == exp.method.analytic_payload + 4     # + the f32 pmean of the logged loss
  if model == "transformer":
    assert all(f"{p}:SFB" in exp.method.describe for p in ("query", "key", "value", "out"))


def test_validation_bits_per_character_match_numpy():
  config = _config("transformer", "dense")
  exp = train.build(config)
  got = train.evaluate(exp, exp.params)
  params = _host(exp.params)
  x = exp.dataset.x_test
  logits = np.asarray(jax.jit(exp.model.apply)(params, x), np.float64)
  targets = x[:, 1:].astype(np.int64)
  logz = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
  want = float(np.mean(logz - np.take_along_axis(logits, targets[..., None], -1)[..., 0]))
  assert got["test_loss"] == pytest.approx(want, rel=1e-5)
  assert got["test_bpc"] == pytest.approx(want / math.log(2), rel=1e-5)
  assert "train_bpc" in got


QUICK = {("cnn", "dense"), ("transformer", "dense")}


@pytest.mark.parametrize("model,arg", [
    pytest.param(m, a, marks=() if (m, a) in QUICK else pytest.mark.slow)
    for m in ("cnn", "transformer") for a in cnn_digits.ARGS])
def test_every_algorithm_arg_takes_two_steps(model, arg):
  config = _config(model, arg, num_steps=2)
  result = train.run(config, None, quiet=True)
  assert result.status == "ok" and result.step == 2
  assert np.isfinite(result.final["test_loss"])
  assert ("test_bpc" in result.final) == (model == "transformer")


def test_unknown_arg_is_refused_naming_the_allowed_ones():
  with pytest.raises(ValueError, match="unknown config arg 'nope'; allowed: dense, sfb"):
    cli.load_config("configs/transformer_text.py:nope")
