"""One comparison across methods and their peers on the digits MLP, all through the harness.

    python -m benchmarks.compare            # full: lr grid per method, 300 steps, writes results/compare*
    python -m benchmarks.compare --quick    # CI-sized: one lr per method, a few steps, --out elsewhere

Every method runs through ``common.train.build`` (same model, data, mesh, step wrapper) at P=8:
dense SGD (momentum) and Adam, sfb (Xie et al., sufficient-factor broadcasting), sign1bit
one_bit_gc (Li & Skoglund 2024) and ef_signsgd (Karimireddy et al. 2019), dho fosi (Sivan et al.
2024) and dho2, PowerSGD (Vogels et al. 2019) and K-FAC through kfac-jax (Martens & Grosse 2015;
``common/algos/kfac.py``: fixed damping λ = 1e-2, momentum 0.9, factor EMA 0.95, inverses every 5
steps). For each run:

  * loss per step: the step's ``loss`` metric (mean minibatch loss over the devices; sign1bit:
    the exact objective F with its l2 term, on full partition gradients);
  * bytes: the compiled step's collective payload per device (``common.comm``), per branch for
    methods with a refresh (``train.measure_branches``), cumulated over the steps;
  * modeled time at 1, 10, 100 Gb/s: ``k * (median measured step time on this machine) +
    Σ_{t<=k} wire_t / bandwidth``, wire = ring-model bytes per device (``common.comm``); a MODEL,
    not a measurement (the measured step time already includes this machine's in-memory
    collectives);
  * peak per-device memory: arguments + outputs + temporaries - aliased, from the compiled step's
    ``memory_analysis()``.

The target (smoothed loss <= TARGET, mean of the last ``SMOOTH`` step losses) is fixed here,
before any run. A method's best learning rate is the one with the lowest final smoothed loss.

``--merge`` (with ``--methods``) rewrites only those methods' rows of an existing ``compare.md``,
keeps the other rows, records the command under the table and leaves the plots alone: for adding
one method without rerunning all of them.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import time

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import jax  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks.notes import RESULTS  # noqa: E402
from common import comm, mesh as mesh_lib, train  # noqa: E402
from configs.common import base_config  # noqa: E402

TARGET = 0.25          # smoothed training loss, chosen before the runs
SMOOTH = 10
BANDWIDTHS_GBIT = (1, 10, 100)
STEPS, QUICK_STEPS = 300, 6


def _dense(optimizer):
  return lambda c: c.update(dict(optimizer=optimizer))


def _algo(**fields):
  def setup(config):
    for key, value in fields.items():
      if key in config.algo:
        config.algo[key] = value
      else:
        config[key] = value
  return setup


# name -> (config.algorithm, setup, lr grid); the first lr is the one --quick runs.
METHODS = {
    "dense_momentum": ("dense", _dense("momentum"), (0.05, 0.1, 0.2)),
    "dense_adam": ("dense", _dense("adam"), (3e-3, 1e-3, 1e-2)),
    "sfb_adam": ("sfb", _algo(optimizer="adam"), (3e-3, 1e-3, 1e-2)),
    "one_bit_gc": ("sign1bit", _algo(optimizer="sgd", scheme="one_bit_gc"), (0.3, 0.1, 1.0)),
    "ef_signsgd": ("sign1bit", _algo(optimizer="sgd", scheme="ef_signsgd"), (0.3, 0.1, 1.0)),
    "fosi": ("dho", _algo(optimizer="momentum", variant="fosi", k=10, m=40, refresh_every=50),
             (0.05, 0.1, 0.2)),
    "dho2": ("dho", _algo(optimizer="momentum", variant="dho2", k=10, m=40, refresh_every=50, warmup=50),
             (0.05, 0.1, 0.2)),
    "powersgd": ("powersgd", _algo(optimizer="momentum", rank=2), (0.05, 0.1, 0.2)),
    "kfac": ("kfac", _algo(momentum=0.9, damping=1e-2), (0.03, 0.01, 0.1)),
}


def method_config(name: str, lr: float, steps: int, widths=(64,)):
  """The digits MLP workload (64-``widths``-10, global batch 128, P=8) for method ``name``."""
  algorithm, setup, _ = METHODS[name]
  config = base_config(algorithm)
  config.update(dict(model="mlp", widths=widths, batch_size=128, num_steps=steps, num_devices=8,
                     eval_every=0, checkpoint_every=0))
  setup(config)
  config.lr = lr
  return config


@dataclasses.dataclass
class Run:
  method: str
  lr: float
  losses: np.ndarray        # per step
  cum_bytes: np.ndarray     # payload per device, cumulative
  cum_wire: np.ndarray      # ring-model wire bytes per device, cumulative
  step_s: float             # median measured step time
  collectives: int
  arrays: int
  peak_bytes: int
  payload_per_step: float

  def smoothed(self) -> np.ndarray:
    kernel = np.ones(SMOOTH) / SMOOTH
    return np.convolve(self.losses, kernel, mode="full")[:len(self.losses)] / np.minimum(
        np.arange(1, len(self.losses) + 1) / SMOOTH, 1.0)

  def modeled_s(self, gbit: float) -> np.ndarray:
    steps = np.arange(1, len(self.losses) + 1)
    return steps * self.step_s + self.cum_wire * 8 / (gbit * 1e9)

  def first_at_target(self) -> int | None:
    hits = np.nonzero(self.smoothed() <= TARGET)[0]
    return int(hits[0]) if hits.size else None


def peak_bytes(compiled) -> int:
  mem = compiled.memory_analysis()
  return int(mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes
             - mem.alias_size_in_bytes)


def run(name: str, lr: float, steps: int, widths=(64,)) -> Run:
  exp = train.build(method_config(name, lr, steps, widths), mesh=mesh_lib.make_mesh(8))
  compiled = exp.compile()
  report = comm.collective_bytes(compiled)
  sent = train.measure_branches(exp.method, compiled, report)
  wire_ratio = report.wire / report.payload if report.payload else 0.0
  params, state, losses, times = exp.params, exp.opt_state, [], []
  for step in range(1, steps + 1):
    start = time.perf_counter()
    params, state, metrics = compiled(params, state, exp.shard, exp.key(step))
    losses.append(float(mesh_lib.fetch(metrics["loss"])))      # blocks every step
    times.append(time.perf_counter() - start)
  payload = np.array([sent.of(t) for t in range(1, steps + 1)])
  return Run(name, lr, np.array(losses), np.cumsum(payload), np.cumsum(payload * wire_ratio),
             float(np.median(times[1:] if steps > 1 else times)), report.count, report.arrays,
             peak_bytes(compiled), float(payload.mean()))


def best(runs: list[Run]) -> Run:
  """Lowest final smoothed loss (non-finite losses lose)."""
  return min(runs, key=lambda r: r.smoothed()[-1] if np.isfinite(r.smoothed()[-1]) else np.inf)


def _fmt_s(seconds):
  return "-" if seconds is None else f"{seconds:.3g}"


def table(best_runs: list[Run], grids: dict, command: str) -> str:
  lines = [
      "### Methods and peers on the digits MLP (64-64-10, global batch 128, P=8)",
      "",
      f"Command: `{command}` on {jax.default_backend()} ({os.cpu_count()} cores; the 8 devices are simulated and "
      f"share them). Target: smoothed training loss <= {TARGET} (mean of the last {SMOOTH} step losses), fixed before "
      "the runs. Best lr = lowest final smoothed loss over the grid. Bytes: collective payload per device from the "
      "compiled step (per branch for fosi/dho2/kfac). Modeled time = steps x median measured step time on this machine + "
      "cumulative ring-model wire bytes / bandwidth: a model, not a measurement. Peak memory: arguments + outputs + "
      "temporaries - aliased of the compiled step, per device. sign1bit's loss is its exact objective F (full "
      "partition gradients, l2 = 1e-3).",
      "",
      "| method | lr grid | best lr | final loss | step (ms) | B/step | collectives / arrays | peak mem (KiB) | "
      "steps to target | bytes to target | modeled s @1 / 10 / 100 Gb/s to target |",
      "|---|---|---|---|---|---|---|---|---|---|---|",
  ]
  for r in best_runs:
    k = r.first_at_target()
    to_bytes = "-" if k is None else f"{r.cum_bytes[k]:,.0f}"
    modeled = " / ".join(_fmt_s(None if k is None else r.modeled_s(g)[k]) for g in BANDWIDTHS_GBIT)
    lines.append(f"| {r.method} | {', '.join(f'{x:g}' for x in grids[r.method])} | {r.lr:g} | "
                 f"{r.smoothed()[-1]:.4f} | {1e3 * r.step_s:.2f} | {r.payload_per_step:,.0f} | "
                 f"{r.collectives} / {r.arrays} | {r.peak_bytes / 1024:,.0f} | {'-' if k is None else k + 1} | "
                 f"{to_bytes} | {modeled} |")
  return "\n".join(lines)


def merge(old: str, new: str, command: str) -> str:
  """``old`` (a ``table`` output, maybe merged before) with the method rows of ``new`` put in: a
  method's row is replaced where it exists, appended otherwise; ``command`` is noted below."""
  rows = {line.split("|")[1].strip(): line for line in new.splitlines() if line.startswith("| ") and
          not line.startswith("| method |")}
  lines, seen = [], set()
  for line in old.rstrip("\n").splitlines():
    name = line.split("|")[1].strip() if line.startswith("| ") else None
    if name in rows:
      seen.add(name)
    lines.append(rows.get(name, line))
  last_row = max(i for i, line in enumerate(lines) if line.startswith("|"))
  lines[last_row + 1:last_row + 1] = [rows[m] for m in rows if m not in seen]
  lines.append("")
  lines.append(f"Rows {', '.join(rows)}: `{command}` (merged into the table above; the plots do not show them).")
  return "\n".join(lines)


def plots(best_runs: list[Run], out_dir: str) -> list[str]:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  paths = []
  panels = [("steps", "step", lambda r: np.arange(1, len(r.losses) + 1), "linear"),
            ("bytes", "cumulative bytes sent per device", lambda r: r.cum_bytes, "log")]
  panels += [(f"time_{g}gbit", f"modeled time at {g} Gb/s (s; model)", lambda r, g=g: r.modeled_s(g), "log")
             for g in BANDWIDTHS_GBIT]
  for tag, xlabel, xs, scale in panels:
    fig, ax = plt.subplots(figsize=(6, 4))
    for r in best_runs:
      ax.plot(np.maximum(xs(r), 1e-12), r.smoothed(), label=f"{r.method} (lr {r.lr:g})")
    ax.axhline(TARGET, color="gray", ls=":", lw=1)
    ax.set_xscale(scale)
    ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(f"training loss (mean of last {SMOOTH} steps)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = os.path.join(out_dir, f"compare_{tag}.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    paths.append(path)
  return paths


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="one lr per method, a few steps (CI)")
  parser.add_argument("--steps", type=int, default=None)
  parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset of " + ", ".join(METHODS))
  parser.add_argument("--out", default=RESULTS, help="directory for compare.md and compare_*.png")
  parser.add_argument("--merge", action="store_true",
                      help="replace only these methods' rows of the existing compare.md; plots untouched")
  args = parser.parse_args(argv)
  names = [m.strip() for m in args.methods.split(",") if m.strip()]
  unknown = [m for m in names if m not in METHODS]
  if unknown:
    parser.error(f"--methods: unknown {', '.join(unknown)}; allowed: {', '.join(METHODS)}")
  if args.merge and not os.path.exists(os.path.join(args.out, "compare.md")):
    parser.error(f"--merge: no {os.path.join(args.out, 'compare.md')} to merge into; run without --merge first")
  steps = args.steps or (QUICK_STEPS if args.quick else STEPS)
  widths = (16,) if args.quick else (64,)
  grids = {m: METHODS[m][2][:1] if args.quick else METHODS[m][2] for m in names}
  best_runs = []
  for name in names:
    runs = [run(name, lr, steps, widths) for lr in grids[name]]
    for r in runs:
      print(f"{name} lr={r.lr:g}: final loss {r.smoothed()[-1]:.4f}, {1e3 * r.step_s:.2f} ms/step, "
            f"{r.payload_per_step:,.0f} B/step", flush=True)
    best_runs.append(best(runs))
  os.makedirs(args.out, exist_ok=True)
  command = "python -m benchmarks.compare" + (" --quick" if args.quick else "") + (
      f" --steps {args.steps}" if args.steps else "")
  md = os.path.join(args.out, "compare.md")
  text = table(best_runs, grids, command)
  if args.merge:
    with open(md) as f:
      text = merge(f.read(), text, f"{command} --methods {','.join(names)} --merge")
  with open(md, "w") as f:
    f.write(text + "\n")
  print("wrote", md, *([] if args.merge else plots(best_runs, args.out)))
  return best_runs


if __name__ == "__main__":
  main()
