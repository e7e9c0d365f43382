"""The training loop shared by ``launch.py``, tests and benchmarks.

``run(config, workdir)`` does, in order:
  1. validate the whole config (``validate``) — no compile happens before this passes;
  2. build the mesh, dataset, model and the algorithm's ``Method`` (``common/algos``);
  3. place the data shards (``P("data")``), params (``P()``) and optimizer state (the method's
     specs) as global arrays, restoring the latest checkpoint of ``workdir`` if there is one;
  4. compile one ``jit(shard_map(method.local_step))`` program and measure its collective bytes;
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
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging

from common import algos, comm, data, mesh as mesh_lib, models
from common.algos.base import AXIS, BuildContext, Method, replicated_specs
from common.errors import ConfigError
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
def _positive_int(config, field):
  value = config[field]
  if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
    raise ConfigError(field, f"must be a positive integer, got {value!r}")


def validate(config: ml_collections.ConfigDict, *, available_devices: int | None = None) -> data.Dataset:
  """Checks every field the harness uses and the algorithm's own; returns the dataset.

  Raises ConfigError naming the field and what is allowed. Runs before any compilation.
  """
  for field in ("batch_size", "num_steps", "log_every"):
    _positive_int(config, field)
  for field in ("eval_every", "checkpoint_every", "num_devices"):
    if not isinstance(config[field], int) or config[field] < 0:
      raise ConfigError(field, f"must be an integer >= 0, got {config[field]!r}")
  if not config.lr > 0:
    raise ConfigError("lr", f"must be > 0, got {config.lr}")
  if not 0 < config.test_fraction < 1:
    raise ConfigError("test_fraction", f"must be in (0, 1), got {config.test_fraction}")
  if config.model == "mlp" and (not config.widths or any(int(w) <= 0 for w in config.widths)):
    raise ConfigError("widths", f"mlp needs positive hidden widths, got {tuple(config.widths)}")
  num_devices = config.num_devices or available_devices or 1
  if available_devices is not None and config.num_devices > available_devices:
    raise ConfigError("num_devices", f"{config.num_devices} devices requested but only "
                      f"{available_devices} are available; use --config.num_devices={available_devices}")
  if config.batch_size % num_devices:
    raise ConfigError("batch_size", f"global batch {config.batch_size} is not divisible by "
                      f"{num_devices} devices; use a multiple of {num_devices}")
  adapter = algos.get(config.algorithm)
  from common import baseline
  if config.optimizer not in baseline.OPTIMIZERS:
    raise ConfigError("optimizer", f"unknown optimizer {config.optimizer!r}; allowed: "
                      f"{', '.join(baseline.OPTIMIZERS)}")
  if config.model not in models.MODELS:
    raise ConfigError("model", f"unknown model {config.model!r}; allowed: {', '.join(models.MODELS)}")
  for field in ("num_classes", "num_features", "num_rows"):
    if config.dataset in ("synthetic", "sparse_logistic"):
      _positive_int(config, field)
  dataset = load_dataset(config)
  if dataset.num_train < num_devices:
    raise ConfigError("dataset", f"{dataset.num_train} training rows cannot feed {num_devices} devices")
  models.make(config.model, num_features=dataset.num_features, num_classes=dataset.num_classes,
              widths=tuple(config.widths), use_bias=config.use_bias)
  adapter.validate(config, dataset)
  return dataset


def load_dataset(config) -> data.Dataset:
  return data.load(config.dataset, seed=config.seed, test_fraction=config.test_fraction,
                   num_classes=config.num_classes, num_features=config.num_features,
                   num_rows=config.num_rows)


# ----------------------------------------------------------------------------- building
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

  def key(self, step: int) -> jax.Array:
    return jax.random.fold_in(jax.random.key(self.config.seed), step)

  def compile(self):
    return self.step_fn.lower(self.params, self.opt_state, self.shard, self.key(0)).compile()

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
  model = models.make(config.model, num_features=dataset.num_features, num_classes=dataset.num_classes,
                      widths=tuple(config.widths), use_bias=config.use_bias)
  float_dtype = np.float64 if config.x64 else np.float32
  init_key, state_key = jax.random.split(jax.random.key(config.seed))
  params = _to_dtype(jax.device_get(model.init(init_key)), float_dtype)
  ctx = BuildContext(model=model, dataset=dataset, params=params, num_devices=num_devices,
                     batch_per_device=config.batch_size // num_devices, axis_name=AXIS)
  adapter = algos.get(config.algorithm)
  method = adapter.build(config, ctx)
  partition = (adapter.partition_rows(config, dataset.num_train, num_devices)
               if hasattr(adapter, "partition_rows") else None)
  host_shard = data.shard_rows(dataset.x_train.astype(float_dtype), dataset.y_train, num_devices, partition)
  shard = jax.tree.map(lambda x: mesh_lib.put(x, mesh, jax.P(AXIS)), host_shard)
  opt_state = jax.device_get(method.init_state(params, state_key))
  specs = (method.state_specs or replicated_specs)(opt_state)
  opt_state = mesh_lib.put_tree(opt_state, mesh, specs)
  params = mesh_lib.put_tree(params, mesh, replicated_specs(params))

  def local_step(params, opt_state, shard, key):
    params, opt_state, metrics = method.local_step(params, opt_state, shard, key)
    metrics = dict(metrics, param_norm=optax.tree.norm(params))
    return params, opt_state, metrics

  step_fn = jax.jit(
      jax.shard_map(local_step, mesh=mesh, in_specs=(jax.P(), specs, jax.P(AXIS), jax.P()),
                    out_specs=(jax.P(), specs, jax.P())),
      donate_argnums=(0, 1))
  return Experiment(config, mesh, dataset, model, method, shard, params, opt_state, specs, step_fn)


def evaluate(exp: Experiment, params) -> dict:
  """Test loss and accuracy, train loss and accuracy, on the full splits."""
  results = {}
  for split, x, y in (("train", exp.dataset.x_train, exp.dataset.y_train),
                      ("test", exp.dataset.x_test, exp.dataset.y_test)):
    xg = mesh_lib.put(x.astype(jax.tree.leaves(params)[0].dtype), exp.mesh, jax.P())
    yg = mesh_lib.put(y, exp.mesh, jax.P())
    loss, acc = _eval_fn(exp.model)(params, xg, yg)
    results[f"{split}_loss"] = float(mesh_lib.fetch(loss))
    results[f"{split}_accuracy"] = float(mesh_lib.fetch(acc))
  return results


_EVAL_CACHE: dict = {}


def _eval_fn(model):
  if model not in _EVAL_CACHE:
    _EVAL_CACHE[model] = jax.jit(lambda p, x, y: (model.loss(p, x, y), model.accuracy(p, x, y)))
  return _EVAL_CACHE[model]


# ----------------------------------------------------------------------------- running
class _Watchdog:
  """Exits the process if no step completes for ``timeout_s`` (a dead peer in multi-process runs)."""

  def __init__(self, timeout_s: float):
    self.timeout_s, self.last = timeout_s, time.monotonic()
    self._stop = threading.Event()
    if timeout_s > 0:
      threading.Thread(target=self._watch, daemon=True).start()

  def beat(self):
    self.last = time.monotonic()

  def stop(self):
    self._stop.set()

  def _watch(self):
    while not self._stop.wait(1.0):
      if time.monotonic() - self.last > self.timeout_s:
        logging.error("no step finished in %.0f s: a peer process is gone or hung; exiting", self.timeout_s)
        logging.flush()
        os._exit(3)


def _write_json(path, obj):
  with open(path, "w") as f:
    json.dump(obj, f, indent=2, sort_keys=True, default=str)


def save_params(path: str, params) -> None:
  """Writes params as a flat ``.npz`` keyed by their tree paths (any process may call it)."""
  flat = {jax.tree_util.keystr(k): mesh_lib.fetch(v) for k, v in jax.tree_util.tree_leaves_with_path(params)}
  np.savez(path, **flat)


def run(config: ml_collections.ConfigDict, workdir: str | None = None, *, quiet: bool = False,
        step_timeout_s: float = 0, stop_after: int | None = None) -> RunResult:
  """Validates, builds and runs ``config``; see the module docstring.

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
  exp = build(config, dataset)
  if workdir and primary:
    os.makedirs(workdir, exist_ok=True)
    _write_json(os.path.join(workdir, "config.json"), config.to_dict())
  writer = MetricWriter(workdir, enabled=primary)
  ckpt = None
  if workdir and config.checkpoint_every:
    from common.checkpoint import Checkpointer
    ckpt = Checkpointer(workdir)

  say = logging.info if primary and not quiet else (lambda *a: None)
  num_devices = exp.mesh.shape[AXIS]
  say("%s | %s | %s on %d %s devices (%d process(es)) | %d params",
      config.algorithm, exp.method.describe or "", config.model, num_devices, jax.default_backend(),
      jax.process_count(), sum(x.size for x in jax.tree.leaves(exp.params)))

  t0 = time.perf_counter()
  compiled = exp.compile()
  compile_s = time.perf_counter() - t0
  report = comm.collective_bytes(compiled)
  say("compiled in %.2f s; measured %s/device/step (wire %s); analytic %s",
      compile_s, human_bytes(report.payload), human_bytes(report.wire),
      human_bytes(exp.method.analytic_payload) if exp.method.analytic_payload is not None else "n/a")
  for note in report.notes:
    say("comm note: %s", note)

  params, opt_state, start = exp.params, exp.opt_state, 0
  if ckpt is not None and ckpt.latest_step() is not None:
    start = ckpt.latest_step()
    restored = ckpt.restore(start, {"params": params, "opt_state": opt_state})
    params, opt_state = restored["params"], restored["opt_state"]
    say("resumed from checkpoint at step %d in %s", start, ckpt.dir)

  history: list[dict] = []
  chrono = Chronometer(config.num_steps)
  watchdog = _Watchdog(step_timeout_s)
  status, last_good = "ok", start
  step = start
  try:
    for step in range(start + 1, config.num_steps + 1):
      params, opt_state, metrics = compiled(params, opt_state, exp.shard, exp.key(step))
      metrics = {k: float(mesh_lib.fetch(v)) for k, v in metrics.items()}  # blocks every step
      watchdog.beat()
      chrono.tick(step)
      if not (np.isfinite(metrics["loss"]) and np.isfinite(metrics["param_norm"])):
        status = "nan"
        raise NonFiniteError(
            f"step {step}: loss={metrics['loss']} param_norm={metrics['param_norm']} is not finite; "
            + (f"stopped. Last good checkpoint: step {last_good} in {ckpt.dir}"
               if ckpt and ckpt.latest_step() is not None else "stopped. No checkpoint was written yet")
            + ". Lower --config.lr or check the data.")
      record = dict(metrics, bytes=report.payload, cum_bytes=report.payload * step)
      if config.eval_every and (step % config.eval_every == 0 or step == config.num_steps):
        record.update(evaluate(exp, params))
      writer.write(step, **record)
      history.append(dict(record, step=step))
      if step % config.log_every == 0 or step == config.num_steps:
        rate = chrono.rate(step)
        extra = "".join(f" {k}={record[k]:.4f}" for k in ("test_accuracy",) if k in record)
        say("step %d/%d loss=%.5f%s | %.1f steps/s, ETA %s | %s/step", step, config.num_steps,
            metrics["loss"], extra, rate, human_time(chrono.eta_s(step)), human_bytes(report.payload))
      if ckpt is not None and (step % config.checkpoint_every == 0 or step == config.num_steps):
        ckpt.save(step, {"params": params, "opt_state": opt_state})
        last_good = step
      if stop_after is not None and step >= stop_after:
        break
  finally:
    watchdog.stop()
    if ckpt is not None:
      ckpt.close()

  final = evaluate(exp, params)
  final.update(step=step, compile_s=compile_s, steps_per_s=chrono.rate(step),
               bytes_per_step=report.payload, wire_bytes_per_step=report.wire,
               analytic_bytes_per_step=exp.method.analytic_payload, num_devices=num_devices,
               num_processes=jax.process_count(), algorithm=config.algorithm, status=status)
  if workdir and primary:
    _write_json(os.path.join(workdir, "summary.json"), final)
    save_params(os.path.join(workdir, "final_params.npz"), params)
  say("done: step %d | train loss %.5f | test loss %.5f | test accuracy %.4f | %s/step | %.1f steps/s",
      step, final["train_loss"], final["test_loss"], final["test_accuracy"],
      human_bytes(report.payload), final["steps_per_s"])
  return RunResult(params, opt_state, step, history, final, report, status)
