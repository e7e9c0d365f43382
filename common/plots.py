"""Plots of one or more runs: loss vs steps, vs cumulative bytes and, when the runs log
``wall_time`` (the Ray runtimes of issue 16: configs/async_dap_svrg.py, configs/async_sign1bit.py),
vs wall time (headless PNG).

    python -m common.plots runs/a runs/b --out plots/compare.png [--labels A B] [--metric loss]

A missing run directory, a run without ``metrics.jsonl`` or a metric no run logged ends with one
line naming it (exit code 2) instead of an empty plot.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from common.errors import EXIT_CONFIG, FlagError  # noqa: E402
from common.metrics import read_metrics  # noqa: E402


def _label(workdir: str) -> str:
  path = os.path.join(workdir, "config.json")
  if os.path.exists(path):
    with open(path) as f:
      c = json.load(f)
    return f"{c.get('algorithm')} ({os.path.basename(os.path.normpath(workdir))})"
  return os.path.basename(os.path.normpath(workdir))


def panels(rows_per_run) -> list[str]:
  """x axes of the figure: "step", "cum_bytes", and "wall_time" when any run logged it."""
  has_wall = any(r.get("wall_time") is not None for rows in rows_per_run for r in rows)
  return ["step", "cum_bytes"] + (["wall_time"] if has_wall else [])


XLABELS = {"step": "step", "cum_bytes": "cumulative payload per device (MiB)", "wall_time": "wall time (s)"}
SCALE = {"step": 1.0, "cum_bytes": 1.0 / 2**20, "wall_time": 1.0}


def plot_runs(workdirs, out: str, labels=None, metric: str = "loss", logy: bool = True,
              log_bytes: bool = False) -> str:
  """Writes a PNG with one panel per x axis of ``panels`` (metric vs step, vs cumulative payload
  bytes, vs wall time when logged); returns ``out``.

  ``log_bytes`` puts the bytes axis on a log scale (runs whose payloads differ by orders of
  magnitude).
  """
  labels = labels or [_label(w) for w in workdirs]
  runs = [[r for r in read_metrics(w) if r.get(metric) is not None] for w in workdirs]
  xs = panels(runs)
  fig, axes = plt.subplots(1, len(xs), figsize=(5.5 * len(xs), 4))
  for rows, label in zip(runs, labels):
    for ax, x in zip(axes, xs):
      pts = [(r[x] * SCALE[x], r[metric]) for r in rows if r.get(x) is not None]
      if pts:
        ax.plot(*zip(*pts), label=label)
  for ax, x in zip(axes, xs):
    ax.set_xlabel(XLABELS[x])
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)
    if logy:
      ax.set_yscale("log")
  if log_bytes:
    axes[1].set_xscale("log")
  axes[-1].legend(fontsize=8)
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  fig.savefig(out, dpi=110)
  plt.close(fig)
  return out


def check_runs(workdirs, metric: str) -> None:
  """Raises FlagError (one line) for a workdir without metrics or a metric no run logged."""
  for workdir in workdirs:
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.isdir(workdir):
      raise FlagError("workdirs", f"{workdir} is not a directory (give run directories written by launch.py)")
    if not os.path.isfile(path):
      raise FlagError("workdirs", f"{workdir} has no metrics.jsonl (not a launch.py run, or it logged no step yet)")
    logged = sorted({k for row in read_metrics(workdir) for k in row if k not in ("step", "bytes", "cum_bytes")})
    if metric not in logged:
      raise FlagError("metric", f"{metric!r} is not logged in {path}; available: {', '.join(logged) or 'none'}")


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("workdirs", nargs="+")
  parser.add_argument("--out", default="plots/runs.png")
  parser.add_argument("--labels", nargs="*")
  parser.add_argument("--metric", default="loss")
  parser.add_argument("--linear", action="store_true", help="linear y axis")
  args = parser.parse_args(argv)
  try:
    check_runs(args.workdirs, args.metric)
    if args.labels and len(args.labels) != len(args.workdirs):
      raise FlagError("labels", f"{len(args.labels)} labels for {len(args.workdirs)} runs; give one per run")
  except FlagError as e:
    sys.stderr.write(f"error: {e}\n")
    return EXIT_CONFIG
  print(plot_runs(args.workdirs, args.out, args.labels, args.metric, logy=not args.linear))
  return 0


if __name__ == "__main__":
  sys.exit(main())
