"""Dense baseline on the digits MLP at 1, 2, 4, 8 devices: compile time, step time, bytes, and
at 8 devices the former leaf-by-leaf all-reduce next to the bucketed one (``common.baseline``).

    python -m benchmarks.baseline_scaling [--steps 300]

On CPU the devices are simulated and share the machine's cores, so step time grows with the
device count: those numbers describe this harness, not a cluster. Bytes are exact.
"""
from __future__ import annotations

import argparse
import functools
import os
import time
from unittest import mock

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import jax  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks.notes import write_result  # noqa: E402
from common import baseline, comm, mesh as mesh_lib, train  # noqa: E402
from configs.common import base_config  # noqa: E402


def measure(num_devices: int, steps: int, widths=(256, 256), bucketed: bool = True) -> dict:
  config = base_config("dense")
  config.update(dict(model="mlp", widths=widths, optimizer="adam", lr=1e-3, batch_size=256,
                     num_devices=num_devices, num_steps=steps))
  dense_tx = functools.partial(baseline.dense_data_parallel, bucketed=bucketed)
  with mock.patch.object(baseline, "dense_data_parallel", dense_tx):   # the adapter's all-reduce form
    exp = train.build(config, mesh=mesh_lib.make_mesh(num_devices))
  t0 = time.perf_counter()
  lowered = exp.step_fn.lower(exp.params, exp.opt_state, exp.shard, exp.key(0))
  t1 = time.perf_counter()
  compiled = lowered.compile()
  t2 = time.perf_counter()
  report = comm.collective_bytes(compiled)
  n_params = sum(x.size for x in jax.tree.leaves(exp.params))
  times, _ = exp.time_steps(compiled, steps)
  return dict(devices=f"{num_devices}" if bucketed else f"{num_devices} (leaf-wise)", lower_s=t1 - t0,
              compile_s=t2 - t1, count=report.count, arrays=report.arrays,
              step_ms=1e3 * float(np.median(times[10:])), payload=report.payload, wire=report.wire,
              analytic=exp.method.analytic_payload, params=n_params)


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--steps", type=int, default=300)
  args = parser.parse_args()
  rows = []
  for n, bucketed in ((1, True), (2, True), (4, True), (8, True), (8, False)):
    r = measure(n, args.steps, bucketed=bucketed)
    rows.append(r)
    print(f"{r['devices']} devices: compile {r['compile_s']:.2f} s, step {r['step_ms']:.2f} ms, "
          f"measured {r['payload']:.0f} B vs analytic {r['analytic']:.0f} B (+4 B loss metric)", flush=True)
  lines = [
      "### Dense baseline scaling (digits, MLP 64-256-256-10, Adam, global batch 256)",
      "",
      f"Command: `python -m benchmarks.baseline_scaling --steps {args.steps}` on {jax.default_backend()} "
      f"({os.cpu_count()} cores; simulated devices share them). Step time is the median over steps 10..{args.steps}, "
      "blocking every step. Measured = collective payload per device per step from the compiled program "
      "(the gradient all-reduce plus the 4-byte loss pmean XLA fuses into it); analytic = 4 B x "
      f"{rows[0]['params']:,} params. Collectives: all-reduce instructions per step / arrays they carry "
      "(the gradient is one flattened f32 bucket, `common.baseline.bucketed_pmean`; the leaf-wise row "
      "is the former `lax.pmean` of the gradient tree, a tuple all-reduce of one array per leaf).",
      "",
      "| devices | lower (s) | compile (s) | step (ms) | collectives / arrays | measured payload (B) | analytic (B) | "
      "wire, ring model (B) |",
      "|---|---|---|---|---|---|---|---|",
  ]
  for r in rows:
    lines.append(f"| {r['devices']} | {r['lower_s']:.2f} | {r['compile_s']:.2f} | {r['step_ms']:.2f} | "
                 f"{r['count']} / {r['arrays']} | "
                 f"{r['payload']:,.0f} | {r['analytic']:,.0f} | {r['wire']:,.0f} |")
  print("wrote", write_result("baseline", "\n".join(lines)))


if __name__ == "__main__":
  main()
