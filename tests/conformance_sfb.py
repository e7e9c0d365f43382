"""Conformance entries of SFB: paper-layout softmax factors with SGD, and an unmodified
flax Dense (kernel factors + bias from the gathered U) followed by Adam."""
import flax.linen as nn
import jax
import numpy as np
import optax

import sfb
from tests.conformance import Entry

_DENSE = nn.Dense(5)


def _data():
  rng = np.random.default_rng(1)
  return rng.normal(size=(32, 12)).astype(np.float32), rng.integers(0, 5, 32).astype(np.int32)


def _paper_params():
  return {"w": jax.random.normal(jax.random.key(0), (5, 12)) * 0.1}


def _paper_loss(params, x, y):
  return optax.softmax_cross_entropy_with_integer_labels(x @ params["w"].T, y).mean()


def _flax_params():
  return _DENSE.init(jax.random.key(0), np.zeros((1, 12), np.float32))


def _flax_loss(params, x, y):
  return optax.softmax_cross_entropy_with_integer_labels(_DENSE.apply(params, x), y).mean()


_flax_grad = sfb.factored_grad(_flax_loss, [()])

ENTRIES = [
    Entry("sfb_paper_softmax_sgd", lambda axis_name, learning_rate: sfb.sfb(learning_rate, axis_name=axis_name),
          _paper_params, _paper_loss, _data, hparams={"learning_rate": 0.5},
          grad_fn=lambda p, x, y: {"w": sfb.softmax_factors(p["w"], x, y)[1]},
          payload_bytes=lambda P: 4 * (32 // P) * (5 + 12)),
    Entry("sfb_flax_dense_adam", lambda axis_name, learning_rate: optax.chain(
        sfb.scale_by_sfb(axis_name), optax.adam(learning_rate)),
          _flax_params, _flax_loss, _data, hparams={"learning_rate": 0.01},
          grad_fn=_flax_grad,
          payload_bytes=lambda P: 4 * (32 // P) * (5 + 12)),
]
