"""Problems for the Ray parameter server: per-row losses, prox and data, built without Ray.

``elastic_net``: vr_prox spec problem B (``common.references.breast_cancer_elastic_net``),
binary logistic loss on unit rows, h = l1 |w|_1 + (l2/2) |w|^2, reference optimum from sklearn.
``trace_norm``: multinomial logistic regression on digits (same preprocessing: standardized
columns, unit rows), W of shape (64, 10), h = lam ||W||_* (``vr_prox.prox_trace_norm``); no sklearn
reference (its optimum is not a sklearn model), so runs report the objective only.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

PROBLEMS = ("elastic_net", "trace_norm")


class Problem(NamedTuple):
  name: str
  x: np.ndarray          # [n, d] rows
  y: np.ndarray          # [n] labels (+-1 for elastic_net, class ids for trace_norm)
  shape: tuple           # parameter shape
  reg: dict              # prox arguments
  p_star: float | None   # reference optimum P* (sklearn), None when there is none


def load(name: str, *, l1: float = 3e-3, l2: float = 1e-2, lam: float = 1e-2) -> Problem:
  """The data and reference optimum of problem ``name`` (numpy only)."""
  if name == "elastic_net":
    from common.references import breast_cancer_elastic_net
    x, y, w_star = breast_cancer_elastic_net(l1, l2)
    problem = Problem(name, x, y, (x.shape[1],), {"l1": l1, "l2": l2}, None)
    return problem._replace(p_star=objective(problem, w_star))
  if name == "trace_norm":
    from sklearn.datasets import load_digits
    from sklearn.preprocessing import StandardScaler, normalize
    d = load_digits()
    x = normalize(StandardScaler().fit_transform(d.data))
    return Problem(name, x, d.target.astype(np.int32), (x.shape[1], 10), {"lam": lam}, None)
  raise ValueError(f"unknown problem {name!r}; allowed: {', '.join(PROBLEMS)}")


def shard_rows(n: int, num_workers: int) -> list[np.ndarray]:
  """Contiguous, as-even-as-possible row blocks, one per worker (uneven when K does not divide n)."""
  return np.array_split(np.arange(n), num_workers)


# ----------------------------------------------------------------------------- JAX side (imported lazily)
def example_loss_fn(name: str):
  """``(params, (x, y)) -> [rows]`` per-row losses f_i of problem ``name``."""
  import jax
  import jax.numpy as jnp

  if name == "elastic_net":
    def logistic(w, data):
      x, y = data
      return jnp.logaddexp(0.0, -y * (x @ w))
    return logistic

  def softmax(w, data):
    x, y = data
    logits = x @ w
    return jax.nn.logsumexp(logits, axis=-1) - jnp.take_along_axis(logits, y[:, None], axis=-1)[:, 0]
  return softmax


def make_prox(problem: Problem):
  """The problem's vr_prox operator."""
  import vr_prox
  if problem.name == "elastic_net":
    return vr_prox.prox_elastic_net(problem.reg["l1"], problem.reg["l2"])
  return vr_prox.prox_trace_norm(problem.reg["lam"])


def objective(problem: Problem, w) -> float:
  """``P(w) = (1/n) sum_i f_i(w) + h(w)`` in float64 NumPy, independent of the JAX workers."""
  w = np.asarray(w, np.float64).reshape(problem.shape)
  if problem.name == "elastic_net":
    l1, l2 = problem.reg["l1"], problem.reg["l2"]
    return float(np.mean(np.logaddexp(0.0, -problem.y * (problem.x @ w))) + l1 * np.abs(w).sum()
                 + 0.5 * l2 * np.sum(w * w))
  logits = problem.x @ w
  top = logits.max(axis=1, keepdims=True)
  lse = (top + np.log(np.exp(logits - top).sum(axis=1, keepdims=True)))[:, 0]
  loss = np.mean(lse - logits[np.arange(len(problem.y)), problem.y])
  return float(loss + problem.reg["lam"] * np.linalg.svd(w, compute_uv=False).sum())
