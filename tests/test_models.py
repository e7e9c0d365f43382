"""The cnn and transformer models and the byte-level text data (issue 14).

Shapes and parameter counts against closed forms, causal masking, GroupNorm's per-example
independence, the text split by position, and bits per character against a NumPy evaluation.
"""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from common import data, models, text
from common.algos.base import param_count
from configs.common import base_config


def _transformer_count(vocab, seq_len, d, layers):
  """Closed form: embedding, positions, per block 2 LayerNorms + q/k/v/out (d x d + d each) + MLP
  d -> 4d -> d, final LayerNorm, untied output d -> vocab."""
  block = 2 * 2 * d + 4 * (d * d + d) + (d * 4 * d + 4 * d) + (4 * d * d + d)
  return vocab * d + seq_len * d + layers * block + 2 * d + d * vocab + vocab


def _shapes(model):
  return jax.eval_shape(model.init, jax.random.key(0))


def test_default_transformer_has_over_a_million_parameters_as_the_closed_form_says():
  c = base_config()
  model = models.make("transformer", num_features=c.seq_len + 1, num_classes=text.VOCAB, d_model=c.d_model,
                      num_heads=c.num_heads, num_layers=c.num_layers)
  n = param_count(_shapes(model))
  assert n == _transformer_count(text.VOCAB, c.seq_len, c.d_model, c.num_layers) == 1_339_776
  assert n >= 1_000_000


def test_cnn_shapes_and_count():
  model = models.make("cnn", num_features=64, num_classes=10, widths=(256,), channels=(16, 32, 64))
  p = _shapes(model)["params"]
  convs = 9 * 1 * 16 + (9 * 16 * 16 * 2) + (9 * 16 * 32 + 9 * 32 * 32 + 16 * 32) + (9 * 32 * 64 + 9 * 64 * 64 + 32 * 64)
  norms = 2 * 2 * (16 + 32 + 64)
  head = 256 * 256 + 256 + 256 * 10 + 10      # flatten 2x2x64 = 256 -> 256 -> 10
  assert param_count(p) == convs + norms + head
  out = jax.eval_shape(model.apply, _shapes(model), jnp.zeros((5, 64)))
  assert out.shape == (5, 10)


def test_cnn_refuses_non_square_images():
  with pytest.raises(Exception, match="square"):
    models.make("cnn", num_features=30, num_classes=2)


def _tiny_lm(seq_len=8):
  return models.make("transformer", num_features=seq_len + 1, num_classes=text.VOCAB, d_model=16,
                     num_heads=2, num_layers=2)


def test_transformer_is_causal():
  model = _tiny_lm()
  params = model.init(jax.random.key(1))
  x = np.asarray(np.random.default_rng(0).integers(0, 256, (2, 9)), np.float32)
  t = 4
  changed = x.copy()
  changed[:, t] = (changed[:, t] + 7) % 256
  apply = jax.jit(model.apply)
  a, b = np.asarray(apply(params, x)), np.asarray(apply(params, changed))
  assert a.shape == (2, 8, text.VOCAB)
  np.testing.assert_array_equal(a[:, :t], b[:, :t])          # earlier positions do not see token t
  assert np.abs(a[:, t:] - b[:, t:]).max(axis=-1).min() > 1e-6   # every later position does


def _numpy_lm_loss(logits, targets):
  logits = np.asarray(logits, np.float64)
  logz = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
  return float(np.mean(logz - np.take_along_axis(logits, targets[..., None], -1)[..., 0]))


def test_lm_loss_is_the_mean_next_byte_cross_entropy():
  model = _tiny_lm()
  params = model.init(jax.random.key(2))
  x = np.asarray(np.random.default_rng(1).integers(0, 256, (3, 9)), np.float32)
  logits, loss = jax.jit(lambda p: (model.apply(p, x), model.loss(p, x, np.zeros(3, np.int32))))(params)
  assert float(loss) == pytest.approx(_numpy_lm_loss(logits, x[:, 1:].astype(np.int64)), rel=1e-5)


def test_cnn_row_losses_do_not_depend_on_the_rest_of_the_batch():
  """GroupNorm normalises within an example: no batch statistics couple the rows."""
  model = models.make("cnn", num_features=64, num_classes=10, widths=(32,), channels=(8, 8, 16))
  params = model.init(jax.random.key(3))
  x = np.random.default_rng(2).uniform(size=(6, 64)).astype(np.float32)
  y = np.arange(6, dtype=np.int32)
  losses = jax.jit(model.per_example_loss)          # one compile: both batches have one shape
  other = x.copy()
  other[3:] = np.random.default_rng(3).uniform(size=(3, 64)) * 5.0   # the rest of the batch changes
  first, second = np.asarray(losses(params, x, y)), np.asarray(losses(params, other, y))
  np.testing.assert_allclose(first[:3], second[:3], rtol=1e-6)
  assert np.abs(first[3:] - second[3:]).min() > 1e-6


def test_text_split_is_by_position_and_deterministic():
  raw = np.frombuffer(text.corpus_bytes(), np.uint8)
  assert len(raw) > 400_000
  train, valid = text.load(64, 0.1)
  again, _ = text.load(64, 0.1)
  np.testing.assert_array_equal(train, again)
  cut = len(raw) - int(round(0.1 * len(raw)))
  # windows overlap by one byte: inputs of window i + the last target rebuild the prefix
  rebuilt = np.concatenate([train[:, :-1].reshape(-1), train[-1:, -1]])
  np.testing.assert_array_equal(rebuilt, raw[:len(rebuilt)])
  assert len(rebuilt) > cut - 65 and len(rebuilt) <= cut
  np.testing.assert_array_equal(valid[0], raw[cut:cut + 65])
  np.testing.assert_array_equal(valid[:, 1:].reshape(-1)[:64], raw[cut + 1:cut + 65])


def test_text_dataset_and_max_train_rows():
  full = data.load("text", test_fraction=0.1, seq_len=32)
  few = data.load("text", test_fraction=0.1, seq_len=32, max_train_rows=10)
  assert full.num_classes == 256 and full.num_features == 33
  np.testing.assert_array_equal(few.x_train, full.x_train[:10])
  np.testing.assert_array_equal(few.x_test, full.x_test)


def test_bits_per_character_is_loss_over_ln2():
  assert text.bits_per_byte(math.log(2.0) * 3.0) == pytest.approx(3.0)
  model = _tiny_lm()
  out = model.derived_metrics({"train_loss": 1.0, "test_loss": 2.0, "test_accuracy": 0.5})
  assert out == {"train_bpc": pytest.approx(1 / math.log(2)), "test_bpc": pytest.approx(2 / math.log(2))}
