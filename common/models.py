"""Models as pure (init, apply, loss) triples over flax linen modules.

``config.model``: ``softmax`` (multinomial logistic regression, one Dense layer),
``mlp`` (Dense-ReLU stack, widths ``config.widths``) and ``logistic`` (binary logistic
regression, one Dense output; labels in {0, 1}). ``config.use_bias`` switches intercepts.
Losses are masked means, so padded rows contribute nothing.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from common.errors import ConfigError
from common.fields import MODELS  # noqa: F401 (re-exported)



class MLP(nn.Module):
  widths: Sequence[int]
  num_outputs: int
  use_bias: bool = True

  @nn.compact
  def __call__(self, x):
    for w in self.widths:
      x = nn.relu(nn.Dense(w, use_bias=self.use_bias)(x))
    return nn.Dense(self.num_outputs, use_bias=self.use_bias)(x)


@dataclasses.dataclass(frozen=True)
class Model:
  """A flax module with a masked-mean loss; everything pure and jit-friendly."""
  name: str
  module: nn.Module
  num_features: int
  binary: bool

  def init(self, key: jax.Array) -> Any:
    return self.module.init(key, jnp.zeros((1, self.num_features), jnp.float32))

  def apply(self, params, x):
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

  def accuracy(self, params, x, y, mask=None):
    hit = (self.predict(params, x) == y).astype(jnp.float32)
    if mask is None:
      return jnp.mean(hit)
    return jnp.sum(hit * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def make(name: str, *, num_features: int, num_classes: int, widths: Sequence[int] = (64,),
         use_bias: bool = True) -> Model:
  if name == "softmax":
    return Model(name, MLP((), num_classes, use_bias), num_features, False)
  if name == "mlp":
    return Model(name, MLP(tuple(widths), num_classes, use_bias), num_features, False)
  if name == "logistic":
    if num_classes != 2:
      raise ConfigError("model", f"'logistic' needs a binary dataset; this one has {num_classes} classes")
    return Model(name, MLP((), 1, use_bias), num_features, True)
  raise ConfigError("model", f"unknown model {name!r}; allowed: {', '.join(MODELS)}")
