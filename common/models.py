"""Models as pure (init, apply, loss) triples over flax linen modules.

``config.model``: ``softmax`` (multinomial logistic regression, one Dense layer),
``mlp`` (Dense-ReLU stack, widths ``config.widths``), ``logistic`` (binary logistic
regression, one Dense output; labels in {0, 1}), ``cnn`` (a residual conv net on square
single-channel images, ``config.channels`` per stage, a Dense head of widths ``config.widths``)
and ``transformer`` (a decoder-only causal byte-level LM on the ``text`` dataset:
``config.d_model``, ``config.num_heads``, ``config.num_layers``, ``config.seq_len``).
``config.use_bias`` switches intercepts. The linear models (``SPARSE_ROW_MODELS``: softmax,
logistic) also take sparse rows as ``common.data.EllRows``: ``x_i . W`` is a gather of W's rows
(``vr_prox.ell_matvec``), its gradient a scatter-add, never a dense ``[rows, D]`` array. Losses are masked means, so padded rows contribute
nothing; every model's loss is a mean of per-row losses (no batch statistics), so a row's
gradient does not depend on which device or batch holds it.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

import vr_prox
from common import text
from common.data import EllRows
from common.errors import ConfigError
from common.fields import MODELS  # noqa: F401 (re-exported)

GROUPS = 8   # GroupNorm groups (gcd with the channel count)
SPARSE_ROW_MODELS = ("softmax", "logistic")   # one Dense layer: they take EllRows (``linear_on_ell``)


class MLP(nn.Module):
  widths: Sequence[int]
  num_outputs: int
  use_bias: bool = True

  @nn.compact
  def __call__(self, x):
    for w in self.widths:
      x = nn.relu(nn.Dense(w, use_bias=self.use_bias)(x))
    return nn.Dense(self.num_outputs, use_bias=self.use_bias)(x)


def _groups(channels: int) -> int:
  return math.gcd(GROUPS, channels)


class ResidualBlock(nn.Module):
  """Two 3x3 convolutions with GroupNorm and an identity (or 1x1 projection) shortcut; He et al.,
  *Deep Residual Learning*, CVPR 2016, Eq. (1)-(2), with GroupNorm (Wu & He, ECCV 2018, Eq. (1))
  in place of batch norm."""
  channels: int
  stride: int = 1

  @nn.compact
  def __call__(self, x):
    y = nn.Conv(self.channels, (3, 3), strides=self.stride, use_bias=False)(x)
    y = nn.relu(nn.GroupNorm(num_groups=_groups(self.channels))(y))
    y = nn.Conv(self.channels, (3, 3), use_bias=False)(y)
    y = nn.GroupNorm(num_groups=_groups(self.channels))(y)
    if x.shape[-1] != self.channels or self.stride != 1:
      x = nn.Conv(self.channels, (1, 1), strides=self.stride, use_bias=False)(x)
    return nn.relu(x + y)


class CNN(nn.Module):
  """A conv stem, one residual block per stage (stride 2 from the second stage on), then the
  flattened features through a Dense head (Poseidon's hybrid: the convolutions are dense, the
  head's kernels are SFB-eligible)."""
  image_shape: tuple[int, int, int]
  channels: Sequence[int]
  widths: Sequence[int]
  num_outputs: int
  use_bias: bool = True

  @nn.compact
  def __call__(self, x):
    x = x.reshape((x.shape[0],) + tuple(self.image_shape))
    x = nn.Conv(self.channels[0], (3, 3), use_bias=False)(x)
    for stage, c in enumerate(self.channels):
      x = ResidualBlock(c, stride=1 if stage == 0 else 2)(x)
    x = x.reshape((x.shape[0], -1))
    return MLP(tuple(self.widths), self.num_outputs, self.use_bias)(x)


class DecoderBlock(nn.Module):
  """Pre-LN decoder block (Radford et al., GPT-2, 2019, Sec. 2.3; Xiong et al., ICML 2020, Eq. in
  Table 1): x + Attn(LN(x)) with a causal mask, then x + MLP(LN(x)), MLP width 4·d_model."""
  d_model: int
  num_heads: int
  use_bias: bool = True

  @nn.compact
  def __call__(self, x, mask):
    h = nn.LayerNorm()(x)
    x = x + nn.MultiHeadDotProductAttention(self.num_heads, use_bias=self.use_bias)(h, mask=mask)
    h = nn.LayerNorm()(x)
    h = nn.gelu(nn.Dense(4 * self.d_model, use_bias=self.use_bias)(h))
    return x + nn.Dense(self.d_model, use_bias=self.use_bias)(h)


class TransformerLM(nn.Module):
  """Decoder-only causal LM: token embedding + learned positions, ``num_layers`` pre-LN blocks,
  a final LayerNorm and an untied Dense output over the vocabulary (Vaswani et al., NeurIPS 2017,
  Sec. 3; the untied output keeps every matrix an ordinary ``nn.Dense``/``DenseGeneral``)."""
  vocab: int
  seq_len: int
  d_model: int
  num_heads: int
  num_layers: int
  use_bias: bool = True

  @nn.compact
  def __call__(self, tokens):
    x = nn.Embed(self.vocab, self.d_model)(tokens)
    positions = self.param("positions", nn.initializers.normal(0.02), (self.seq_len, self.d_model))
    x = x + positions[:tokens.shape[-1]]
    mask = nn.make_causal_mask(tokens)
    for _ in range(self.num_layers):
      x = DecoderBlock(self.d_model, self.num_heads, self.use_bias)(x, mask)
    return nn.Dense(self.vocab, use_bias=self.use_bias)(nn.LayerNorm()(x))


@dataclasses.dataclass(frozen=True)
class Model:
  """A flax module with a masked-mean loss; everything pure and jit-friendly."""
  name: str
  module: nn.Module
  num_features: int
  binary: bool
  eval_train_subset: bool = False   # common.train.evaluate: train metrics on a test-sized subset

  def init(self, key: jax.Array) -> Any:
    return self.module.init(key, jnp.zeros((1, self.num_features), jnp.float32))

  def apply(self, params, x):
    if isinstance(x, EllRows):
      if self.name not in SPARSE_ROW_MODELS:
        raise ValueError(f"model {self.name!r} takes dense rows, not EllRows (sparse rows: {SPARSE_ROW_MODELS})")
      out = linear_on_ell(params, x)
    else:
      out = self.module.apply(params, x)
    return out[..., 0] if self.binary else out

  def per_example_loss(self, params, x, y):
    logits = self.apply(params, x)
    if self.binary:
      return optax.sigmoid_binary_cross_entropy(logits, y.astype(logits.dtype))
    return optax.softmax_cross_entropy_with_integer_labels(logits, y)

  def loss(self, params, x, y, mask=None):
    """Masked mean loss over rows (``mask`` None means all rows count)."""
    losses = self.per_example_loss(params, x, y)
    if mask is None:
      return jnp.mean(losses)
    return jnp.sum(losses * mask) / jnp.maximum(jnp.sum(mask), 1.0)

  def predict(self, params, x):
    logits = self.apply(params, x)
    return (logits > 0).astype(jnp.int32) if self.binary else jnp.argmax(logits, -1)

  def per_example_hits(self, params, x, y):
    return (self.predict(params, x) == y).astype(jnp.float32)

  def accuracy(self, params, x, y, mask=None):
    hit = self.per_example_hits(params, x, y)
    if mask is None:
      return jnp.mean(hit)
    return jnp.sum(hit * mask) / jnp.maximum(jnp.sum(mask), 1.0)

  def derived_metrics(self, results: dict) -> dict:
    """Metrics computed from ``evaluate``'s ``{split}_loss`` values (none for classifiers)."""
    del results
    return {}


@dataclasses.dataclass(frozen=True)
class LanguageModel(Model):
  """A causal LM over windows ``x[rows, T + 1]`` of byte tokens (stored as floats, as every
  dataset's features are): inputs ``x[:, :-1]``, targets ``x[:, 1:]``; ``y`` is unused.

  A row's loss is the mean next-token cross-entropy (nats) over its T positions, so the masked
  mean over rows is the mean over all tokens; ``accuracy`` is next-token accuracy.
  """

  def init(self, key: jax.Array) -> Any:
    return self.module.init(key, jnp.zeros((1, self.num_features - 1), jnp.int32))

  def apply(self, params, x):
    return self.module.apply(params, x[..., :-1].astype(jnp.int32))

  def per_example_loss(self, params, x, y):
    del y
    logits = self.apply(params, x)
    targets = x[..., 1:].astype(jnp.int32)
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, targets), axis=-1)

  def per_example_hits(self, params, x, y):
    del y
    hit = jnp.argmax(self.apply(params, x), -1) == x[..., 1:].astype(jnp.int32)
    return jnp.mean(hit.astype(jnp.float32), axis=-1)

  def derived_metrics(self, results: dict) -> dict:
    """``{split}_bpc``: the loss in bits per byte-level character, ``loss / ln 2``."""
    return {k[:-len("loss")] + "bpc": text.bits_per_byte(v) for k, v in results.items() if k.endswith("_loss")}


def linear_on_ell(params, x: EllRows):
  """The one Dense layer of a linear model (``MLP((), C)``: ``x W + b``) on ELL rows: column c of the
  ``[rows, C]`` logits is ``vr_prox.ell_matvec(x.indices, x.values, W[:, c])`` (+ ``b[c]``)."""
  layer = params["params"]["Dense_0"]
  out = jax.vmap(lambda w: vr_prox.ell_matvec(x.indices, x.values, w), in_axes=1, out_axes=-1)(layer["kernel"])
  return out + layer["bias"] if "bias" in layer else out


def image_shape(num_features: int) -> tuple[int, int, int]:
  """(side, side, 1) for square single-channel images of ``num_features`` pixels (digits: 8x8x1)."""
  side = math.isqrt(num_features)
  if side * side != num_features:
    raise ConfigError("model", f"'cnn' needs square single-channel images; this dataset has {num_features} "
                      "features, not a square number (use --config.dataset=digits)")
  return (side, side, 1)


def make(name: str, *, num_features: int, num_classes: int, widths: Sequence[int] = (64,),
         use_bias: bool = True, channels: Sequence[int] = (16, 32, 64), d_model: int = 128,
         num_heads: int = 4, num_layers: int = 5) -> Model:
  """The model ``name`` for a dataset with ``num_features`` features and ``num_classes`` classes.

  For ``transformer`` the features are the ``seq_len + 1`` tokens of a window and the classes
  the vocabulary. The keyword defaults are ``configs/common.py``'s.
  """
  if name == "cnn":
    module = CNN(image_shape(num_features), tuple(channels), tuple(widths), num_classes, use_bias)
    return Model(name, module, num_features, False)
  if name == "transformer":
    if d_model % num_heads:
      raise ConfigError("d_model", f"must be divisible by num_heads={num_heads}, got {d_model}")
    module = TransformerLM(num_classes, num_features - 1, d_model, num_heads, num_layers, use_bias)
    return LanguageModel(name, module, num_features, False, eval_train_subset=True)
  if name == "softmax":
    return Model(name, MLP((), num_classes, use_bias), num_features, False)
  if name == "mlp":
    return Model(name, MLP(tuple(widths), num_classes, use_bias), num_features, False)
  if name == "logistic":
    if num_classes != 2:
      raise ConfigError("model", f"'logistic' needs a binary dataset; this one has {num_classes} classes")
    return Model(name, MLP((), 1, use_bias), num_features, True)
  raise ConfigError("model", f"unknown model {name!r}; allowed: {', '.join(MODELS)}")


def from_config(config, dataset) -> Model:
  """``make`` with every model field of ``config`` (``configs/common.py``) for ``dataset``."""
  return make(config.model, num_features=dataset.num_features, num_classes=dataset.num_classes,
              widths=tuple(config.widths), use_bias=config.use_bias, channels=tuple(config.channels),
              d_model=config.d_model, num_heads=config.num_heads, num_layers=config.num_layers)
