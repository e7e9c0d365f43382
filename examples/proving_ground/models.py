"""The user's models and losses: a tiny MLP classifier in five shapes (flax linen).

Every variant maps ``x [rows, 6]`` to 4 class logits; ``loss(params, x, y)`` is the mean softmax
cross-entropy over the rows given (plus the variant's extra term), so the gradient of the global
batch is the mean of equal shards' local gradients.

  plain  Dense(8) -> tanh -> Dense(4)
  l2     plain + 1e-2 * ||hidden kernel||^2 written in the loss (a kernel used outside its Dense)
  tied   plain + 0.1 * reconstruction of x through the hidden kernel transposed (tied weights)
  remat  the hidden block under ``nn.remat``
  scan   two hidden blocks under ``nn.scan`` (stacked kernels)
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

FEATURES, HIDDEN, CLASSES = 6, 8, 4
VARIANTS = ("plain", "l2", "tied", "remat", "scan")
L2 = 1e-2
TIE = 0.1


class Block(nn.Module):
  """Dense + tanh; returns ``(h, None)`` so ``nn.scan`` can stack it."""
  features: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, h, _=None):
    return jnp.tanh(nn.Dense(self.features, dtype=self.dtype, param_dtype=self.dtype)(h)), None


class MLP(nn.Module):
  """The classifier; ``variant`` picks how the hidden part is built (module docstring)."""
  variant: str = "plain"
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    dense = lambda n, name: nn.Dense(n, dtype=self.dtype, param_dtype=self.dtype, name=name)  # noqa: E731
    x = x.astype(self.dtype)
    if self.variant == "remat":
      h, _ = nn.remat(Block)(HIDDEN, self.dtype, name="hidden")(x)
    elif self.variant == "scan":
      h = dense(HIDDEN, "embed")(x)
      h, _ = nn.scan(Block, variable_axes={"params": 0}, split_rngs={"params": True}, length=2)(
          HIDDEN, self.dtype, name="hidden")(h, None)
    else:
      hidden = dense(HIDDEN, "hidden")
      h = jnp.tanh(hidden(x))
      if self.variant == "tied":   # decoder shares the encoder's kernel: x_hat = h W^T
        self.sow("intermediates", "recon", h @ hidden.variables["params"]["kernel"].T)
    return dense(CLASSES, "out")(h)


def make_problem(variant: str = "plain", dtype=jnp.float32, seed: int = 0):
  """``(params, loss_fn)`` of one variant; ``loss_fn(params, x, y, weights=None) -> f32 scalar``."""
  if variant not in VARIANTS:
    raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
  model = MLP(variant, dtype)
  params = model.init(jax.random.key(seed), jnp.zeros((1, FEATURES), dtype))

  def loss_fn(params, x, y, weights=None):
    """Mean over rows of ``weights * cross-entropy`` (weights default 1; padding rows get 0)."""
    logits, inter = model.apply(params, x, mutable=["intermediates"])
    ce = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), y)
    loss = jnp.mean(ce if weights is None else weights * ce)
    if variant == "l2":
      loss = loss + L2 * jnp.sum(params["params"]["hidden"]["kernel"].astype(jnp.float32) ** 2)
    if variant == "tied":
      recon = inter["intermediates"]["recon"][0].astype(jnp.float32)
      loss = loss + TIE * jnp.mean((recon - x.astype(jnp.float32)) ** 2)
    return loss

  return params, loss_fn


def batches(steps: int, rows: int = 64, seed: int = 1):
  """``steps`` global batches ``(x f32[rows, 6], y i32[rows])``, a different batch each step."""
  rng = np.random.default_rng(seed)
  return [(rng.normal(size=(rows, FEATURES)).astype(np.float32),
           rng.integers(0, CLASSES, rows).astype(np.int32)) for _ in range(steps)]


def make_linear(l2: bool = False, dtype=jnp.float32, seed: int = 0):
  """Softmax regression for the convex methods (vr_prox): ``(params, example_loss_fn)`` with
  ``example_loss_fn(params, (x, y)) -> [rows]`` per-row losses (``l2``: + L2·||kernel||² per row)."""
  model = nn.Dense(CLASSES, dtype=dtype, param_dtype=dtype, name="out")
  params = model.init(jax.random.key(seed), jnp.zeros((1, FEATURES), dtype))

  def example_loss_fn(params, data):
    x, y = data
    logits = model.apply(params, x.astype(dtype)).astype(jnp.float32)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, y)
    if l2:
      loss = loss + L2 * jnp.sum(params["params"]["kernel"].astype(jnp.float32) ** 2)
    return loss

  return params, example_loss_fn
