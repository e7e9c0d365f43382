"""Compile time of one config's step program, split into lowering and XLA compilation (issue 14).

    python -m benchmarks.compile_time transformer_text:dense
    python -m benchmarks.compile_time transformer_text:dense --xla_flags=--xla_backend_optimization_level=0
    python -m benchmarks.compile_time transformer_text:dense --set num_layers=2 --set d_model=224
    python -m benchmarks.compile_time transformer_text:dho2 --set algo.k=0   # no refresh program

Prints process CPU seconds (less sensitive to other jobs on the host than wall seconds) and wall
seconds for ``lower`` and ``compile`` of each program (fosi / dho2: the step and the separate
curvature refresh, ``dho.separate_refresh``), then the median of ``--timed`` blocking steps, on 8
simulated CPU devices. Prints only; the numbers quoted in BUILD_NOTES came from this command.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("config", help="configs/<name>.py[:arg] as <name>[:arg]")
  parser.add_argument("--xla_flags", default="", help="extra XLA_FLAGS")
  parser.add_argument("--set", action="append", default=[],
                      help="field=JSON value, e.g. num_layers=2 or algo.k=0")
  parser.add_argument("--timed", type=int, default=6)
  flags = parser.parse_args(argv)
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count=8 {flags.xla_flags}".strip()
  import jax
  import numpy as np
  from common import cli, train

  name, _, arg = flags.config.partition(":")
  config = cli.load_config(os.path.join("configs", f"{name}.py") + (f":{arg}" if arg else ""))
  for item in flags.set:   # a dotted field (algo.k=0) sets it in the sub-config
    field, _, value = item.partition("=")
    *path, leaf = field.split(".")
    target = config
    for part in path:
      target = target[part]
    target[leaf] = json.loads(value)
  exp = train.build(config)
  params = sum(x.size for x in jax.tree.leaves(exp.params))
  args, parts, compiled = (exp.params, exp.opt_state, exp.shard, exp.key(0)), [], {}
  for part, fn in (("step", exp.step_fn), ("refresh", exp.refresh_fn)):   # fosi / dho2: two programs
    if fn is None:
      continue
    c0, w0 = time.process_time(), time.perf_counter()
    lowered = fn.lower(*args)
    c1, w1 = time.process_time(), time.perf_counter()
    compiled[part] = lowered.compile()
    c2, w2 = time.process_time(), time.perf_counter()
    parts.append(f"{part}: lower {c1 - c0:.1f} CPU-s ({w1 - w0:.1f} s wall), compile {c2 - c1:.1f} CPU-s "
                 f"({w2 - w1:.1f} s wall), total {w2 - w0:.1f} s wall")
  times, _ = exp.time_steps(train.Program(**compiled, due=exp.method.refresh_due), flags.timed)
  print(f"{flags.config} [{flags.xla_flags or 'default flags'}] {params:,} params: {'; '.join(parts)}; step median "
        f"{np.median(times[1:]) * 1e3:.0f} ms; load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
  sys.exit(main())
