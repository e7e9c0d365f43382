"""Conformance entries of the dense data-parallel baseline (the suite's first entry)."""
import jax
import jax.numpy as jnp
import numpy as np
import optax

from common import baseline
from tests.conformance import Entry


def _params():
  k1, k2 = jax.random.split(jax.random.key(0))
  return {"w": jax.random.normal(k1, (12, 5)) * 0.1, "b": jnp.zeros((5,))}


def _loss(params, x, y):
  logits = x @ params["w"] + params["b"]
  return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def _data():
  rng = np.random.default_rng(0)
  return rng.normal(size=(32, 12)).astype(np.float32), rng.integers(0, 5, 32).astype(np.int32)


ENTRIES = [
    Entry("dense_sgd", lambda axis_name, learning_rate: baseline.dense_data_parallel(
        optax.sgd(learning_rate), axis_name), _params, _loss, _data, hparams={"learning_rate": 0.1},
          payload_bytes=lambda P: 4 * (12 * 5 + 5)),
    Entry("dense_adam", lambda axis_name, learning_rate: baseline.dense_data_parallel(
        optax.adam(learning_rate), axis_name), _params, _loss, _data, hparams={"learning_rate": 0.01},
          payload_bytes=lambda P: 4 * (12 * 5 + 5)),
]
