"""Step and compile time of configs on the local accelerator (or CPU), one device.

    python -m benchmarks.device_timing --steps 200 configs/default.py configs/sfb_mlr_synthetic.py ...

Each config runs with ``num_devices=1`` (one real device: the collectives are trivial, so this
times the computation each algorithm adds). Writes ``benchmarks/results/gpu.md`` when run on a GPU.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import time

import jax
import numpy as np

from benchmarks.notes import write_result
from common import mesh as mesh_lib, train


def load_config(spec: str):
  path, _, arg = spec.partition(":")
  module = importlib.util.spec_from_file_location("cfg", path)
  mod = importlib.util.module_from_spec(module)
  module.loader.exec_module(mod)
  return mod.get_config(arg or None)


def time_config(spec: str, steps: int) -> dict:
  config = load_config(spec)
  config.num_devices = 1
  config.batch_size = max(config.batch_size // 8, 1) * 8 if config.batch_size >= 8 else config.batch_size
  exp = train.build(config, mesh=mesh_lib.make_mesh(1))
  t0 = time.perf_counter()
  compiled = exp.compile()
  compile_s = time.perf_counter() - t0
  times, metrics = exp.time_steps(compiled, steps)
  loss = metrics["loss"]
  return dict(config=spec, algorithm=config.algorithm, compile_s=compile_s,
              step_ms=1e3 * float(np.median(times[min(10, steps - 1):])), loss=loss, batch=config.batch_size)


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("configs", nargs="+")
  parser.add_argument("--steps", type=int, default=200)
  args = parser.parse_args()
  device = jax.devices()[0]
  rows = []
  for spec in args.configs:
    try:
      r = time_config(spec, args.steps)
    except Exception as e:  # keep timing the others; report the failure in the table
      r = dict(config=spec, algorithm="?", compile_s=float("nan"), step_ms=float("nan"), loss=float("nan"),
               batch=0, error=f"{type(e).__name__}: {str(e)[:120]}")
    rows.append(r)
    print(r, flush=True)
  lines = [f"### Single-device timings on {device.device_kind} ({jax.default_backend()}, jax {jax.__version__})",
           "",
           f"Command: `python -m benchmarks.device_timing --steps {args.steps} {' '.join(args.configs)}`; "
           "each config at num_devices=1 (collectives trivial); step time = median, blocking every step.",
           "",
           "| config | algorithm | global batch | compile (s) | step (ms) | loss after run |",
           "|---|---|---|---|---|---|"]
  for r in rows:
    lines.append(f"| `{r['config']}` | {r['algorithm']} | {r['batch']} | {r['compile_s']:.2f} | "
                 f"{r['step_ms']:.3f} | {r['loss']:.4g} |" + (f" error: {r['error']}" if "error" in r else ""))
  text = "\n".join(lines)
  print(text)
  if jax.default_backend() == "gpu":
    out = os.environ.get("OUT")
    if out:
      with open(os.path.join(out, "gpu.md"), "w") as f:
        f.write(text + "\n")
    write_result("gpu", text)


if __name__ == "__main__":
  main()
