"""Dense data-parallel baseline: local gradients, one f32 ``pmean``, then any optax optimizer.

This is the reference every algorithm is compared with, and the first entry of the
conformance suite. Its analytic payload is one all-reduce of the gradient: 4 bytes per
float32 parameter per device and step.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax import lax

from common.errors import ConfigError
from common.fields import OPTIMIZERS  # noqa: F401 (re-exported)



class AllReduceMeanState(NamedTuple):
  count: jax.Array


def all_reduce_mean(axis_name: str | None = "data") -> optax.GradientTransformation:
  """Averages per-device gradients over ``axis_name`` with ``lax.pmean``.

  With ``axis_name=None`` it is the identity (single device, no collectives).
  """

  def init_fn(params):
    del params
    return AllReduceMeanState(count=jnp.zeros([], jnp.int32))

  def update_fn(updates, state, params=None):
    del params
    if axis_name is not None:
      updates = lax.pmean(updates, axis_name)
    return updates, AllReduceMeanState(count=optax.safe_increment(state.count))

  return optax.GradientTransformation(init_fn, update_fn)


def optimizer(name: str, learning_rate, *, momentum: float = 0.9, b1: float = 0.9,
              b2: float = 0.999, weight_decay: float = 0.0) -> optax.GradientTransformation:
  """An optax optimizer by name (``config.optimizer``)."""
  if name == "sgd":
    return optax.sgd(learning_rate)
  if name == "momentum":
    return optax.sgd(learning_rate, momentum=momentum)
  if name == "nesterov":
    return optax.sgd(learning_rate, momentum=momentum, nesterov=True)
  if name == "adam":
    return optax.adam(learning_rate, b1=b1, b2=b2)
  if name == "adamw":
    return optax.adamw(learning_rate, b1=b1, b2=b2, weight_decay=weight_decay)
  raise ConfigError("optimizer", f"unknown optimizer {name!r}; allowed: {', '.join(OPTIMIZERS)}")


def dense_data_parallel(optim: optax.GradientTransformation,
                        axis_name: str | None = "data") -> optax.GradientTransformation:
  """``chain(all_reduce_mean(axis_name), optim)``: synchronous dense data parallelism."""
  return optax.chain(all_reduce_mean(axis_name), optim)


def payload_bytes(params) -> int:
  """Analytic bytes per device per step of the dense baseline: the gradient's size."""
  return int(sum(x.size * jnp.dtype(x.dtype).itemsize for x in jax.tree.leaves(params)))
