"""``config.runtime == "ray"``: the launcher's entry to the Ray runtimes of issue 16.

``config.algorithm == "sign1bit"`` (configs/async_sign1bit.py) runs 1-bit gradient coding with real
stragglers (``gc.py``; ``_run_gc``); otherwise the asynchronous DAP/TAP-SVRG parameter server
(configs/async_dap_svrg.py). Both start a private local Ray node on loopback, or join
``ray_address`` (``ps.start_ray``; unreachable: one line naming ray_address, exit 2).

``check(config)`` validates the fields without JAX or Ray (one-line ConfigError naming the field);
``run(config, workdir)`` trains and writes the workdir like the SPMD harness: config.json,
metrics.jsonl (one line per epoch: loss, relative gap to the sklearn optimum, wall time, server
version, delay mean/max/histogram, refused reads, uplink/downlink bytes, cum_bytes, live workers),
updates.npz (every server update's worker, true delay, server time and service time),
checkpoints/<epoch>/params.npz, final_params.npz and summary.json (updates.npz: the epochs run by the
latest invocation).
The gradient-coding run writes one metrics line per step (loss F(w), wall_time, step_s, active |R_t|,
arrived and live workers, uplink_bits, bits_per_step, cum_bytes, clipped), checkpoints every
checkpoint_every steps and at the end, and summary.json with time_to_target when target_loss > 0.
Rerun on the same workdir, either run resumes as the SPMD harness does: the config must equal the stored
one except ``fields.RESUMABLE`` (``fields.check_resume``), metrics.jsonl is cut back to the latest
checkpoint's step (epoch for DAP/TAP; one line per step after any number of kills) and the run
continues from it (DAP/TAP: from its x and server version, with fresh minibatch streams).
A lost server is one line naming it and the last checkpoint kept (exit 4).
"""
from __future__ import annotations

import dataclasses
import json
import os
import sys
from typing import NamedTuple

import numpy as np

from common.async_ray import problems as problems_lib
from common.errors import EXIT_CONFIG, EXIT_OK, EXIT_PEER, ConfigError, FlagError

VARIANTS = ("dap", "tap")


def _is_int(v) -> bool:
  return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _is_number(v) -> bool:
  return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) and np.isfinite(v)


def _is_gc(config) -> bool:
  return config.get("algorithm") == "sign1bit"


def _check_address(config) -> None:
  address = config.get("ray_address")
  if address is not None and (not isinstance(address, str) or not address.strip()):
    raise ConfigError("ray_address", f"must be None (a private local node) or a cluster address such as "
                      f"'127.0.0.1:6379', got {address!r}")


def check(config, num_processes: int = 1) -> None:
  """Raises ConfigError for the first bad field of a Ray-runtime config."""
  if num_processes != 1:
    raise ConfigError("runtime", "the Ray runtime runs from one driver process; drop --num_processes")
  _check_address(config)
  if _is_gc(config):
    return check_gc(config)
  for field, low in (("num_workers", 1), ("max_delay", 0), ("num_steps", 1), ("updates_per_epoch", 1),
                     ("batch_size", 1), ("seed", 0), ("log_every", 1)):
    if not _is_int(config[field]) or config[field] < low:
      raise ConfigError(field, f"must be an integer >= {low}, got {config[field]!r}")
  for field in ("lr", "epoch_timeout_s"):
    if not _is_number(config[field]) or config[field] <= 0:
      raise ConfigError(field, f"must be a finite number > 0 (seconds for epoch_timeout_s), got {config[field]!r}")
  if not _is_number(config.relaxation) or not 0 < config.relaxation <= 1:
    raise ConfigError("relaxation", f"must be in (0, 1] (DAP's server weight theta), got {config.relaxation!r}")
  for field in ("l1", "l2", "lam"):
    if not _is_number(config[field]) or config[field] < 0:
      raise ConfigError(field, f"must be a finite number >= 0, got {config[field]!r}")
  if config.variant not in VARIANTS:
    raise ConfigError("variant", f"unknown variant {config.variant!r}; allowed: {', '.join(VARIANTS)}")
  if config.problem not in problems_lib.PROBLEMS:
    raise ConfigError("problem", f"unknown problem {config.problem!r}; allowed: {', '.join(problems_lib.PROBLEMS)}")
  if not isinstance(config.x64, bool):
    raise ConfigError("x64", f"must be true or false, got {config.x64!r}")
  if not _is_int(config.kill_worker) or not -1 <= config.kill_worker < config.num_workers:
    raise ConfigError("kill_worker", f"must be -1 (none) or a worker id in 0..{config.num_workers - 1}, "
                      f"got {config.kill_worker!r}")
  if not _is_int(config.kill_at_version) or config.kill_at_version < 0:
    raise ConfigError("kill_at_version", f"must be an integer >= 0, got {config.kill_at_version!r}")
  kill_server = config.get("kill_server_at_version", -1)
  if not _is_int(kill_server) or kill_server < -1:
    raise ConfigError("kill_server_at_version", f"must be -1 (never) or an integer >= 0, got {kill_server!r}")


def _int_fields(config, lows) -> None:
  for field, low in lows:
    if not _is_int(config[field]) or config[field] < low:
      raise ConfigError(field, f"must be an integer >= {low}, got {config[field]!r}")


def _one_of(config, field, allowed) -> None:
  if config[field] not in allowed:
    raise ConfigError(field, f"unknown {field} {config[field]!r}; allowed: {', '.join(allowed)}")


def check_gc(config) -> None:
  """The fields of configs/async_sign1bit.py (no JAX, no Ray)."""
  from common.async_ray import gc
  _int_fields(config, (("num_workers", 1), ("redundancy", 1), ("num_stragglers", 0), ("num_steps", 1),
                       ("seed", 0), ("log_every", 1), ("checkpoint_every", 0), ("kill_at_step", 0)))
  for field, allowed in (("method", gc.METHODS), ("wait", gc.WAITS), ("delay", gc.DELAYS),
                         ("allocation", gc.ALLOCATIONS), ("partitions", gc.PARTITIONS)):
    _one_of(config, field, allowed)
  for field in ("lr", "deadline_s", "delay_mean_s", "delay_cap_s", "step_timeout_s", "pareto_shape"):
    if not _is_number(config[field]) or config[field] <= 0:
      raise ConfigError(field, f"must be a finite number > 0, got {config[field]!r}")
  if config.pareto_shape <= 1:
    raise ConfigError("pareto_shape", f"must be > 1 (a finite mean delay), got {config.pareto_shape!r}")
  for field in ("bound", "target_loss"):
    if not _is_number(config[field]) or config[field] < 0:
      raise ConfigError(field, f"must be a finite number >= 0 (0: {'l G / (d (1 - p))' if field == 'bound' else 'none'}), "
                        f"got {config[field]!r}")
  if not _is_number(config.straggler_prob) or not 0 <= config.straggler_prob < 1:
    raise ConfigError("straggler_prob", f"must be in [0, 1) (the decoder's p with wait=deadline), "
                      f"got {config.straggler_prob!r}")
  k = config.num_workers
  if config.method == "dense" and config.wait != "all":
    raise ConfigError("wait", f"method dense waits for every worker: use wait=all, got {config.wait!r}")
  if config.wait == "first" and config.num_stragglers >= k:
    raise ConfigError("num_stragglers", f"must be < num_workers={k} (wait=first decodes the first K - s), "
                      f"got {config.num_stragglers}")
  if config.method not in ("dense", "ignore_stragglers"):
    if config.redundancy > k or (config.allocation == "frc" and k % config.redundancy):
      raise ConfigError("redundancy", f"d={config.redundancy} does not fit allocation {config.allocation} with "
                        f"num_workers={k} (frc needs d to divide K; cyclic needs d <= K)")
  if not _is_int(config.kill_worker) or not -1 <= config.kill_worker < k:
    raise ConfigError("kill_worker", f"must be -1 (none) or a worker id in 0..{k - 1}, got {config.kill_worker!r}")


def gc_spec_from_config(config):
  from common.async_ray import gc
  names = [f.name for f in dataclasses.fields(gc.GCSpec)]
  return gc.GCSpec(**{name: config[name] for name in names})


def spec_from_config(config):
  from common.async_ray.ps import Spec
  return Spec(problem=config.problem, variant=config.variant, num_workers=config.num_workers,
              max_delay=config.max_delay, lr=float(config.lr), relaxation=float(config.relaxation),
              batch_size=config.batch_size, epochs=config.num_steps, updates_per_epoch=config.updates_per_epoch,
              seed=config.seed, x64=config.x64, epoch_timeout_s=float(config.epoch_timeout_s),
              kill_worker=config.kill_worker, kill_at_version=config.kill_at_version,
              kill_server_at_version=config.get("kill_server_at_version", -1),
              l1=float(config.l1), l2=float(config.l2), lam=float(config.lam))


class Result(NamedTuple):
  status: str
  step: int
  final: dict


def _progress(record, num_steps, say):
  gap = "" if record["gap"] is None else f", gap {record['gap']:.3e}"
  say(f"epoch {record['step']}/{num_steps}: loss {record['loss']:.12f}{gap}, {record['wall_time']:.1f} s, "
      f"version {record['version']}, {record['updates_per_s']:.0f} updates/s, delay mean "
      f"{record['delay_mean']:.2f} max {record['delay_max']}, refused {record['refused']}, "
      f"workers {record['workers']}, {record['cum_bytes']} B")


def _prepare_workdir(config, workdir):
  """Writes config.json once ``fields.check_resume`` has accepted the config (a workdir of another
  config: one line naming --workdir, nothing touched); metrics.jsonl and checkpoints are kept."""
  from common import fields
  fields.check_resume(config, workdir)
  os.makedirs(os.path.join(workdir, "checkpoints"), exist_ok=True)
  with open(os.path.join(workdir, "config.json"), "w") as f:
    json.dump(config.to_dict(), f, indent=1, default=str)


def _resume_point(workdir, writer, say, counters) -> dict | None:
  """The latest checkpoint as ``gc.run``'s / ``ps.run``'s ``start`` (None: nothing stored), with the
  ``counters`` of its metrics line; metrics.jsonl cut back to it."""
  from common.metrics import read_metrics
  ckpt = last_checkpoint(workdir)
  if ckpt is None:
    writer.truncate(0)
    return None
  step = int(os.path.basename(ckpt))
  dropped = writer.truncate(step)
  rows = {r["step"]: r for r in read_metrics(workdir)}
  if step not in rows:
    raise ConfigError("workdir", f"{ckpt} has no metrics.jsonl line for step {step}; use a new --workdir")
  with np.load(os.path.join(ckpt, "params.npz")) as f:
    w = f["w"]
  say(f"resumed from checkpoint at step {step} in {ckpt}"
      + (f" (metrics.jsonl: dropped {dropped} line(s) written after it)" if dropped else ""))
  return {"step": step, "w": w, **{k: rows[step][k] for k in counters}}


def _nothing_to_run(start, config, say) -> Result:
  say(f"nothing to run: the latest checkpoint is at step {start['step']} >= num_steps={config.num_steps}")
  return Result("ok", start["step"], {"steps": start["step"]})


def _save_params(workdir, step, w):
  ckpt = os.path.join(workdir, "checkpoints", str(step))
  os.makedirs(ckpt, exist_ok=True)
  np.savez(os.path.join(ckpt, "params.npz"), w=w)


def _write_summary(workdir, final):
  with open(os.path.join(workdir, "summary.json"), "w") as f:
    json.dump(final, f, indent=1)


def last_checkpoint(workdir: str) -> str | None:
  """The newest ``checkpoints/<step>`` directory of ``workdir``, or None."""
  root = os.path.join(workdir, "checkpoints")
  steps = [int(d) for d in os.listdir(root) if d.isdigit()] if os.path.isdir(root) else []
  return os.path.join(root, str(max(steps))) if steps else None


def run(config, workdir: str, quiet: bool = False) -> Result:
  """Trains ``config`` on Ray and writes ``workdir`` (module docstring); starts and stops Ray
  unless it is already running (``ray_address`` None: a private local node on loopback)."""
  import ray
  from common.async_ray import ps
  check(config)
  _prepare_workdir(config, workdir)
  say = (lambda line: None) if quiet else (lambda line: print(line, flush=True))
  started = ps.start_ray(config.num_workers + 1, config.get("ray_address"))
  try:
    return (_run_gc if _is_gc(config) else _run_ps)(config, workdir, say)
  finally:
    if started:
      ray.shutdown()


def _run_ps(config, workdir, say) -> Result:
  from common.async_ray import ps
  from common.metrics import MetricWriter
  writer = MetricWriter(workdir)
  traces = []
  start = _resume_point(workdir, writer, say, ("wall_time", "cum_bytes", "version"))
  if start is not None and start["step"] >= config.num_steps:
    return _nothing_to_run(start, config, say)

  def on_epoch(record):
    trace = record.pop("_trace")
    traces.append(trace)
    writer.write(**record)
    _save_params(workdir, record["step"], trace["x"])
    if record["step"] % config.log_every == 0 or record["step"] == config.num_steps:
      _progress(record, config.num_steps, say)

  out = ps.run(spec_from_config(config), on_epoch=on_epoch, log=say, start=start)
  np.savez(os.path.join(workdir, "final_params.npz"), w=out["x"])
  _save_updates(workdir, traces)
  last = out["records"][-1]
  final = {"loss": last["loss"], "gap": last["gap"], "p_star": out["p_star"], "wall_time": last["wall_time"],
           "version": last["version"], "lost_workers": out["lost"],
           "updates_per_s": float(np.mean([r["updates_per_s"] for r in out["records"]]))}
  _write_summary(workdir, final)
  return Result("ok", last["step"], final)


def _run_gc(config, workdir, say) -> Result:
  """1-bit GC / baselines with real stragglers: metrics.jsonl one line per step (gc.run's records)."""
  from common.async_ray import gc
  from common.metrics import MetricWriter, read_metrics
  writer = MetricWriter(workdir)
  spec = gc_spec_from_config(config)
  start = _resume_point(workdir, writer, say, ("wall_time", "uplink_bits", "cum_bytes"))
  if start is not None and start["step"] >= config.num_steps:
    return _nothing_to_run(start, config, say)

  def on_step(record, w):
    writer.write(**record)
    step = record["step"]
    if config.checkpoint_every and step % config.checkpoint_every == 0:
      _save_params(workdir, step, w)
    if step % config.log_every == 0 or step == config.num_steps or step == 1:
      say(f"step {step}/{config.num_steps}: loss {record['loss']:.4f}, {record['wall_time']:.2f} s, "
          f"active {record['active']} {record['arrived']}, uplink {record['uplink_bits'] / 1e6:.3f} Mbit, "
          f"live {record['live']}")

  out = gc.run(spec, on_step=on_step, log=say, start=start)
  np.savez(os.path.join(workdir, "final_params.npz"), w=out["w"])
  last = out["records"][-1]
  _save_params(workdir, last["step"], out["w"])   # the final checkpoint, as the SPMD harness writes it
  rows = read_metrics(workdir)   # every step, the resumed-from run's too
  ttt, ttt_step = gc.time_to_target(rows, config.target_loss) if config.target_loss else (None, None)
  final = {"loss": last["loss"], "test_accuracy": out["test_accuracy"], "wall_time": last["wall_time"],
           "steps": last["step"], "uplink_bits": last["uplink_bits"], "startup_s": out["startup_s"],
           "time_to_target": ttt, "steps_to_target": ttt_step, "lost_workers": out["lost"]}
  _write_summary(workdir, final)
  return Result("ok", last["step"], final)


def _save_updates(workdir, traces):
  cat = lambda key: np.concatenate([t[key] for t in traces]) if traces else np.zeros(0)  # noqa: E731
  np.savez(os.path.join(workdir, "updates.npz"), worker=cat("worker"), delay=cat("delay"), time=cat("time"),
           service=cat("service"))


def main(config, workdir: str) -> int:
  """Launcher entry: exit code; a lost server, a hung epoch or all workers lost is one line on stderr."""
  from common.async_ray import ps
  try:
    run(config, workdir)
  except (ConfigError, FlagError) as e:
    sys.stderr.write(f"error: {e}\n")
    return EXIT_CONFIG
  except ps.ServerLost as e:
    kept = last_checkpoint(workdir)
    sys.stderr.write(f"error: {e}; last checkpoint kept: {kept or 'none written yet'}\n")
    return EXIT_PEER
  except (TimeoutError, RuntimeError) as e:
    sys.stderr.write(f"error: {e}\n")
    return EXIT_PEER
  return EXIT_OK
