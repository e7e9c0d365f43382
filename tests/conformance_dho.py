"""Conformance entries of the dho package: DHO2 (coordinate-sharded curvature) and FOSI
(replicated basis, the reference ``b_parallel`` mode). Lanczos runs in float32 here (x64 off)."""
import jax
import jax.numpy as jnp
import numpy as np
import optax

import dho
from tests.conformance import Entry

_D, _C = 12, 5
_N = _D * _C + _C          # 65 parameters: not divisible by 8
_HP = dict(k=2, l=0, m=8, refresh_every=2, warmup=1, alpha=0.1)


def _params():
  k1, _ = jax.random.split(jax.random.key(0))
  return {"w": jax.random.normal(k1, (_D, _C)) * 0.1, "b": jnp.zeros((_C,))}


def _loss(params, x, y):
  logits = x @ params["w"] + params["b"]
  return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def _batch_loss(params, batch):
  return _loss(params, *batch)


def _data():
  rng = np.random.default_rng(0)
  return rng.normal(size=(32, _D)).astype(np.float32), rng.integers(0, _C, 32).astype(np.int32)


def _extras(params, x, y):
  del params
  return {"batch": (x, y)}


def _dho2(axis_name, learning_rate):
  return dho.dho2(optax.adam(learning_rate), _batch_loss, axis_name=axis_name,
                  num_shards=8 if axis_name else 1, momentum="ema", **_HP)


def _fosi(axis_name, learning_rate):
  return dho.fosi_momentum(optax.sgd(learning_rate, momentum=0.9), _batch_loss, axis_name=axis_name, **_HP)


ENTRIES = [
    Entry("dho2_adam", _dho2, _params, _loss, _data, hparams={"learning_rate": 0.01},
          extra_args=_extras, state_specs=dho.state_specs, rtol=1e-4, atol=1e-5,
          payload_bytes=lambda P: dho.payload_bytes(_N, k=2, m=8, num_shards=P)),
    Entry("fosi_hb_replicated", _fosi, _params, _loss, _data, hparams={"learning_rate": 0.1},
          extra_args=_extras, rtol=1e-4, atol=1e-5,
          payload_bytes=lambda P: dho.payload_bytes(_N, k=2, m=8, num_shards=P, sharded=False)),
]
