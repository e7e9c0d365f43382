"""Redundant data allocations for gradient coding.

C. Li, M. Skoglund, *Distributed Learning based on 1-Bit Gradient Coding in the Presence of
Stragglers*, arXiv:2403.14716, builds on stochastic gradient coding (Bitar, Wootters,
El Rouayheb, JSAIT 2020): the data are cut into N partitions and partition k is stored on d
workers. The allocation matrix A ∈ {0,1}^{W×N} has A[i, k] = 1 iff worker i stores partition k;
every column sums to d and every row to ℓ = N d / W. It is *pair-wise balanced* when every pair
of distinct partitions is co-stored on the same number λ of workers,

    Aᵀ A = (d − λ) I_N + λ 1 1ᵀ,   λ = d (ℓ − 1) / (N − 1),

which only enters the estimator's variance (``sign1bit.estimator_mse``); unbiasedness needs
only the equal column sums.

References:
  Li, Skoglund, `Distributed Learning based on 1-Bit Gradient Coding in the Presence of
  Stragglers <https://arxiv.org/abs/2403.14716>`_, 2024

  Bitar, Wootters, El Rouayheb, Stochastic Gradient Coding for Straggler Mitigation in
  Distributed Learning, IEEE JSAIT 2020
"""
from __future__ import annotations

import dataclasses

import jax
import numpy as np

KINDS = ("frc", "cyclic", "bibd", "custom")

# Fano plane: the difference set {0, 1, 3} mod 7; line i = {i, i+1, i+3} (d = ℓ = 3, λ = 1).
_FANO_OFFSETS = (0, 1, 3)


@dataclasses.dataclass(frozen=True, eq=False)
class Allocation:
  """A validated allocation.

  Attributes:
    matrix: int8 [W, N], ``matrix[i, k] = 1`` iff worker i stores partition k.
    index: int32 [W, ℓ], the partitions of worker i in increasing order (``data[index]``
      lays a [N, ...] partition array out per worker).
    kind: how it was built (``frc``, ``cyclic``, ``bibd``, ``custom``).
    lam: λ if pair-wise balanced, else None.
  """
  matrix: np.ndarray
  index: np.ndarray
  kind: str
  lam: int | None

  @property
  def num_workers(self) -> int:
    return self.matrix.shape[0]

  @property
  def num_partitions(self) -> int:
    return self.matrix.shape[1]

  @property
  def redundancy(self) -> int:
    """d: workers that store each partition."""
    return int(self.matrix[:, 0].sum())

  @property
  def load(self) -> int:
    """ℓ: partitions per worker."""
    return int(self.matrix[0].sum())

  def __repr__(self) -> str:
    return (f"Allocation(kind={self.kind!r}, W={self.num_workers}, N={self.num_partitions}, "
            f"d={self.redundancy}, ell={self.load}, lam={self.lam})")


def _pairwise_lambda(a: np.ndarray) -> int | None:
  n = a.shape[1]
  if n == 1:
    return 0
  gram = a.T.astype(np.int64) @ a.astype(np.int64)
  off = gram[~np.eye(n, dtype=bool)]
  return int(off[0]) if np.all(off == off[0]) else None


def _validated(matrix, kind: str) -> Allocation:
  a = np.asarray(matrix)
  if a.ndim != 2 or a.shape[0] < 1 or a.shape[1] < 1:
    raise ValueError(f"allocation matrix must be 2-D [workers, partitions], got shape {a.shape}")
  if not np.all((a == 0) | (a == 1)):
    raise ValueError("allocation matrix entries must be 0 or 1 (A[i, k] = 1 iff worker i stores partition k)")
  cols, rows = a.sum(0), a.sum(1)
  if np.any(cols == 0):
    raise ValueError(f"allocation matrix: partitions {np.flatnonzero(cols == 0).tolist()} are stored on no "
                     "worker; every column must sum to the redundancy d >= 1")
  if not np.all(cols == cols[0]):
    raise ValueError(f"allocation matrix: column sums (workers per partition) must all equal d, got "
                     f"{cols.tolist()}")
  if not np.all(rows == rows[0]) or rows[0] == 0:
    raise ValueError(f"allocation matrix: row sums (partitions per worker) must all equal l >= 1, got "
                     f"{rows.tolist()}")
  a = a.astype(np.int8)
  index = np.stack([np.flatnonzero(r) for r in a]).astype(np.int32)
  return Allocation(matrix=a, index=index, kind=kind, lam=_pairwise_lambda(a))


def allocation(kind: str, num_workers: int, redundancy: int | None = None, *,
               partitions_per_group: int = 1, matrix=None) -> Allocation:
  """Builds a gradient-coding allocation.

  Args:
    kind: ``"frc"`` fractional repetition: W/d groups of d workers, group g stores partitions
      g·m … g·m+m−1 (m = ``partitions_per_group``), N = (W/d)·m; pair-wise balanced (λ = 0)
      for m = 1. ``"cyclic"``: N = W, worker i stores i, i+1, …, i+d−1 (mod W); not pair-wise
      balanced for 1 < d < W. ``"bibd"``: a balanced design, the Fano plane for W = 7
      (d = ℓ = 3, λ = 1, the default there) or the complement design for any W with
      ``redundancy=W-1`` (worker i stores every partition but i). ``"custom"``: ``matrix``.
    num_workers: W.
    redundancy: d (``frc``, ``cyclic``; ``bibd`` picks the design; ignored for ``custom``).
    partitions_per_group: m for ``frc`` (any other kind refuses m != 1).
    matrix: the [W, N] 0/1 matrix for ``custom``.
  Raises:
    ValueError naming the argument when the allocation is impossible or invalid.
  """
  if kind not in KINDS:
    raise ValueError(f"allocation kind {kind!r} unknown; allowed: {', '.join(KINDS)}")
  w = num_workers
  if not isinstance(w, (int, np.integer)) or w < 1:
    raise ValueError(f"num_workers must be a positive integer, got {w!r}")
  if kind != "frc" and partitions_per_group != 1:
    raise ValueError(f"partitions_per_group={partitions_per_group!r} is for kind='frc' only, got kind={kind!r}")
  if kind == "custom":
    if matrix is None:
      raise ValueError("allocation('custom', ...) needs matrix=<[W, N] 0/1 array>")
    out = _validated(matrix, "custom")
    if out.num_workers != w:
      raise ValueError(f"custom matrix has {out.num_workers} rows but num_workers={w}")
    return out
  if kind == "bibd":
    if redundancy == w - 1 and w > 1:
      return _validated(1 - np.eye(w, dtype=np.int8), "bibd")
    if w == 7 and redundancy in (None, 3):
      a = np.zeros((7, 7), np.int8)
      for i in range(7):
        a[i, [(i + o) % 7 for o in _FANO_OFFSETS]] = 1
      return _validated(a, "bibd")
    at_fault, other = ((f"num_workers={w}", f"redundancy={redundancy}") if redundancy in (None, 3)   # Fano: W = 7
                       else (f"redundancy={redundancy}", f"num_workers={w}"))
    raise ValueError(f"{at_fault} has no bibd design with {other}; available: the Fano plane (num_workers=7, "
                     f"redundancy=3) and the complement design (redundancy=num_workers-1={w - 1})")
  d = 1 if redundancy is None else redundancy
  if not isinstance(d, (int, np.integer)) or not 1 <= d <= w:
    raise ValueError(f"redundancy d must be an integer in [1, num_workers={w}], got {redundancy!r}")
  if kind == "frc":
    m = partitions_per_group
    if w % d:
      raise ValueError(f"frc needs redundancy d to divide num_workers: {w} % {d} != 0 "
                       f"(for W={w} use d in {[k for k in range(1, w + 1) if w % k == 0]})")
    if not isinstance(m, (int, np.integer)) or m < 1:
      raise ValueError(f"partitions_per_group must be a positive integer, got {m!r}")
    a = np.zeros((w, (w // d) * m), np.int8)
    for i in range(w):
      g = i // d
      a[i, g * m:(g + 1) * m] = 1
    return _validated(a, "frc")
  a = np.zeros((w, w), np.int8)  # cyclic
  for i in range(w):
    a[i, [(i + j) % w for j in range(d)]] = 1
  return _validated(a, "cyclic")


def shard_partitions(data, alloc: Allocation, mesh: jax.sharding.Mesh, axis_name: str = "data"):
  """Lays a pytree of [N, n_k, ...] partition arrays out as [W, ℓ, n_k, ...] over ``axis_name``.

  Worker i receives ``data[alloc.index[i]]`` (its ℓ partitions; memory grows by d). The result
  carries ``NamedSharding(mesh, P(axis_name))``, as ``shard_map`` inputs must.
  """
  sharding = jax.sharding.NamedSharding(mesh, jax.P(axis_name))
  if mesh.shape[axis_name] != alloc.num_workers:
    raise ValueError(f"mesh axis {axis_name!r} has {mesh.shape[axis_name]} devices but the allocation has "
                     f"{alloc.num_workers} workers")

  def place(x):
    x = np.asarray(x)
    if x.shape[0] != alloc.num_partitions:
      raise ValueError(f"partition data has leading dimension {x.shape[0]}, allocation has "
                       f"N={alloc.num_partitions} partitions")
    return jax.device_put(x[alloc.index], sharding)

  return jax.tree.map(place, data)


def worker_rows(alloc: Allocation, partitions) -> list[np.ndarray]:
  """Row indices each worker stores, given the rows of each partition (a list of N index arrays)."""
  if len(partitions) != alloc.num_partitions:
    raise ValueError(f"got {len(partitions)} partitions for an allocation with N={alloc.num_partitions}")
  return [np.concatenate([np.asarray(partitions[k]) for k in idx]) for idx in alloc.index]
