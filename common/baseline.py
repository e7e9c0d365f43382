"""Dense data-parallel baseline: local gradients, one bucketed f32 ``pmean``, then any optax optimizer.

This is the reference every algorithm is compared with, and the first entry of the
conformance suite. Its analytic payload is one all-reduce of the gradient: 4 bytes per
float32 parameter per device and step.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from common.errors import ConfigError
from common.fields import OPTIMIZERS  # noqa: F401 (re-exported)



class AllReduceMeanState(NamedTuple):
  count: jax.Array


def bucketed_pmean(tree, axis_name: str):
  """``lax.pmean(tree, axis_name)`` as ONE all-reduce per dtype of the flattened leaves.

  The gradient bucket of PyTorch DDP (Li et al., *PyTorch Distributed*, VLDB 2020, §3.2.3):
  the leaves of each dtype are raveled and concatenated into one vector, averaged in a single
  collective, and split back. The sums are the same elementwise sums as a leaf-by-leaf pmean,
  so the result is identical; XLA:CPU runs a tuple all-reduce operand by operand, so on CPU
  one bucket is also faster than a tuple of leaves.
  """
  leaves, treedef = jax.tree.flatten(tree)
  out = list(leaves)
  for dtype in dict.fromkeys(jnp.result_type(x) for x in leaves):
    index = [i for i, x in enumerate(leaves) if jnp.result_type(x) == dtype]
    flat = lax.pmean(jnp.concatenate([jnp.ravel(leaves[i]) for i in index]), axis_name)
    offsets = np.cumsum([0] + [leaves[i].size for i in index])
    for i, start, stop in zip(index, offsets[:-1], offsets[1:]):
      out[i] = flat[start:stop].reshape(jnp.shape(leaves[i]))
  return jax.tree.unflatten(treedef, out)


def all_reduce_mean(axis_name: str | None = "data", *, bucketed: bool = True) -> optax.GradientTransformation:
  """Averages per-device gradients over ``axis_name``: one all-reduce of the flattened gradient
  per dtype (``bucketed_pmean``), or leaf by leaf with ``bucketed=False`` (the former baseline,
  kept for the comparison in ``benchmarks.baseline_scaling``).

  With ``axis_name=None`` it is the identity (single device, no collectives).
  """

  def init_fn(params):
    del params
    return AllReduceMeanState(count=jnp.zeros([], jnp.int32))

  def update_fn(updates, state, params=None):
    del params
    if axis_name is not None and jax.tree.leaves(updates):
      updates = bucketed_pmean(updates, axis_name) if bucketed else lax.pmean(updates, axis_name)
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


def dense_data_parallel(optim: optax.GradientTransformation, axis_name: str | None = "data", *,
                        bucketed: bool = True) -> optax.GradientTransformation:
  """``chain(all_reduce_mean(axis_name), optim)``: synchronous dense data parallelism."""
  return optax.chain(all_reduce_mean(axis_name, bucketed=bucketed), optim)


def payload_bytes(params) -> int:
  """Analytic bytes per device per step of the dense baseline: the gradient's size."""
  return int(sum(x.size * jnp.dtype(x.dtype).itemsize for x in jax.tree.leaves(params)))
