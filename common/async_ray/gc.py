"""1-bit gradient coding with real stragglers on Ray (issue 16; spec sign1bit.md §2.3, §5.1).

Li & Skoglund, *Distributed Learning based on 1-Bit Gradient Coding in the Presence of Stragglers*
(arXiv:2403.14716), and its baselines, on the digits problem of ``benchmarks/sign1bit.py``
(``common/digits_softmax.py``: softmax regression, D = 650, f_k = mean loss of partition k + (lambda/2)||w||^2, F = (1/N) sum_k f_k).

Step t: the coordinator (the driver process) broadcasts w_t to the K live worker actors. Worker i
sleeps a seeded delay (exponential or Pareto, drawn from ``default_rng([seed, i, t])``), computes
its local gradient sum_{k in S_i} grad f_k(w_t) on its partitions S_i (``common.digits_softmax.local_loss``)
and encodes it with ``sign1bit.coding.encode`` (c_i = gain * grad, stochastic sign against B with
the quantizer key ``worker_key(fold_in(key(seed), t), i)``, the streams of ``sign1bit.reference_decode``),
packs the bits with ``sign1bit.pack`` and returns the packed bytes (+ the f32 scale for B = 'linf';
fp32 values for the real-valued schemes). The coordinator takes what arrived -- every live worker
(``wait="all"``), the first K - s (``"first"``) or everything by ``deadline_s`` (``"deadline"``) --
and decodes with ``sign1bit.coding.decode`` (eq. of spec §2.3 step 5: g = (B/N) sum_{i in R} q_i,
fixed N and d(1 - p)); w_{t+1} = w_t - lr * g. A late message is dropped; the straggler's thread
finishes on its own (worker actors are threaded, so a late step does not delay its next one and the
per-step delays stay independent, as the decoder's 1/(d(1 - p)) assumes).

Methods (``METHODS``): ``dense`` (d = 1, wait for every live worker, mean of fp32 gradients),
``ignore_stragglers`` (d = 1, mean of the fp32 gradients that arrived), ``sgc`` (GC allocation, fp32
c_i, Bitar et al.), ``gc_linf`` (1-bit, B_i = ||c_i||_inf sent as one f32) and ``gc_const`` (1-bit,
B = l G / (d (1 - p)), G = 1). Decoder's p: s / K for ``wait="first"`` (sign1bit's fixed-s model),
``straggler_prob`` for ``"deadline"``, 0 for ``"all"``. A killed worker is a permanent straggler:
the decoder keeps its constants (so GC decoding is then biased; the log says which worker was lost
and when). ``sign1bit`` never imports Ray; nothing here imports JAX or Ray at module import.
"""
from __future__ import annotations

import dataclasses
import os
import time
from typing import Callable

import numpy as np

METHODS = ("dense", "ignore_stragglers", "sgc", "gc_linf", "gc_const")
WAITS = ("all", "first", "deadline")
DELAYS = ("none", "exponential", "pareto")
ALLOCATIONS = ("frc", "cyclic")
PARTITIONS = ("sorted", "shuffled")
G = 1.0   # |d f_k / d w_j| <= 1 on digits/16 (spec §5.3), the bound of gc_const's B


@dataclasses.dataclass(frozen=True)
class GCSpec:
  """One run (``configs/async_sign1bit.py`` documents the fields)."""
  method: str = "gc_linf"
  num_workers: int = 4
  allocation: str = "frc"
  redundancy: int = 2
  wait: str = "first"
  num_stragglers: int = 1
  deadline_s: float = 0.1
  straggler_prob: float = 0.2
  delay: str = "exponential"
  delay_mean_s: float = 0.05
  pareto_shape: float = 1.5
  delay_cap_s: float = 2.0
  lr: float = 0.3
  bound: float = 0.0                # gc_const: 0 = l G / (d (1 - p))
  num_steps: int = 300
  target_loss: float = 0.0          # > 0: stop at the first step with F(w) <= target_loss
  partitions: str = "sorted"
  seed: int = 0
  step_timeout_s: float = 60.0
  kill_worker: int = -1
  kill_at_step: int = 0


def redundancy(spec: GCSpec) -> int:
  """d: 1 for the d = 1 baselines, ``spec.redundancy`` for the gradient-coding methods."""
  return 1 if spec.method in ("dense", "ignore_stragglers") else spec.redundancy


def payload_scheme(method: str) -> str:
  """``sign1bit.payload_bits`` scheme of a method's message."""
  return {"gc_linf": "one_bit_scale", "gc_const": "one_bit"}.get(method, "fp32")


def make_allocation(spec: GCSpec):
  import sign1bit
  return sign1bit.allocation(spec.allocation, spec.num_workers, redundancy(spec))


def straggling(spec: GCSpec) -> tuple[float, dict]:
  """The decoder's p and straggler-model kwargs: fixed s (p = s / K) for ``wait="first"``,
  Bernoulli ``straggler_prob`` for ``"deadline"``, p = 0 for ``"all"``."""
  if spec.wait == "first":
    return spec.num_stragglers / spec.num_workers, dict(straggler_model="fixed", num_stragglers=spec.num_stragglers)
  return (spec.straggler_prob if spec.wait == "deadline" else 0.0), {}


def make_scheme(spec: GCSpec):
  """The ``sign1bit.coding.Scheme`` (axis_name=None) both the workers and the coordinator use.

  The d = 1 baselines are real-valued GC on frc(K, 1) with the ``active`` decoder (1/|R|):
  ignore-stragglers averaging of spec §5.1; ``dense`` is the same with every live worker waited for.
  """
  from sign1bit.coding import gc_scheme
  alloc = make_allocation(spec)
  if spec.method in ("dense", "ignore_stragglers"):
    return dataclasses.replace(gc_scheme(alloc, 0.0, None, axis_name=None, seed=spec.seed, quantize=False),
                               decode="active")
  p, kw = straggling(spec)
  return gc_scheme(alloc, p, _bound(spec, alloc, p), axis_name=None, seed=spec.seed,
                   quantize=spec.method != "sgc", **kw)


def _bound(spec: GCSpec, alloc, p: float):
  """B: None (sgc), 'linf', or the constant (``spec.bound`` or l G / (d (1 - p)))."""
  if spec.method == "gc_const":
    return spec.bound or alloc.load * G / (alloc.redundancy * (1.0 - p))
  return {"sgc": None, "gc_linf": "linf"}.get(spec.method)


def spmd_transform(spec: GCSpec, axis_name: str):
  """The SPMD ``sign1bit`` transformation of the same method on a K-device mesh axis: the public
  constructor with the same allocation, p, B and seed as ``make_scheme``; its straggler mask is
  drawn from the key (``sign1bit.coding.active_mask``), not from arrival order."""
  import sign1bit
  alloc = make_allocation(spec)
  p, kw = straggling(spec)
  if spec.method in ("dense", "ignore_stragglers"):
    return sign1bit.scale_by_ignore_stragglers(p, axis_name=axis_name, seed=spec.seed,
                                               num_workers=spec.num_workers, **kw)
  return sign1bit.scale_by_one_bit_gc(alloc, p, _bound(spec, alloc, p), axis_name=axis_name, seed=spec.seed,
                                      quantize=spec.method != "sgc", **kw)


def load_digits(spec: GCSpec):
  """(xs [N, rows, 65], ys [N, rows], x_test, y_test): ``common.digits_softmax``'s split and partitions,
  the training rows cut to a multiple of N (1432 rows divide by 1, 2, 4, 8)."""
  from common.digits_softmax import load_data, partitions
  x, y, x_test, y_test = load_data()
  n = make_allocation(spec).num_partitions
  keep = len(y) - len(y) % n
  regime = "label-sorted" if spec.partitions == "sorted" else "i.i.d."
  xs, ys = partitions(x[:keep], y[:keep], regime, n)
  return xs, ys, x_test, y_test


def objective_np(w, x, y, lam: float):
  """F(w) = mean softmax cross-entropy + (lam/2)||w||^2 and the accuracy, in float64 NumPy."""
  from common.digits_softmax import NC, NF
  logits = np.asarray(x, np.float64) @ np.asarray(w, np.float64).reshape(NF, NC)
  top = logits.max(1, keepdims=True)
  lse = top[:, 0] + np.log(np.exp(logits - top).sum(1))
  loss = float(np.mean(lse - logits[np.arange(len(y)), y]) + 0.5 * lam * np.sum(np.square(w, dtype=np.float64)))
  return loss, float(np.mean(np.argmax(logits, 1) == y))


def draw_delay(spec: GCSpec, worker: int, step: int) -> float:
  """The injected delay (seconds) of ``worker`` at ``step``: seeded by (seed, worker, step).

  exponential: mean ``delay_mean_s``; pareto: shape a = ``pareto_shape``, x_m = mean (a - 1) / a
  (mean ``delay_mean_s``, infinite variance for a <= 2); both capped at ``delay_cap_s``.
  """
  if spec.delay == "none":
    return 0.0
  rng = np.random.default_rng([spec.seed, worker, step])
  if spec.delay == "exponential":
    d = rng.exponential(spec.delay_mean_s)
  else:
    a = spec.pareto_shape
    d = spec.delay_mean_s * (a - 1) / a * (1.0 + rng.pareto(a))
  return float(min(d, spec.delay_cap_s))


class GCWorker:
  """Worker i: its partitions S_i, the jitted gradient + encoding, the injected delay."""

  def __init__(self, worker: int, spec: GCSpec, xs, ys):
    from common.async_ray.actors import _setup_jax
    jax = _setup_jax(False)
    import sign1bit
    from common.digits_softmax import D, local_loss
    from sign1bit.coding import encode, worker_key
    self.worker, self.spec = worker, spec
    scheme = make_scheme(spec)
    xs, ys = np.asarray(xs, np.float32), np.asarray(ys, np.int32)

    def message(w, step):
      g = jax.grad(local_loss)(w, xs, ys)
      key = worker_key(jax.random.fold_in(jax.random.key(spec.seed), step), worker)
      m = encode(scheme, g, key)
      return (None if m.bits is None else sign1bit.pack(m.bits)), m.values, m.scale, m.clipped

    self.message = jax.jit(message)
    jax.block_until_ready(self.message(np.zeros(D, np.float32), 0))   # compile before the timed loop

  def ready(self):
    return True

  def step(self, w, step: int):
    """{worker, step, packed | values, scale, clipped, compute_s, delay_s} after the injected delay."""
    import jax
    spec = self.spec
    if self.worker == spec.kill_worker and step + 1 >= spec.kill_at_step:   # logged steps count from 1
      os._exit(1)   # injected fault: the process dies as a crashed machine would
    t0 = time.perf_counter()
    packed, values, scale, clipped = jax.device_get(self.message(w, step))
    compute = time.perf_counter() - t0
    delay = draw_delay(spec, self.worker, step)
    time.sleep(delay)
    return {"worker": self.worker, "step": step, "packed": packed, "values": values,
            "scale": None if scale is None else np.float32(scale), "clipped": int(clipped),
            "compute_s": compute, "delay_s": delay}


class Decoder:
  """The coordinator's side: ``sign1bit.coding.decode`` of what arrived and the SGD step."""

  def __init__(self, spec: GCSpec):
    import jax
    import jax.numpy as jnp
    import sign1bit
    from common.digits_softmax import D
    from sign1bit.coding import decode
    self.scheme, self.k = make_scheme(spec), spec.num_workers
    self.bits = sign1bit.payload_bits(D, payload_scheme(spec.method))
    scheme = self.scheme

    def apply(w, lr, active, rows, scales):
      received = rows if scheme.encode == "real" else sign1bit.unpack(rows, D)
      g = decode(scheme, active, received, scales)
      return w - lr * g, g

    self._apply = jax.jit(apply)
    self._jnp = jnp
    self.width = D if scheme.encode == "real" else (D + 7) // 8

  def __call__(self, w, lr, messages: dict):
    """(w_next, g) from ``{worker: message}`` (the workers not in it are the stragglers)."""
    real = self.scheme.encode == "real"
    rows = np.zeros((self.k, self.width), np.float32 if real else np.uint8)
    scales = np.ones(self.k, np.float32)
    active = np.zeros(self.k, bool)
    for i, m in messages.items():
      rows[i] = m["values"] if real else m["packed"]
      scales[i] = 1.0 if m["scale"] is None else m["scale"]
      active[i] = True
    w_next, g = self._apply(w, np.float32(lr), active, rows, scales)
    return np.asarray(w_next), np.asarray(g)


def message_bytes(m) -> int:
  """Bytes of one message's payload as received (packed bits or fp32 values, + 4 for a scale)."""
  body = m["packed"] if m["values"] is None else m["values"]
  return int(np.asarray(body).nbytes) + (4 if m["scale"] is not None else 0)


def _need(spec: GCSpec, live) -> int:
  """Arrivals to wait for: every live worker, or the first K - s (a lost worker is one of the s)."""
  return len(live) if spec.wait != "first" else min(spec.num_workers - spec.num_stragglers, len(live))


def _collect(spec, refs, live, lost, step, t_start, log):
  """The messages of one step that arrive in time; a dead worker is logged and dropped from ``live``."""
  import ray
  from common.async_ray.ps import _actor_error
  got, pending = {}, dict(refs)
  t0 = time.perf_counter()
  limit = t0 + (spec.deadline_s if spec.wait == "deadline" else spec.step_timeout_s)
  while pending and len(got) < _need(spec, live):
    done, _ = ray.wait(list(pending), num_returns=1, timeout=max(limit - time.perf_counter(), 0))
    if not done:
      break
    k = pending.pop(done[0])
    try:
      got[k] = dict(ray.get(done[0]), arrive_s=time.perf_counter() - t0)   # since the collection began
    except _actor_error():
      live.remove(k)
      wall = time.perf_counter() - t_start
      lost.append({"worker": k, "step": step + 1, "wall_time": wall})
      log(f"worker {k} lost at step {step + 1} ({wall:.1f} s); a permanent straggler from now on, "
          f"{len(live)} live: {sorted(live)}")
      if not live:
        raise RuntimeError(f"all workers lost by step {step + 1}; nothing can make progress")
  if spec.wait != "deadline" and len(got) < _need(spec, live):
    raise TimeoutError(f"step {step + 1}: worker(s) {sorted(pending.values())} did not answer within "
                       f"{spec.step_timeout_s:g} s (config.step_timeout_s)")
  return got


def _start_workers(spec, xs, ys):
  import ray
  alloc = make_allocation(spec)
  cls = ray.remote(num_cpus=0, max_restarts=0, max_concurrency=8)(GCWorker)   # threads: late steps overlap
  return {i: cls.remote(i, spec, xs[alloc.index[i]], ys[alloc.index[i]]) for i in range(spec.num_workers)}


def run(spec: GCSpec, *, on_step: Callable[[dict, np.ndarray], None] | None = None,
        log: Callable[[str], None] = print, start: dict | None = None):
  """Trains; returns {"w", "records", "lost", "startup_s", "timing", "test_accuracy"}. Ray must be
  running (``ps.start_ray``); wall_time in the records counts from when every worker is up and
  compiled. ``on_step(record, w)`` after each step. ``start`` (a resume): {"step": steps done,
  "w", "wall_time", "uplink_bits", "cum_bytes"} of the last checkpoint; the loop continues at that
  step (its delays and quantizer keys are the step's, as in an uninterrupted run). ``timing``: per step, the measured
  per-operation costs of ``gc_model`` (dispatch, decode, eval; per arrival: worker, compute,
  injected delay, arrival time since the collection began)."""
  import ray
  from common.digits_softmax import LAM
  from common.async_ray.ps import _actor_error
  on_step = on_step or (lambda record, w: None)
  xs, ys, x_test, y_test = load_digits(spec)
  x_all, y_all = xs.reshape(-1, xs.shape[-1]), ys.reshape(-1)
  decoder = Decoder(spec)
  t0 = time.perf_counter()
  workers = _start_workers(spec, xs, ys)
  try:
    ray.get([w.ready.remote() for w in workers.values()], timeout=spec.step_timeout_s + 120)
  except (ray.exceptions.GetTimeoutError, *_actor_error()) as e:
    raise RuntimeError(f"the {spec.num_workers} worker actors did not start within "
                       f"{spec.step_timeout_s + 120:g} s (config.step_timeout_s + 120): {type(e).__name__}") from None
  startup_s = time.perf_counter() - t0
  log(f"{spec.num_workers} {spec.method} workers up in {startup_s:.1f} s")
  try:
    w, records, lost, timing = _train(spec, workers, decoder, x_all, y_all, on_step, log, start)
  finally:
    for actor in workers.values():   # also ends the sleeping threads of dropped late steps
      ray.kill(actor)
  return {"w": w, "records": records, "lost": lost, "startup_s": startup_s, "timing": timing,
          "test_accuracy": objective_np(w, x_test, y_test, LAM)[1]}


def _train(spec, workers, decoder, x_all, y_all, on_step, log, start=None):
  """The step loop of ``run``: broadcast, collect, decode, log; returns (w, records, lost, timing)."""
  import ray
  from common.digits_softmax import D, LAM
  start = start or {"step": 0, "w": np.zeros(D, np.float32), "wall_time": 0.0, "uplink_bits": 0, "cum_bytes": 0}
  w = np.asarray(start["w"], np.float32)
  live, lost, records, timing = set(workers), [], [], []
  cum_bits, cum_bytes = int(start["uplink_bits"]), int(start["cum_bytes"])
  t_start = time.perf_counter() - float(start["wall_time"])   # wall time continues the stored run's
  for step in range(int(start["step"]), spec.num_steps):
    t_step = time.perf_counter()
    w_ref = ray.put(w)
    refs = {workers[k].step.remote(w_ref, step): k for k in sorted(live)}
    t_sent = time.perf_counter()
    live_before = sorted(live)
    got = _collect(spec, refs, live, lost, step, t_start, log)
    t_got = time.perf_counter()
    w, _ = decoder(w, spec.lr, got)
    t_decoded = time.perf_counter()
    cum_bits += len(got) * decoder.bits
    cum_bytes += sum(message_bytes(m) for m in got.values())
    loss, _ = objective_np(w, x_all, y_all, LAM)
    record = {"step": step + 1, "loss": loss, "wall_time": time.perf_counter() - t_start,
              "step_s": time.perf_counter() - t_step, "active": len(got), "arrived": sorted(got),
              "uplink_bits": cum_bits, "bits_per_step": len(got) * decoder.bits, "cum_bytes": cum_bytes,
              "clipped": sum(m["clipped"] for m in got.values()), "live": sorted(live)}
    records.append(record)
    timing.append({"step": step, "live": live_before, "dispatch_s": t_sent - t_step, "collect_s": t_got - t_sent,
                   "decode_s": t_decoded - t_got, "eval_s": time.perf_counter() - t_decoded,
                   "arrivals": [(k, m["compute_s"], m["delay_s"], m["arrive_s"]) for k, m in got.items()]})
    on_step(record, w)
    if not np.isfinite(loss):
      raise RuntimeError(f"step {step + 1}: the loss is {loss} (lr {spec.lr} too large for {spec.method})")
    if spec.target_loss > 0 and loss <= spec.target_loss:
      break
  return w, records, lost, timing


def time_to_target(records, target: float):
  """(wall seconds, step) of the first record with loss <= target, or (None, None)."""
  for r in records:
    if r["loss"] <= target:
      return r["wall_time"], r["step"]
  return None, None
