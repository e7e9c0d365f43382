"""Time model of one synchronous gradient-coding step on Ray, from measured per-operation costs
(issue 16; the step of ``gc.py``: Li & Skoglund, arXiv:2403.14716, with real stragglers).

Step t: the coordinator dispatches w_t to the live workers (c_dispatch: ``ray.put`` and the
submissions); worker i's message is seen by the coordinator at

    a_i(t) = c_msg + c_comp + delay_i(t)     after the collection began,

with c_comp the worker's jitted gradient + encode + pack (+ ``device_get``), delay_i(t) the
injected delay (``gc.draw_delay``: the same seeded draws, so the order statistic below is that of
the realised delays) and c_msg the rest of the round trip (argument transfer, Ray scheduling,
result transfer and deserialization: median of a_i - compute_i - delay_i over all messages).
The coordinator waits for the n-th smallest a_i (``wait="first"``: n = K - s; ``"all"``: every
live worker) or, with a deadline, for min(deadline, max_i a_i); then it decodes (c_decode) and
evaluates F (c_eval):

    step_t = c_dispatch + wait_t + c_decode + c_eval,   time to target = sum_t step_t.

Each cost is the median of its measurements in the run being predicted (as the DAP part of
``benchmarks/async_ray.py`` feeds ``vr_prox.event_trace``). ``vr_prox.event_trace`` itself models
an asynchronous server (a worker starts its next message as soon as it is served) and has no
barrier, so it cannot express "wait for the first K - s arrivals, then restart everybody"; this is
that barrier's one-round order statistic.
"""
from __future__ import annotations

import numpy as np

from common.async_ray import gc


def measured_costs(timing) -> dict:
  """Median per-operation costs (seconds) from ``gc.run(...)["timing"]``."""
  arrivals = np.array([a for t in timing for a in t["arrivals"]], np.float64)   # (worker, compute, delay, arrive)
  return {"dispatch": float(np.median([t["dispatch_s"] for t in timing])),
          "compute": float(np.median(arrivals[:, 1])),
          "msg": float(np.median(arrivals[:, 3] - arrivals[:, 1] - arrivals[:, 2])),
          "decode": float(np.median([t["decode_s"] for t in timing])),
          "eval": float(np.median([t["eval_s"] for t in timing]))}


def wait_time(spec: gc.GCSpec, arrivals: np.ndarray) -> float:
  """The coordinator's wait for one step given the live workers' arrival times ``arrivals``."""
  a = np.sort(np.asarray(arrivals, np.float64))
  if spec.wait == "deadline":
    return float(min(spec.deadline_s, a[-1]))
  n = len(a) if spec.wait == "all" else min(spec.num_workers - spec.num_stragglers, len(a))
  return float(a[n - 1])


def predict_step_times(spec: gc.GCSpec, costs: dict, steps, live_sets, leads=None, seed: int = 0) -> np.ndarray:
  """Predicted seconds of each step in ``steps`` (0-based), with ``live_sets[j]`` the workers alive
  at step ``steps[j]``. ``leads``: measured c_comp + c_msg of single messages to draw each arrival's
  from (seeded; the jittered variant) instead of the medians."""
  base = costs["dispatch"] + costs["decode"] + costs["eval"]
  rng = np.random.default_rng(seed)

  def lead():
    return costs["msg"] + costs["compute"] if leads is None else float(rng.choice(leads))

  return np.array([base + wait_time(spec, [lead() + gc.draw_delay(spec, i, t) for i in live])
                   for t, live in zip(steps, live_sets)])


def predict(spec: gc.GCSpec, out: dict, target_step: int | None) -> dict:
  """The model's median step and time to ``target_step`` (1-based; None: the whole run) for a
  ``gc.run`` result ``out``, from the costs measured in that run: with the median costs, and
  (``"jitter"``) with each message's c_comp + c_msg drawn from that run's measured ones."""
  timing = out["timing"]
  costs = measured_costs(timing)
  steps, live = [t["step"] for t in timing], [t["live"] for t in timing]
  leads = np.array([a[3] - a[2] for t in timing for a in t["arrivals"]])   # arrival - delay = compute + msg
  upto = len(steps) if target_step is None else target_step
  result = {"costs": costs}
  for name, times in (("median", predict_step_times(spec, costs, steps, live)),
                      ("jitter", predict_step_times(spec, costs, steps, live, leads=leads))):
    result[name] = {"step_s": float(np.median(times)), "time_to_target": float(times[:upto].sum())}
  return result
