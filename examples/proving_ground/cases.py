"""The columns of the table: what a user does around a transformation.

A ``Case`` says which model variant and dtype the loss uses, which optax wrappers surround the
transformation (``wrap``), how the data is split and whether the step donates its buffers.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import jax.numpy as jnp
import optax

LR = 0.1
CLIP = 0.01          # small enough to clip every gradient and every update of these problems
ACCUMULATE = 2       # MultiSteps(every_k_schedule=2)


@dataclasses.dataclass(frozen=True)
class Case:
  """One column. ``wrap`` turns ``make(learning_rate) -> tx`` into the user's full optimizer."""
  name: str
  what: str
  variant: str = "plain"
  dtype: jnp.dtype = jnp.float32
  clip: str | None = None            # "before" | "after": clip_by_global_norm(CLIP) in the chain
  inject: bool = False               # optax.inject_hyperparams(make)(learning_rate=LR)
  accumulate: int = 0                # MultiSteps(tx, accumulate) (Case.wrap)
  uneven: bool = False               # shards / partitions of different sizes
  donate: bool = False               # jax.jit(..., donate_argnums=(0, 1))
  base: str = "sgd"                  # FOSI/DHO2 base: "sgd" | "schedule_free" | "clipped_sgd"
  processes: int = 1

  @property
  def steps(self) -> int:
    return 4 if self.accumulate else 3

  def before(self) -> optax.GradientTransformation | None:
    """What the user's chain runs *before* the transformation, or None. The packages' contract
    (README): it runs on each worker's LOCAL gradient, so ``chain(clip_by_global_norm, tx)`` clips
    per worker, and the transformation then exchanges the clipped gradients."""
    return optax.clip_by_global_norm(CLIP) if self.clip == "before" else None

  def wrap(self, make: Callable, local_before: bool = True, multi_steps: Callable | None = None
           ) -> optax.GradientTransformation:
    """The user's optimizer around ``make``. ``local_before=False`` leaves out ``before()``: the
    single-device references apply it to each worker's gradient themselves (``references``).
    ``multi_steps(tx, k)``: the package's gradient accumulation over local gradients
    (``dho.multi_steps`` / ``sign1bit.multi_steps``); default ``optax.MultiSteps``."""
    def factory(learning_rate):   # inject_hyperparams schedules the factory's named arguments
      return make(learning_rate)
    tx = optax.inject_hyperparams(factory)(learning_rate=LR) if self.inject else make(LR)
    if self.before() is not None and local_before:
      tx = optax.chain(self.before(), tx)
    elif self.clip == "after":
      tx = optax.chain(tx, optax.clip_by_global_norm(CLIP))
    if self.accumulate and multi_steps is not None:
      tx = multi_steps(tx, self.accumulate)
    elif self.accumulate:
      tx = optax.MultiSteps(tx, every_k_schedule=self.accumulate).gradient_transformation()
    return tx

  def base_optimizer(self, learning_rate) -> optax.GradientTransformation:
    """FOSI/DHO2's base optimizer."""
    if self.base == "schedule_free":       # its state holds a copy of the parameters
      return optax.contrib.schedule_free_sgd(learning_rate)
    if self.base == "clipped_sgd":         # not coordinate-wise: a global norm
      return optax.chain(optax.clip_by_global_norm(CLIP), optax.sgd(learning_rate))
    return optax.sgd(learning_rate)


CASES = (
    Case("plain", "the MLP, f32, plain SGD-style chain"),
    Case("l2", "loss + 1e-2·||hidden kernel||² written in the loss", variant="l2"),
    Case("tied", "decoder reuses the hidden kernel transposed", variant="tied"),
    Case("remat", "hidden block under nn.remat", variant="remat"),
    Case("scan", "two hidden blocks under nn.scan", variant="scan"),
    Case("bf16", "bf16 parameters and activations", dtype=jnp.bfloat16),
    Case("clip_before", "chain(clip_by_global_norm, tx)", clip="before"),
    Case("clip_after", "chain(tx, clip_by_global_norm)", clip="after"),
    Case("inject", "optax.inject_hyperparams(learning_rate)", inject=True),
    Case("multisteps", "MultiSteps(every_k_schedule=2): dho/sign1bit.multi_steps, else optax's",
         accumulate=ACCUMULATE),
    Case("uneven", "shards / partitions of different sizes (padded, masked)", uneven=True),
    Case("donate", "jax.jit(step, donate_argnums=(0, 1))", donate=True),
    Case("base_params", "FOSI/DHO2 base whose state copies the params (schedule_free_sgd)",
         base="schedule_free"),
    Case("base_global", "FOSI/DHO2 base with a global norm (clip_by_global_norm + sgd)",
         base="clipped_sgd"),
)
BY_NAME = {c.name: c for c in CASES}
