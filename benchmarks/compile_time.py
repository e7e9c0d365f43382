"""Compile time of each program of a config's step, split into lowering and XLA compilation (issue 14).

    python -m benchmarks.compile_time transformer_text:dense
    python -m benchmarks.compile_time transformer_text:dense --xla_flags=--xla_backend_optimization_level=0
    python -m benchmarks.compile_time transformer_text:dense --set num_layers=5 --set d_model=128
    python -m benchmarks.compile_time transformer_text:dho2 --set algo.k=0   # no refresh program
    python -m benchmarks.compile_time --real_models --write                  # every arg of both models

Prints process CPU seconds (less sensitive to other jobs on the host than wall seconds) and wall
seconds for ``lower`` and ``compile`` of each program (fosi / dho2: the step and the separate
curvature refresh's one-iteration and finish programs, ``dho.separate_refresh``), then the median of ``--timed`` blocking steps, on 8
simulated CPU devices. Each config is measured in its own process (nothing cached from the one
before). ``--write`` puts the table in ``benchmarks/results/compile_time.md``.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

REAL_MODELS = ("cnn_digits", "transformer_text")
TARGET_S = 10.0      # issue 14: lowering + compilation of each program under 10 s on this machine


def measure(spec: str, sets, timed: int) -> dict:
  """Lowers and compiles every program of ``spec`` (``<config>[:<arg>]``), then times ``timed`` steps."""
  import jax
  import numpy as np
  from common import cli, train

  name, _, arg = spec.partition(":")
  config = cli.load_config(os.path.join("configs", f"{name}.py") + (f":{arg}" if arg else ""))
  cli.apply_overrides(config, [tuple(item.split("=", 1)) for item in sets], say=lambda *a: None)
  exp = train.build(config)
  _, compiled, programs = exp.compile_timed()
  for part, program in compiled.parts.items():   # XLA:CPU compiles one kernel per fusion
    programs[part]["fusions"] = program.as_text().count(" fusion(")
  times, _ = exp.time_steps(compiled, timed)
  return dict(config=spec, params=int(sum(x.size for x in jax.tree.leaves(exp.params))), programs=programs,
              step_ms=float(np.median(times[1:] or times)) * 1e3, load=os.getloadavg()[0])


def line(r: dict, xla_flags: str) -> str:
  parts = "; ".join(f"{part}: lower {p['lower_cpu']:.1f} CPU-s ({p['lower']:.1f} s wall), compile "
                    f"{p['compile_cpu']:.1f} CPU-s ({p['compile']:.1f} s wall), total {p['lower'] + p['compile']:.1f} s wall, "
                    f"{p['fusions']} fusions"
                    for part, p in r["programs"].items())
  return (f"{r['config']} [{xla_flags or 'default flags'}] {r['params']:,} params: {parts}; step median "
          f"{r['step_ms']:.0f} ms; load average {r['load']:.1f}")


def table(rows, cmd: str, load_before: float, seconds: float) -> str:
  worst = max(p["lower"] + p["compile"] for r in rows for p in r["programs"].values())
  over = [f"{r['config']} {part}" for r in rows for part, p in r["programs"].items()
          if p["lower"] + p["compile"] >= TARGET_S]
  lines = ["### Compile time per program (issue 14)", "",
           f"Command: `{cmd}` on cpu ({os.cpu_count()} cores; 8 simulated devices), {seconds:.0f} s, one process per "
           f"config; 1-min load average {load_before:.1f} before, {rows[-1]['load']:.1f} after. Per program: lowering "
           "(tracing to StableHLO) and XLA compilation, wall seconds, with the process CPU seconds in parentheses (XLA "
           "compiles kernels on both cores, so CPU-s exceed wall). fosi and dho2 compile three programs: the step "
           "(`update(..., refresh=False)`) and the curvature refresh's (`dho.separate_refresh`): `refresh_iterate`, one "
           "Lanczos iteration (one Hessian-vector product), which the harness runs m times before the step on refresh "
           "steps, then `refresh_finish`, the Ritz pairs into the state. Step: median of the timed blocking steps "
           "(refresh steps included when "
           f"due). Target: under {TARGET_S:.0f} s per program; largest here {worst:.1f} s"
           + (f"; at or over it: {', '.join(over)}." if over else "; every program is under it."), "",
           "| config | params | program | lower (s) | compile (s) | total (s) | step (ms) |", "|---|---|---|---|---|---|---|"]
  for r in rows:
    for part, p in r["programs"].items():
      lines.append(f"| {r['config']} | {r['params']:,} | {part} | {p['lower']:.1f} ({p['lower_cpu']:.1f}) | "
                   f"{p['compile']:.1f} ({p['compile_cpu']:.1f}) | {p['lower'] + p['compile']:.1f} | {r['step_ms']:.0f} |")
  return "\n".join(lines)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("configs", nargs="*", help="configs/<name>.py[:arg] as <name>[:arg]")
  parser.add_argument("--real_models", action="store_true", help="every arg of cnn_digits and transformer_text")
  parser.add_argument("--xla_flags", default="", help="extra XLA_FLAGS")
  parser.add_argument("--set", action="append", default=[],
                      help="field=value as --config.field=value takes it, e.g. num_layers=2 or algo.k=0")
  parser.add_argument("--timed", type=int, default=6)
  parser.add_argument("--write", action="store_true", help="write benchmarks/results/compile_time.md")
  parser.add_argument("--json", action="store_true", help=argparse.SUPPRESS)   # one config, result as JSON
  flags = parser.parse_args(argv)
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count=8 {flags.xla_flags}".strip()
  if flags.json:
    print(json.dumps(measure(flags.configs[0], flags.set, flags.timed)))
    return 0
  specs = list(flags.configs)
  if flags.real_models:
    from configs.cnn_digits import ARGS
    specs += [f"{name}:{arg}" for name in REAL_MODELS for arg in ARGS]
  if not specs:
    parser.error("name a config or pass --real_models")
  load_before, t0, rows = os.getloadavg()[0], time.perf_counter(), []
  for spec in specs:   # a fresh process per config: nothing compiled or cached by the previous one
    cmd = [sys.executable, "-m", "benchmarks.compile_time", spec, "--json", "--timed", str(flags.timed),
           "--xla_flags", flags.xla_flags] + [f"--set={s}" for s in flags.set]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    rows.append(json.loads(out.strip().splitlines()[-1]))
    print(line(rows[-1], flags.xla_flags), flush=True)
  if flags.write:
    from benchmarks.notes import write_result
    argv_shown = " ".join(argv if argv is not None else sys.argv[1:])
    print(write_result("compile_time", table(rows, f"python -m benchmarks.compile_time {argv_shown}", load_before,
                                             time.perf_counter() - t0)))
  return 0


if __name__ == "__main__":
  sys.exit(main())
