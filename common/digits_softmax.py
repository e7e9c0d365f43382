"""The sign1bit paper's digits problem, shared by ``benchmarks/sign1bit.py`` and the Ray runtime
(``common/async_ray/gc.py``): L2-regularised softmax regression on sklearn's digits (/16, a bias
column appended), one fixed split, data partitioned label-sorted or i.i.d. across workers.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

LAM = 1e-3
NF, NC = 65, 10
D = NF * NC
N_TEST = 360
N_TRAIN = 1432          # 1437 rows after the 360-row test split, less 5: divisible by 8


def load_data():
  """(x_train [1432, 65], y_train, x_test [360, 65], y_test) from one fixed permutation."""
  from sklearn.datasets import load_digits
  d = load_digits()
  x = np.concatenate([d.data / 16.0, np.ones((len(d.target), 1))], axis=1).astype(np.float32)
  y = d.target.astype(np.int32)
  order = np.random.default_rng(0).permutation(len(y))
  test, train = order[:N_TEST], order[N_TEST:N_TEST + N_TRAIN]
  return x[train], y[train], x[test], y[test]


def partitions(x, y, regime, n):
  """[n, rows, 65], [n, rows]: label-sorted (stable sort by label) or in the shuffled order."""
  idx = np.argsort(y, kind="stable") if regime == "label-sorted" else np.arange(len(y))
  return x[idx].reshape(n, -1, NF), y[idx].reshape(n, -1)


def mean_loss(w, x, y):
  logits = x @ w.reshape(NF, NC)
  return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def objective(w, x, y):
  return mean_loss(w, x, y) + 0.5 * LAM * jnp.sum(w * w)


def local_loss(w, xs, ys):
  """sum_{k in S_i} f_k(w) for this worker's [l, rows, 65] partitions."""
  return jnp.sum(jax.vmap(lambda a, b: objective(w, a, b))(xs, ys))
