"""The training loop shared by ``launch.py``, tests and benchmarks.

``run(config, workdir)`` does, in order:
  1. validate the whole config (``validate``) — no compile happens before this passes;
  2. build the mesh, dataset, model and the algorithm's ``Method`` (``common/algos``);
  3. place the data shards (``P("data")``; a sparse dataset's rows as ``EllRows`` when ``sparse_rows``),
     params (``P()``) and optimizer state (the method's
     specs) as global arrays, restoring the latest checkpoint of ``workdir`` if there is one;
  4. compile one ``jit(shard_map(method.local_step))`` program (and, for a method with a separate
     curvature refresh, ``method.refresh``'s programs: one Lanczos iteration and the finish, which
     the host runs first on the steps it is due) and measure their collective bytes;
  5. step, blocking on every step's metrics (CPU collectives deadlock when steps queue up),
     logging steps/s and ETA without compile time, evaluating, checkpointing, and stopping
     with a clear message on a non-finite loss or parameter norm while keeping the last good
     checkpoint.

The step key is ``fold_in(PRNGKey(seed), step)``, so a resumed run sees the same randomness
as an uninterrupted one.
"""
from __future__ import annotations

import dataclasses
import json
import os
import threading
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging

from common import algos, comm, data, fields, mesh as mesh_lib, models
from common.algos.base import AXIS, BuildContext, Method, Refresh, replicated_specs
from common.errors import EXIT_PEER, ConfigError, FlagError, PeerError
from common.metrics import Chronometer, MetricWriter, human_bytes, human_time


class NonFiniteError(RuntimeError):
  """Raised when the loss or the parameters stop being finite."""


@dataclasses.dataclass
class RunResult:
  params: Any
  opt_state: Any
  step: int
  history: list[dict]
  final: dict
  comm: comm.CommReport
  status: str = "ok"


# ----------------------------------------------------------------------------- validation
def validate(config: ml_collections.ConfigDict, *, available_devices: int | None = None) -> data.Dataset:
  """Checks every field the harness uses and the algorithm's own; returns the dataset.

  Raises ConfigError naming the field and what is allowed. Runs before any compilation:
  first the JAX-free checks of ``common.fields``, then the ones that need the device count,
  the data, the model or the algorithm package.
  """
  fields.check(config)
  num_devices = config.num_devices or available_devices or 1
  if available_devices is not None and config.num_devices > available_devices:
    raise ConfigError("num_devices", f"{config.num_devices} devices requested but only "
                      f"{available_devices} are available; use --config.num_devices={available_devices}")
  if config.batch_size % num_devices:
    raise ConfigError("batch_size", f"global batch {config.batch_size} is not divisible by "
                      f"{num_devices} devices; use a multiple of {num_devices}")
  adapter = algos.get(config.algorithm)
  dataset = load_dataset(config)
  if dataset.num_train < num_devices:
    raise ConfigError("dataset", f"{dataset.num_train} training rows cannot feed {num_devices} devices")
  models.from_config(config, dataset)
  check_sparse_rows(config, dataset, num_devices)
  adapter.validate(config, dataset)
  return dataset


# Algorithms whose step only evaluates the model's loss and its gradient on (minibatches of) the
# rows, so they take sparse ``EllRows`` unchanged; the others see dense rows.
SPARSE_ROW_ALGORITHMS = ("vr_prox", "dense")


def sparse_rows(config, dataset: data.Dataset) -> bool:
  """True when a sparse dataset's rows go to the devices as ``EllRows`` (memory ~ nonzeros):
  a linear model (``models.SPARSE_ROW_MODELS``) under an algorithm of ``SPARSE_ROW_ALGORITHMS``."""
  return (data.is_sparse(dataset.x_train) and config.model in models.SPARSE_ROW_MODELS
          and config.algorithm in SPARSE_ROW_ALGORITHMS)


def check_sparse_rows(config, dataset: data.Dataset, num_devices: int) -> None:
  """Sparse rows that must be densified (not ``sparse_rows``) and would exceed ``data.MAX_DENSE_FLOATS``
  padded floats: a ConfigError naming the model (or the algorithm) and the fix, before anything builds."""
  if not data.is_sparse(dataset.x_train) or sparse_rows(config, dataset):
    return
  rows = num_devices * -(-max(dataset.num_train, len(dataset.y_test)) // num_devices)
  size = rows * dataset.num_features
  if size <= data.MAX_DENSE_FLOATS:
    return   # small enough: shard_rows densifies it
  field, value = (("model", config.model) if config.model not in models.SPARSE_ROW_MODELS
                  else ("algorithm", config.algorithm))
  raise ConfigError(field, f"{value!r} takes dense rows, and densifying this sparse dataset ({rows:,} padded rows x "
                    f"{dataset.num_features:,} features = {size:,} floats) exceeds 2^28; sparse rows stay sparse "
                    f"(ELL) with model {' or '.join(models.SPARSE_ROW_MODELS)} under algorithm "
                    f"{' or '.join(SPARSE_ROW_ALGORITHMS)} (e.g. configs/vr_prox_sparse.py), or use fewer rows "
                    f"(--config.max_train_rows)")


def load_dataset(config) -> data.Dataset:
  return data.load(config.dataset, seed=config.seed, test_fraction=config.test_fraction,
                   num_classes=config.num_classes, num_features=config.num_features,
                   num_rows=config.num_rows, seq_len=config.seq_len, max_train_rows=config.max_train_rows)


# ----------------------------------------------------------------------------- building
@dataclasses.dataclass(frozen=True)
class Program:
  """A run's step as programs: ``step`` (``jit(shard_map(method.local_step))``) and, for a method
  with a separate curvature refresh (``Method.refresh``), ``refresh_iterate`` (one Lanczos
  iteration) and ``refresh_finish`` (the pairs into the optimizer state), which run before ``step``
  on the calls ``refresh.due(opt_state)`` names: ``iterate`` ``refresh.iterations`` times from
  ``lanczos0()``, then ``finish``. Holds lowered or compiled programs (``Experiment.lower`` /
  ``compile``); calling a compiled one runs one training step. A single program also answers
  ``as_text`` / ``memory_analysis`` (so ``comm.collective_bytes`` takes it); several must be read
  part by part (``parts``; ``runs_per_refresh`` weighs them), and asking for one text is an error
  rather than part of the answer."""
  step: Any
  refresh_iterate: Any = None
  refresh_finish: Any = None
  refresh: Refresh | None = None
  lanczos0: Callable[[], Any] | None = None     # a fresh placed start state for each refresh

  @property
  def parts(self) -> dict:
    return {part: p for part in ("step", "refresh_iterate", "refresh_finish")
            if (p := getattr(self, part)) is not None}

  @property
  def runs_per_refresh(self) -> dict:
    """How often each refresh program runs in one refresh."""
    return {"refresh_iterate": self.refresh.iterations, "refresh_finish": 1} if self.refresh else {}

  def __call__(self, params, opt_state, shard, key):
    if self.refresh is not None and self.refresh.due(opt_state):
      lanczos = self.lanczos0()
      for _ in range(self.refresh.iterations):   # blocking: queued CPU collectives can deadlock
        lanczos = jax.block_until_ready(self.refresh_iterate(params, lanczos, shard, key))
      opt_state = self.refresh_finish(params, opt_state, lanczos)
    return self.step(params, opt_state, shard, key)

  def compile(self) -> "Program":
    return dataclasses.replace(self, **{part: p.compile() for part, p in self.parts.items()})

  def _single(self, what: str):
    if self.refresh is not None:
      raise TypeError(f"this step is several programs (the step and the curvature refresh's): take {what} of "
                      "each of .parts")
    return self.step

  def as_text(self, *args, **kwargs) -> str:
    return self._single("as_text()").as_text(*args, **kwargs)

  def memory_analysis(self):
    return self._single("memory_analysis()").memory_analysis()

  def peak_bytes(self) -> int:
    """Peak bytes per device: arguments + outputs + temporaries - aliased, of the dearest program."""
    def one(compiled):
      mem = compiled.memory_analysis()
      return int(mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes
                 - mem.alias_size_in_bytes)
    return max(one(p) for p in self.parts.values())

  def refresh_payload(self, count: Callable[[Any], float]) -> float:
    """A refresh's bytes per device: ``count(program)`` of each refresh program times its runs."""
    return float(sum(count(self.parts[part]) * runs for part, runs in self.runs_per_refresh.items()))


@dataclasses.dataclass
class Experiment:
  """Everything ``run`` builds before stepping; tests and benchmarks use it directly."""
  config: ml_collections.ConfigDict
  mesh: jax.sharding.Mesh
  dataset: data.Dataset
  model: models.Model
  method: Method
  shard: data.Shard                 # global arrays, P("data")
  params: Any                       # global, replicated
  opt_state: Any                    # global, method's specs
  state_specs: Any
  step_fn: Any                      # jitted shard_map step
  refresh_fns: dict | None = None   # jitted shard_map refresh_iterate / refresh_finish (Method.refresh)
  lanczos0: Any = None              # the refresh's placed start state (global layout)

  def key(self, step: int) -> jax.Array:
    return jax.random.fold_in(jax.random.key(self.config.seed), step)

  def _jitted(self) -> dict:
    """{part: (jitted program, example arguments)}."""
    key = self.key(0)
    table = {"step": (self.step_fn, (self.params, self.opt_state, self.shard, key))}
    if self.refresh_fns is not None:
      table["refresh_iterate"] = (self.refresh_fns["refresh_iterate"], (self.params, self.lanczos0, self.shard, key))
      table["refresh_finish"] = (self.refresh_fns["refresh_finish"], (self.params, self.opt_state, self.lanczos0))
    return table

  def _program(self, parts: dict) -> Program:
    if self.refresh_fns is None:
      return Program(**parts)
    fresh = lambda: jax.tree.map(jnp.copy, self.lanczos0)   # iterate donates its input
    return Program(**parts, refresh=self.method.refresh, lanczos0=fresh)

  def lower(self) -> Program:
    return self._program({part: fn.lower(*args) for part, (fn, args) in self._jitted().items()})

  def compile(self, lowered: Program | None = None) -> Program:
    """The compiled step (of ``lowered`` when the caller already lowered it)."""
    return (lowered if lowered is not None else self.lower()).compile()

  def compile_timed(self) -> tuple[Program, Program, dict]:
    """(lowered, compiled, ``{part: {"lower", "compile", "lower_cpu", "compile_cpu"}}``): each program
    lowered and compiled in turn, wall seconds and this process's CPU seconds."""
    lowered, compiled, seconds = {}, {}, {}
    for part, (fn, args) in self._jitted().items():
      c0, w0 = time.process_time(), time.perf_counter()
      lowered[part] = fn.lower(*args)
      c1, w1 = time.process_time(), time.perf_counter()
      compiled[part] = lowered[part].compile()
      seconds[part] = dict(lower=w1 - w0, compile=time.perf_counter() - w1, lower_cpu=c1 - c0,
                           compile_cpu=time.process_time() - c1)
    return self._program(lowered), self._program(compiled), seconds

  def time_steps(self, compiled, steps: int):
    """Runs ``steps`` steps from the initial state, blocking each; returns (seconds per step, metrics).

    Consumes the initial params and state (the step donates them).
    """
    params, state, times, metrics = self.params, self.opt_state, [], {}
    for step in range(1, steps + 1):
      start = time.perf_counter()
      params, state, metrics = compiled(params, state, self.shard, self.key(step))
      jax.block_until_ready(metrics)
      times.append(time.perf_counter() - start)
    return times, {k: float(mesh_lib.fetch(v)) for k, v in metrics.items()}


def _to_dtype(tree, dtype):
  return jax.tree.map(lambda x: np.asarray(x, dtype) if np.issubdtype(np.asarray(x).dtype, np.floating) else x,
                      tree)


def build(config, dataset: data.Dataset | None = None, mesh=None) -> Experiment:
  """Builds mesh, data, model, method, placed state and the jitted step (no compile yet)."""
  mesh = mesh or mesh_lib.make_mesh(config.num_devices)
  dataset = dataset or load_dataset(config)
  num_devices = mesh.shape[AXIS]
  model = models.from_config(config, dataset)
  float_dtype = np.float64 if config.x64 else np.float32
  init_key, state_key = jax.random.split(jax.random.key(config.seed))
  params = _to_dtype(jax.device_get(model.init(init_key)), float_dtype)
  ctx = BuildContext(model=model, dataset=dataset, params=params, num_devices=num_devices,
                     batch_per_device=config.batch_size // num_devices, axis_name=AXIS)
  adapter = algos.get(config.algorithm)
  method = adapter.build(config, ctx)
  partition = (adapter.partition_rows(config, dataset.num_train, num_devices)
               if hasattr(adapter, "partition_rows") else None)
  host_shard = data.shard_rows(dataset.x_train.astype(float_dtype), dataset.y_train, num_devices, partition,
                               ell=sparse_rows(config, dataset))
  shard = jax.tree.map(lambda x: mesh_lib.put(x, mesh, jax.P(AXIS)), host_shard)
  opt_state = jax.device_get(method.init_state(params, state_key))
  specs = (method.state_specs or replicated_specs)(opt_state)
  opt_state = mesh_lib.put_tree(opt_state, mesh, specs)
  params = mesh_lib.put_tree(params, mesh, replicated_specs(params))

  def local_step(params, opt_state, shard, key):
    params, opt_state, metrics = method.local_step(params, opt_state, shard, key)
    metrics = dict(metrics, param_norm=optax.tree.norm(params))
    return params, opt_state, metrics

  in_specs = (jax.P(), specs, jax.P(AXIS), jax.P())
  step_fn = jax.jit(jax.shard_map(local_step, mesh=mesh, in_specs=in_specs, out_specs=(jax.P(), specs, jax.P())),
                    donate_argnums=(0, 1))
  refresh_fns, lanczos0 = None, None
  if method.refresh is not None:
    r = method.refresh
    lanczos0 = jax.device_get(r.start(params))
    lz_specs = r.specs(lanczos0)
    lanczos0 = mesh_lib.put_tree(lanczos0, mesh, lz_specs)
    iterate = jax.shard_map(r.iterate, mesh=mesh, in_specs=(jax.P(), lz_specs, jax.P(AXIS), jax.P()),
                            out_specs=lz_specs)
    finish = jax.shard_map(r.finish, mesh=mesh, in_specs=(jax.P(), specs, lz_specs), out_specs=specs)
    refresh_fns = {"refresh_iterate": jax.jit(iterate, donate_argnums=(1,)),
                   "refresh_finish": jax.jit(finish, donate_argnums=(1,))}
  return Experiment(config, mesh, dataset, model, method, shard, params, opt_state, specs, step_fn, refresh_fns,
                    lanczos0)


def evaluate(exp: Experiment, params) -> dict:
  """Test loss and accuracy, train loss and accuracy, plus the model's ``derived_metrics``
  (the language model's bits per character).

  The rows are sharded over the mesh (``P("data")``, padded rows masked), so each device
  evaluates its own rows. Both splits are evaluated in full, except that a model with
  ``eval_train_subset`` (the language model, whose training split is 9x its validation split)
  gets train metrics on as many evenly spaced training rows as the test split has (one compile).
  """
  results = {}
  dtype = jax.tree.leaves(params)[0].dtype
  num_devices = exp.mesh.shape[AXIS]
  x_train, y_train = exp.dataset.x_train, exp.dataset.y_train
  if exp.model.eval_train_subset and len(y_train) > len(exp.dataset.y_test):
    idx = np.linspace(0, len(y_train) - 1, len(exp.dataset.y_test)).round().astype(np.int64)
    x_train, y_train = x_train[idx], y_train[idx]
  for split, x, y in (("train", x_train, y_train), ("test", exp.dataset.x_test, exp.dataset.y_test)):
    rows = jax.tree.map(lambda a: mesh_lib.put(a, exp.mesh, jax.P(AXIS)),
                        data.shard_rows(x.astype(dtype), y, num_devices, ell=isinstance(exp.shard.x, data.EllRows)))
    loss, acc = _eval_fn(exp.model)(params, rows)
    results[f"{split}_loss"] = float(mesh_lib.fetch(loss))
    results[f"{split}_accuracy"] = float(mesh_lib.fetch(acc))
  results.update(exp.model.derived_metrics(results))
  return results


_EVAL_CACHE: dict = {}


def _eval_fn(model):
  if model not in _EVAL_CACHE:
    _EVAL_CACHE[model] = jax.jit(lambda p, r: (model.loss(p, r.x, r.y, r.mask), model.accuracy(p, r.x, r.y, r.mask)))
  return _EVAL_CACHE[model]


# ----------------------------------------------------------------------------- running
class _Watchdog:
  """Exits the process if no step completes for ``timeout_s`` (a hung peer in multi-process runs)."""

  def __init__(self, timeout_s: float):
    self.timeout_s, self.last, self.step = timeout_s, time.monotonic(), 0
    self._stop = threading.Event()
    if timeout_s > 0:
      threading.Thread(target=self._watch, daemon=True).start()

  def beat(self, step: int):
    self.last, self.step = time.monotonic(), step

  def stop(self):
    self._stop.set()

  def _watch(self):
    while not self._stop.wait(1.0):
      if time.monotonic() - self.last > self.timeout_s:
        logging.error("error: step %d did not finish within --step_timeout=%.0f s: a peer process is gone or "
                      "hung; exiting with code %d", self.step + 1, self.timeout_s, EXIT_PEER)
        logging.flush()
        os._exit(EXIT_PEER)


def _write_json(path, obj):
  with open(path, "w") as f:
    json.dump(obj, f, indent=2, sort_keys=True, default=str)


def save_params(path: str, params) -> None:
  """Writes params as a flat ``.npz`` keyed by their tree paths (any process may call it)."""
  flat = {jax.tree_util.keystr(k): mesh_lib.fetch(v) for k, v in jax.tree_util.tree_leaves_with_path(params)}
  np.savez(path, **flat)


@dataclasses.dataclass(frozen=True)
class StepBytes:
  """Measured payload per device of each branch a step can take (``Method.branches``).

  ``of(step)`` is the payload of the branch step ``step`` (1-based) takes; ``largest`` is the
  compiled program's dearest branch (what the plain counter reports).
  """
  largest: float
  by_branch: dict
  branch_of: Any

  def of(self, step: int) -> float:
    return self.by_branch[self.branch_of(step)] if self.branch_of else self.largest

  def cumulative(self, step: int) -> float:
    if not self.branch_of:
      return self.largest * step
    return float(sum(self.of(t) for t in range(1, step + 1)))


def measure_branches(method: Method, compiled: Program, report: comm.CommReport) -> StepBytes:
  """Each branch's payload from the compiled program (``comm.collective_bytes(taken=...)``); a branch
  with ``"refresh": True`` also runs the separate refresh programs, if any, and adds their bytes
  (``Program.refresh_payload``: the iteration's times the iterations, plus the finish's).

  ``report``: the step program's count. Raises RuntimeError when the method declares branches but
  a conditional with differing costs is not decided by them (the byte log would otherwise be a guess).
  """
  if not method.branches:
    if compiled.refresh is not None:   # every step would log the refresh's bytes
      raise RuntimeError("a method with a separate refresh program must declare its branches (Method.branches)")
    return StepBytes(report.payload, {}, None)
  extra = compiled.refresh_payload(lambda p: comm.collective_bytes(p).payload)
  text = compiled.step.as_text()
  by_branch = {}
  for label, taken in method.branches.items():
    measured = comm.collective_bytes(text, taken)
    if measured.unattributed:
      raise RuntimeError(f"cannot attribute the compiled step's conditionals to branch {label!r} "
                         f"({taken}): {'; '.join(measured.unattributed)}")
    by_branch[label] = measured.payload + (extra if taken.get("refresh") else 0.0)
  return StepBytes(report.payload + extra, by_branch, method.branch_of)


@dataclasses.dataclass
class _Timers:
  eval_s: float = 0.0
  checkpoint_s: float = 0.0


def run(config: ml_collections.ConfigDict, workdir: str | None = None, *, quiet: bool = False,
        step_timeout_s: float = 0, stop_after: int | None = None) -> RunResult:
  """Validates, builds and runs ``config``; see the module docstring.

  With a ``workdir``, the config is compared with the stored ``config.json`` before anything there
  is touched (``fields.check_resume``), the run resumes from the latest checkpoint, ``metrics.jsonl``
  is cut back to that step (one line per step after any number of kills), and a final checkpoint
  is written even when ``checkpoint_every`` is 0, so rerunning a finished run resumes it (or says
  that nothing ran).

  Args:
    config: experiment config (``configs/common.py`` fields).
    workdir: where ``config.json``, ``metrics.jsonl``, ``summary.json`` and checkpoints go;
      None runs without files (tests).
    quiet: log only the start and the summary.
    step_timeout_s: > 0 exits the process when no step finishes for that long (multi-process).
    stop_after: stop (as if preempted) once this step is reached; tests use it for resume.
  """
  dataset = validate(config, available_devices=jax.device_count())
  primary = jax.process_index() == 0
  say = logging.info if primary and not quiet else (lambda *a: None)
  changed = fields.check_resume(config, workdir)
  for field, (old, new) in changed.items():
    say("resume: config.%s %r -> %r (allowed: it only schedules the loop)", field, old, new)
  exp = build(config, dataset)
  ckpt = None
  if workdir:
    from common.checkpoint import Checkpointer
    ckpt = Checkpointer(workdir)
  start = (ckpt.latest_step() or 0) if ckpt else 0
  if start >= config.num_steps:
    return _nothing_to_run(exp, ckpt, start, workdir, say)
  if workdir:
    _check_state_format(workdir, exp.method.state_format, start)
  if workdir and primary:
    _write_json(os.path.join(workdir, "config.json"), config.to_dict())
    _write_json(os.path.join(workdir, STATE_FORMAT_FILE), {"state_format": exp.method.state_format})
  writer = MetricWriter(workdir, enabled=primary)
  dropped = writer.truncate(start)
  if dropped:
    say("metrics.jsonl: dropped %d line(s) after step %d (written after the last checkpoint)", dropped, start)

  num_devices = exp.mesh.shape[AXIS]
  say("%s | %s | %s on %d %s devices (%d process(es)) | %d params",
      config.algorithm, exp.method.describe or "", config.model, num_devices, jax.default_backend(),
      jax.process_count(), sum(x.size for x in jax.tree.leaves(exp.params)))

  lowered, compiled, seconds = exp.compile_timed()
  compile_s = sum(s["lower"] + s["compile"] for s in seconds.values())
  report = comm.collective_bytes(compiled.step)
  as_sent = _lowered_bytes(lowered, say)
  sent = measure_branches(exp.method, compiled, report)
  branches = "".join(f"; {label} {human_bytes(b)}" for label, b in sent.by_branch.items())
  programs = ", ".join(f"{part} {s['lower'] + s['compile']:.2f} s" for part, s in seconds.items())
  say("compiled in %.2f s (lowering + compilation: %s); measured %s/device/step in the compiled program (largest "
      "branch; step program: wire %s, %d collective(s), %d array(s))%s; %s in the lowered program's dtypes; analytic %s",
      compile_s, programs, human_bytes(sent.largest), human_bytes(report.wire), report.count, report.arrays, branches,
      human_bytes(as_sent) if as_sent is not None else "n/a",
      human_bytes(exp.method.analytic_payload) if exp.method.analytic_payload is not None else "n/a")
  for note in report.notes:
    say("comm note: %s", note)

  params, opt_state = exp.params, exp.opt_state
  if start:
    params, opt_state = _restore(ckpt, start, params, opt_state)
    say("resumed from checkpoint at step %d in %s", start, ckpt.dir)

  history: list[dict] = []
  chrono = Chronometer(config.num_steps)
  timers = _Timers()
  watchdog = _Watchdog(step_timeout_s)
  status, last_good, step = "ok", start, start
  last_eval = (None, {})
  cum_bytes = sent.cumulative(start)
  try:
    for step in range(start + 1, config.num_steps + 1):
      t_step = time.perf_counter()
      try:
        params, opt_state, metrics = compiled(params, opt_state, exp.shard, exp.key(step))
        metrics = {k: float(mesh_lib.fetch(v)) for k, v in metrics.items()}  # blocks every step
      except jax.errors.JaxRuntimeError as e:
        if jax.process_count() == 1:
          raise
        raise PeerError(f"step {step}: a collective failed ({str(e).splitlines()[0][:160]}); a peer process "
                        f"is gone. {_last_checkpoint(ckpt, last_good)}") from None
      chrono.add(time.perf_counter() - t_step)
      watchdog.beat(step)
      if not (np.isfinite(metrics["loss"]) and np.isfinite(metrics["param_norm"])):
        status = "nan"
        raise NonFiniteError(
            f"step {step}: loss={metrics['loss']} param_norm={metrics['param_norm']} is not finite; stopped. "
            f"{_last_checkpoint(ckpt, last_good)}. Lower --config.lr or check the data.")
      cum_bytes += sent.of(step)
      record = dict(metrics, bytes=sent.of(step), cum_bytes=cum_bytes)
      if config.eval_every and (step % config.eval_every == 0 or step == config.num_steps):
        t_eval = time.perf_counter()
        last_eval = (step, evaluate(exp, params))
        record.update(last_eval[1])
        timers.eval_s += time.perf_counter() - t_eval
      writer.write(step, **record)
      history.append(dict(record, step=step))
      if step % config.log_every == 0 or step == config.num_steps or step == start + 1:
        extra = "".join(f" {k}={record[k]:.4f}" for k in ("test_accuracy", "test_bpc") if k in record)
        say("step %d/%d loss=%.5f%s | %.1f steps/s, ETA %s | %s/step", step, config.num_steps,
            metrics["loss"], extra, chrono.rate(), human_time(chrono.eta_s(step)), human_bytes(sent.of(step)))
      if ckpt is not None and ((config.checkpoint_every and step % config.checkpoint_every == 0)
                               or step == config.num_steps):
        t_ckpt = time.perf_counter()
        ckpt.save(step, {"params": params, "opt_state": opt_state})
        timers.checkpoint_s += time.perf_counter() - t_ckpt
        last_good = step
      if stop_after is not None and step >= stop_after:
        break
  finally:
    watchdog.stop()
    if ckpt is not None:
      ckpt.close()

  t_eval = time.perf_counter()
  final = dict(last_eval[1]) if last_eval[0] == step else evaluate(exp, params)   # no second pass at the last step
  timers.eval_s += time.perf_counter() - t_eval
  ran = step - start
  final.update(step=step, steps_run=ran, compile_s=compile_s, steps_per_s=chrono.rate(),
               step_time_s=chrono.total_s, eval_s=timers.eval_s, checkpoint_s=timers.checkpoint_s,
               bytes_per_step=sent.largest, max_bytes_per_step=sent.largest,
               compile_s_by_program={part: s["lower"] + s["compile"] for part, s in seconds.items()},
               mean_bytes_per_step=cum_bytes / step if step else 0.0, cum_bytes=cum_bytes,
               bytes_per_branch=sent.by_branch or None, wire_bytes_per_step=report.wire,
               bytes_source=report.source, lowered_bytes_per_step=as_sent,
               collectives_per_step=report.count, arrays_per_step=report.arrays,
               analytic_bytes_per_step=exp.method.analytic_payload, num_devices=num_devices,
               num_processes=jax.process_count(), algorithm=config.algorithm, status=status)
  if workdir and primary:
    _write_json(os.path.join(workdir, "summary.json"), final)
    save_params(os.path.join(workdir, "final_params.npz"), params)
  say("done: step %d | train loss %.5f | test loss %.5f | test accuracy %.4f | %s/step mean (largest %s) | "
      "%.1f steps/s over %d steps (eval %.2f s, checkpoints %.2f s, compile %.2f s)",
      step, final["train_loss"], final["test_loss"], final["test_accuracy"],
      human_bytes(final["mean_bytes_per_step"]), human_bytes(sent.largest), final["steps_per_s"], ran,
      timers.eval_s, timers.checkpoint_s, compile_s)
  return RunResult(params, opt_state, step, history, final, report, status)


STATE_FORMAT_FILE = "state_format.json"


def _check_state_format(workdir: str, current: str, start: int) -> None:
  """Refuses to resume from checkpoints whose optimizer state the running code lays out differently
  (``Method.state_format``; a workdir written before the record existed reads as "")."""
  if not start:
    return
  path = os.path.join(workdir, STATE_FORMAT_FILE)
  stored = None                     # no record: written before it existed (plain state then, or not)
  if os.path.exists(path):
    with open(path) as f:
      stored = json.load(f).get("state_format", "")
  if (stored or "") != current:
    said = "before this code recorded it" if stored is None else (stored or "plain")
    raise FlagError("workdir", f"{workdir}'s checkpoints hold optimizer state laid out as {said!r}; this code "
                    f"lays it out as {current or 'plain'!r}, so restoring would put values at the wrong "
                    "coordinates. Use a new --workdir")


def _lowered_bytes(lowered: Program, say) -> float | None:
  """Collective payload per device counted in the lowered programs' dtypes (XLA:CPU sends bf16 as f32,
  so the compiled count doubles a bf16 payload): the step's plus a refresh's (``Program.refresh_payload``);
  a diagnostic, so an unreadable program logs and gives None."""
  try:
    step = comm.lowered_collective_bytes(lowered.step).payload
    return step + lowered.refresh_payload(lambda p: comm.lowered_collective_bytes(p).payload)
  except ValueError as e:
    say("lowered byte count unavailable: %s", e)
    return None


def _last_checkpoint(ckpt, last_good: int) -> str:
  if ckpt is not None and ckpt.latest_step() is not None:
    return f"Last good checkpoint: step {ckpt.latest_step()} in {ckpt.dir}"
  return "No checkpoint was written yet"


def _restore(ckpt, step: int, params, opt_state):
  """The checkpoint at ``step`` in this run's shapes; a mismatch is a ConfigError, not a traceback."""
  try:
    restored = ckpt.restore(step, {"params": params, "opt_state": opt_state})
  except (ValueError, KeyError, TypeError) as e:
    raise FlagError("workdir", f"the checkpoint at step {step} in {ckpt.dir} does not fit this config's "
                      f"parameters or optimizer state ({str(e).splitlines()[0][:200]}); use a new --workdir") from None
  return restored["params"], restored["opt_state"]


def _nothing_to_run(exp: Experiment, ckpt, start: int, workdir: str, say) -> RunResult:
  """A rerun of a finished run: restores the final state, logs that nothing ran, touches no file."""
  say("nothing ran: %s already holds step %d and num_steps is %d (raise --config.num_steps to continue)",
      workdir, start, exp.config.num_steps)
  try:
    params, opt_state = _restore(ckpt, start, exp.params, exp.opt_state)
  finally:
    ckpt.close()
  summary = os.path.join(workdir, "summary.json")
  final = {}
  if os.path.exists(summary):
    with open(summary) as f:
      final = json.load(f)
  return RunResult(params, opt_state, start, [], final, comm.CommReport(0, 0, (), (), exp.mesh.shape[AXIS]),
                   "nothing_ran")
