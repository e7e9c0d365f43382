"""``config.runtime == "ray"``: the launcher's entry to the asynchronous parameter server (issue 16).

``check(config)`` validates the fields without JAX or Ray (one-line ConfigError naming the field);
``run(config, workdir)`` trains and writes the workdir like the SPMD harness: config.json,
metrics.jsonl (one line per epoch: loss, relative gap to the sklearn optimum, wall time, server
version, delay mean/max/histogram, refused reads, uplink/downlink bytes, cum_bytes, live workers),
updates.npz (every server update's worker, true delay, server time and service time),
checkpoints/<epoch>/params.npz, final_params.npz and summary.json. A rerun starts afresh (no resume).
"""
from __future__ import annotations

import json
import os
import sys
from typing import NamedTuple

import numpy as np

from common.async_ray import problems as problems_lib
from common.errors import EXIT_CONFIG, EXIT_OK, EXIT_PEER, ConfigError

VARIANTS = ("dap", "tap")


def _is_int(v) -> bool:
  return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _is_number(v) -> bool:
  return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) and np.isfinite(v)


def check(config, num_processes: int = 1) -> None:
  """Raises ConfigError for the first bad field of a Ray-runtime config."""
  if num_processes != 1:
    raise ConfigError("runtime", "the Ray runtime runs from one driver process; drop --num_processes")
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


def spec_from_config(config):
  from common.async_ray.ps import Spec
  return Spec(problem=config.problem, variant=config.variant, num_workers=config.num_workers,
              max_delay=config.max_delay, lr=float(config.lr), relaxation=float(config.relaxation),
              batch_size=config.batch_size, epochs=config.num_steps, updates_per_epoch=config.updates_per_epoch,
              seed=config.seed, x64=config.x64, epoch_timeout_s=float(config.epoch_timeout_s),
              kill_worker=config.kill_worker, kill_at_version=config.kill_at_version,
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


def run(config, workdir: str, quiet: bool = False) -> Result:
  """Trains ``config`` on Ray and writes ``workdir`` (module docstring)."""
  from common.async_ray import ps
  from common.metrics import MetricWriter
  check(config)
  os.makedirs(os.path.join(workdir, "checkpoints"), exist_ok=True)
  with open(os.path.join(workdir, "config.json"), "w") as f:
    json.dump(config.to_dict(), f, indent=1, default=str)
  metrics_path = os.path.join(workdir, "metrics.jsonl")
  if os.path.exists(metrics_path):
    os.remove(metrics_path)   # no resume: a rerun starts afresh
  writer = MetricWriter(workdir)
  traces = []
  say = (lambda line: None) if quiet else (lambda line: print(line, flush=True))

  def on_epoch(record):
    trace = record.pop("_trace")
    traces.append(trace)
    writer.write(**record)
    ckpt = os.path.join(workdir, "checkpoints", str(record["step"]))
    os.makedirs(ckpt, exist_ok=True)
    np.savez(os.path.join(ckpt, "params.npz"), w=trace["x"])
    if record["step"] % config.log_every == 0 or record["step"] == config.num_steps:
      _progress(record, config.num_steps, say)

  out = ps.run(spec_from_config(config), on_epoch=on_epoch, log=say)
  np.savez(os.path.join(workdir, "final_params.npz"), w=out["x"])
  _save_updates(workdir, traces)
  last = out["records"][-1]
  final = {"loss": last["loss"], "gap": last["gap"], "p_star": out["p_star"], "wall_time": last["wall_time"],
           "version": last["version"], "lost_workers": out["lost"],
           "updates_per_s": float(np.mean([r["updates_per_s"] for r in out["records"]]))}
  with open(os.path.join(workdir, "summary.json"), "w") as f:
    json.dump(final, f, indent=1)
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
  except ConfigError as e:
    sys.stderr.write(f"error: {e}\n")
    return EXIT_CONFIG
  except (ps.ServerLost, TimeoutError, RuntimeError) as e:
    sys.stderr.write(f"error: {e}\n")
    return EXIT_PEER
  return EXIT_OK
