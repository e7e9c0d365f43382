"""Event model: a seeded host-side discrete-event simulation of a parameter server.

K workers repeatedly read the current server version, compute for a random time, and send a
message; the server serves messages one at a time in arrival order (service time
``server_time`` per update: an add for DAP, an add plus a prox for TAP) and replies with the new
version, which the worker reads at once. The output, per server update t, is the worker, the
delay ``t - version read`` and the simulated completion time; ``vr_prox.serial_epoch`` replays
it (``worker_trace=..., delay_schedule="trace", delay_trace=...``) so the arithmetic is
deterministic and the clock is simulated. Homogeneous deterministic workers give round-robin
arrivals with fixed delay K - 1 (the DAP stall: the dead-zone recursion ``x_{t+1} = x_t - x_{t-tau}``
of ``vr_prox/_dap.py``); heterogeneous or random compute times give varying delays.

References:
  Z. Huo, B. Gu, H. Huang, *Decoupled Asynchronous Proximal Stochastic Gradient Descent with
  Variance Reduction*, arXiv:1609.06804 (the parameter server of DAP-SVRG: one server, K workers,
  messages served one at a time).
"""
from __future__ import annotations

import heapq
from typing import NamedTuple

import numpy as np


class EventTrace(NamedTuple):
  worker: np.ndarray   # int32 [T]: who sent update t
  delay: np.ndarray    # int32 [T]: server updates between that worker's read and update t
  time: np.ndarray     # float64 [T]: simulated time at which update t is applied


def event_trace(num_workers: int, num_updates: int, *, worker_time: float = 1.0, speeds=None,
                sigma: float = 0.0, server_time: float = 0.0, seed: int = 0) -> EventTrace:
  """Simulates ``num_updates`` server updates (NumPy, seeded, no JAX).

  Args:
    num_workers: K.
    num_updates: T.
    worker_time: mean compute time of one message on a speed-1 worker.
    speeds: per-worker slowdown factors (default all 1); worker k takes ``worker_time *
      speeds[k] * LogNormal(0, sigma)`` per message.
    sigma: log-normal jitter of compute times (0 = deterministic).
    server_time: server service time per update (c_s).
    seed: numpy seed.
  """
  if not isinstance(num_workers, int) or num_workers < 1:
    raise ValueError(f"num_workers must be a positive integer, got {num_workers!r}")
  if not isinstance(num_updates, int) or num_updates < 1:
    raise ValueError(f"num_updates must be a positive integer, got {num_updates!r}")
  if not worker_time > 0 or server_time < 0 or sigma < 0:
    raise ValueError(f"need worker_time > 0, server_time >= 0, sigma >= 0; got {worker_time}, "
                     f"{server_time}, {sigma}")
  speeds = np.ones(num_workers) if speeds is None else np.asarray(speeds, np.float64)
  if speeds.shape != (num_workers,) or np.any(speeds <= 0):
    raise ValueError(f"speeds must be {num_workers} positive factors, got {speeds}")
  rng = np.random.default_rng(seed)

  def compute(k):
    jitter = rng.lognormal(0.0, sigma) if sigma > 0 else 1.0
    return worker_time * speeds[k] * jitter

  heap = [(compute(k), k, 0) for k in range(num_workers)]  # (arrival time, worker, version read)
  heapq.heapify(heap)
  worker = np.zeros(num_updates, np.int32)
  delay = np.zeros(num_updates, np.int32)
  time = np.zeros(num_updates, np.float64)
  free = 0.0
  for t in range(num_updates):
    arrival, k, read = heapq.heappop(heap)
    free = max(arrival, free) + server_time
    worker[t], delay[t], time[t] = k, t - read, free
    heapq.heappush(heap, (free + compute(k), k, t + 1))
  return EventTrace(worker, delay, time)
