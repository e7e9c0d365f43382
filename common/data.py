"""Named datasets, deterministic splits, and row sharding over the device mesh.

Datasets (``config.dataset``):
  * ``digits``          sklearn 8x8 digits, 1797 rows, 64 features in [0, 1], 10 classes;
  * ``breast_cancer``   sklearn Wisconsin breast cancer, 569 rows, 30 standardised features, 2 classes;
  * ``synthetic``       Gaussian multiclass with J = ``num_classes`` classes, D = ``num_features``
                        features and N = ``num_rows`` rows (the large-J, large-D regime of SFB);
  * ``sparse_logistic`` a seeded text-like sparse binary problem (``sparse_logistic_csr``: N = ``num_rows``
                        rows, D = ``num_features`` columns, 20-60 nonzeros per row, unit-l2 rows, labels from
                        a sparse true weight vector), generated in memory as scipy CSR (nothing is written,
                        cached or downloaded);
  * ``svmlight:<path>`` any LIBSVM/svmlight file, read with sklearn's reader (labels remapped to 0..C-1)
                        and kept sparse (``scipy.sparse.csr_matrix`` float32 rows) through loading and
                        splitting: a news20-sized file (1.35M features) loads in its nonzeros' memory;
  * ``text``            byte-level English text (``common.text``): rows are windows of ``seq_len + 1``
                        byte tokens (as floats), split by position (last ``test_fraction`` validates),
                        256 classes (the vocabulary); ``y`` is unused (zeros).

``max_train_rows`` > 0 keeps only the first that many training rows (text: the first windows).

Sharding never drops rows: a split with n rows over P devices becomes P shards of
``ceil(n / P)`` rows, padded with zero rows whose ``mask`` is 0. ``shard_rows`` lays rows out dense,
or, with ``ell=True``, keeps sparse rows sparse as ``EllRows`` (``vr_prox.ell_from_csr``: padded
per-row column indices and values, memory ~ nonzeros, never rows x features); the harness takes
that path for models and algorithms that accept ELL rows (``common.train.sparse_rows``). Other
sparse rows are densified only up to ``MAX_DENSE_FLOATS`` (2^28 floats, 1 GiB in float32), else it
refuses with a ConfigError naming ``dataset``.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

import vr_prox
from common.errors import ConfigError
from common.fields import DATASETS  # noqa: F401 (re-exported)

MAX_DENSE_FLOATS = 2 ** 28


@dataclasses.dataclass(frozen=True)
class Dataset:
  """A train/test split held on the host as numpy arrays (``x`` a scipy CSR matrix for svmlight files)."""
  name: str
  x_train: np.ndarray   # float32 [n_train, D] (svmlight: scipy.sparse.csr_matrix)
  y_train: np.ndarray   # int32 [n_train], labels in 0..num_classes-1
  x_test: np.ndarray
  y_test: np.ndarray
  num_classes: int

  @property
  def num_features(self) -> int:
    return int(self.x_train.shape[1])

  @property
  def num_train(self) -> int:
    return int(self.x_train.shape[0])


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class EllRows:
  """Sparse rows in ELL form (``vr_prox/_sparse.py``): row i is ``sum_j values[i, j] e_{indices[i, j]}``.

  Both arrays are ``[rows, k]`` (k = the longest row; padding slots hold index 0, value 0), so they
  index, shard and gather by row exactly as a dense ``[rows, D]`` array does (``jax.tree.map``).
  """
  indices: jax.Array   # int32 [rows, k]
  values: jax.Array    # float [rows, k]


def ell_rows(x, dtype=None) -> EllRows:
  """Host ``EllRows`` of a scipy CSR matrix (width = its longest row), values in ``dtype`` (default x's)."""
  x = x.tocsr()
  return EllRows(*vr_prox.ell_from_csr(x.indptr, x.indices, x.data, dtype=dtype or x.dtype))


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class Shard:
  """One device's rows inside ``shard_map`` (or the global rows outside it)."""
  x: jax.Array      # [rows, D] (or EllRows: sparse rows, ``shard_rows(ell=True)``)
  y: jax.Array      # [rows]
  mask: jax.Array   # [rows] float32: 1 for a real row, 0 for padding


def is_sparse(x) -> bool:
  """True for a scipy sparse matrix (checked without importing scipy)."""
  return hasattr(x, "tocsr") and hasattr(x, "nnz")


def dense(x, rows: int | None = None) -> np.ndarray:
  """``x`` as a dense numpy array; a sparse ``x`` is densified only if ``rows`` (default its own;
  more with padding) x its columns is at most ``MAX_DENSE_FLOATS`` floats, else a ConfigError naming
  ``dataset``, the size and the sparse path."""
  if not is_sparse(x):
    return x
  rows = x.shape[0] if rows is None else rows
  size = rows * int(np.prod(x.shape[1:], dtype=np.int64))
  if size > MAX_DENSE_FLOATS:
    raise ConfigError("dataset", f"densifying the sparse rows ({rows:,} x {x.shape[1]:,} = {size:,} floats, "
                      f"{x.nnz:,} nonzeros) exceeds {MAX_DENSE_FLOATS:,} floats (2^28); rows stay sparse only "
                      f"with a linear model (logistic, softmax) under algorithm vr_prox or dense "
                      f"(configs/vr_prox_sparse.py); otherwise use fewer rows (max_train_rows)")
  return x.toarray()


def _split(name, x, y, num_classes, test_fraction, seed) -> Dataset:
  x = x.astype(np.float32).tocsr() if is_sparse(x) else np.asarray(x, np.float32)
  y = np.asarray(y, np.int32)
  order = np.random.default_rng(seed).permutation(len(y))
  n_test = int(round(test_fraction * len(y)))
  test, train = order[:n_test], order[n_test:]
  return Dataset(name, x[train], y[train], x[test], y[test], int(num_classes))


def _standardise(x: np.ndarray) -> np.ndarray:
  return (x - x.mean(0)) / np.maximum(x.std(0), 1e-12)


def load(name: str, *, seed: int = 0, test_fraction: float = 0.2, num_classes: int = 10,
         num_features: int = 64, num_rows: int = 4096, sparsity: float = 0.005,
         noise: float = 1.0, seq_len: int = 64, max_train_rows: int = 0) -> Dataset:
  """Loads dataset ``name`` with a deterministic train/test split (see module docstring)."""
  dataset = _load(name, seed=seed, test_fraction=test_fraction, num_classes=num_classes,
                  num_features=num_features, num_rows=num_rows, sparsity=sparsity, noise=noise, seq_len=seq_len)
  if max_train_rows:
    dataset = dataclasses.replace(dataset, x_train=dataset.x_train[:max_train_rows],
                                  y_train=dataset.y_train[:max_train_rows])
  return dataset


def _text(test_fraction: float, seq_len: int) -> Dataset:
  from common import text
  train, valid = text.load(seq_len, test_fraction)
  return Dataset("text", train.astype(np.float32), np.zeros(len(train), np.int32),
                 valid.astype(np.float32), np.zeros(len(valid), np.int32), text.VOCAB)


def _load(name, *, seed, test_fraction, num_classes, num_features, num_rows, sparsity, noise, seq_len) -> Dataset:
  if name == "text":
    return _text(test_fraction, seq_len)
  if name == "digits":
    from sklearn.datasets import load_digits
    d = load_digits()
    return _split(name, d.data / 16.0, d.target, 10, test_fraction, seed)
  if name == "breast_cancer":
    from sklearn.datasets import load_breast_cancer
    d = load_breast_cancer()
    return _split(name, _standardise(d.data), d.target, 2, test_fraction, seed)
  if name == "synthetic":
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(num_classes, num_features)) / np.sqrt(num_features) * 3.0
    y = rng.integers(0, num_classes, size=num_rows)
    x = centers[y] + noise * rng.normal(size=(num_rows, num_features)) / np.sqrt(num_features)
    return _split(name, x, y, num_classes, test_fraction, seed)
  if name == "sparse_logistic":
    x, y, _ = sparse_logistic_csr(num_rows, num_features, support=sparsity, seed=seed)
    return _split(name, x, (y > 0).astype(np.int32), 2, test_fraction, seed)
  if name.startswith("svmlight:"):
    path = name.split(":", 1)[1]
    if not os.path.isfile(path):
      raise ConfigError("dataset", f"svmlight file {path!r} does not exist or is not a file")
    from sklearn.datasets import load_svmlight_file
    try:
      x, y = load_svmlight_file(path, dtype=np.float32)
    except Exception as e:  # sklearn raises ValueError/OSError with parser details
      raise ConfigError("dataset", f"cannot read svmlight file {path!r}: {e}") from None
    classes, y = np.unique(y, return_inverse=True)
    return _split(name, x, y, len(classes), test_fraction, seed)
  raise ConfigError("dataset", f"unknown dataset {name!r}; allowed: {', '.join(DATASETS)}")


def shard_rows(x: np.ndarray, y: np.ndarray, num_devices: int,
               partition: Sequence[np.ndarray] | None = None, *, ell: bool = False) -> Shard:
  """Lays rows out as ``num_devices`` equal blocks (host numpy), padding with masked rows.

  Args:
    x, y: all rows. A sparse ``x`` becomes ``EllRows`` with ``ell=True`` (never densified);
      otherwise it is densified, refused above ``MAX_DENSE_FLOATS`` padded floats.
    num_devices: P.
    partition: optional list of P index arrays, the rows device p holds (a row may appear on
      several devices: redundant allocations such as gradient coding). Default: contiguous
      near-equal blocks of ``np.array_split``.
    ell: keep sparse rows sparse (ignored for dense ``x``).
  Returns:
    Shard of numpy arrays (``x`` possibly ``EllRows``) with leading dimension ``P * rows_per_device``.
  """
  if partition is None:
    partition = np.array_split(np.arange(len(y)), num_devices)
  if len(partition) != num_devices:
    raise ValueError(f"partition has {len(partition)} blocks for {num_devices} devices")
  rows = max(len(p) for p in partition)
  if is_sparse(x):
    x = ell_rows(x) if ell else dense(x, num_devices * rows)
  blocks = [np.asarray(idx, np.int64) for idx in partition]
  return Shard(jax.tree.map(lambda a: _blocks(a, blocks, rows), x), _blocks(y, blocks, rows),
               _blocks(np.ones(len(y), np.float32), blocks, rows))


def _blocks(a: np.ndarray, blocks: Sequence[np.ndarray], rows: int) -> np.ndarray:
  """``a[blocks[d]]`` for each device d, each zero-padded to ``rows`` rows, concatenated."""
  out = np.zeros((len(blocks), rows) + a.shape[1:], a.dtype)
  for d, idx in enumerate(blocks):
    out[d, :len(idx)] = a[idx]
  return out.reshape((-1,) + a.shape[1:])


def sample_batch(shard: Shard, key: jax.Array, batch_size: int) -> Shard:
  """Draws ``batch_size`` real rows (with replacement) from a device's shard, inside jit.

  Padding rows have zero probability; the returned mask is all ones.
  """
  p = shard.mask / jnp.sum(shard.mask)
  idx = jax.random.choice(key, shard.mask.shape[0], (batch_size,), replace=True, p=p)
  return Shard(jax.tree.map(lambda a: a[idx], shard.x), shard.y[idx], jnp.ones((batch_size,), jnp.float32))


def sparse_logistic_csr(num_rows: int, num_features: int, *, nnz: tuple[int, int] = (20, 60),
                        support: float = 0.005, seed: int = 0):
  """A seeded sparse binary problem in the shape of a text data set (news20, rcv1): ``(x, y, w_true)``.

  Row i has ``nnz[0]..nnz[1]`` nonzeros (uniform) at columns drawn from a Zipf-like frequency
  ``p_j ~ 1 / (rank_j + 10)`` (duplicates summed), positive log-normal values, rows scaled to unit
  l2 norm (so each logistic ``f_i`` is 1/4-smooth). ``w_true`` is nonzero on ``support *
  num_features`` columns drawn by frequency; ``y = +-1`` with ``P(y = 1) = sigmoid(4 a_i . w_true /
  std)``. Returns a float32 ``scipy.sparse.csr_matrix``, float64 labels in {-1, +1} and ``w_true``.
  """
  import scipy.sparse as sp
  rng = np.random.default_rng(seed)
  freq = 1.0 / (np.arange(num_features) + 10.0)
  freq = freq[rng.permutation(num_features)]
  freq /= freq.sum()
  counts = rng.integers(nnz[0], nnz[1] + 1, size=num_rows)
  cols = rng.choice(num_features, size=int(counts.sum()), p=freq)
  rows = np.repeat(np.arange(num_rows), counts)
  vals = rng.lognormal(0.0, 0.5, size=len(cols))
  x = sp.csr_matrix((vals, (rows, cols)), shape=(num_rows, num_features))
  x.sum_duplicates()
  norms = np.sqrt(np.asarray(x.multiply(x).sum(1)).ravel())
  x = sp.diags(1.0 / np.maximum(norms, 1e-12)) @ x
  w = np.zeros(num_features)
  chosen = rng.choice(num_features, max(1, int(support * num_features)), replace=False, p=freq)
  w[chosen] = rng.normal(size=len(chosen))
  margin = x @ w
  margin = 4.0 * margin / max(margin.std(), 1e-12)
  y = np.where(rng.uniform(size=num_rows) < 1.0 / (1.0 + np.exp(-margin)), 1.0, -1.0)
  return x.astype(np.float32).tocsr(), y, w
