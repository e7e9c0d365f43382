"""SFB vs dense all-reduce on synthetic softmax regression J=1000, D=2000, P=8 (sfb.md E2).

    python -m benchmarks.sfb_sweep [--steps 30] [--train_steps 300]

For rows per device b ∈ {1, 4, 16, 64, 256}: bytes per device per step measured from the compiled
programs (SFB forced with rule "always", dense = the baseline), the choices of the "payload" rule
and of the "time" rule (device flop/s calibrated here, 10 Gb/s links), and the median step time of
each; then a loss-vs-bytes run of both at b = 4. Writes
benchmarks/results/sfb.md and benchmarks/results/sfb_loss_vs_bytes.png.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import jax  # noqa: E402
import numpy as np  # noqa: E402

import sfb  # noqa: E402
from benchmarks.notes import RESULTS, write_result  # noqa: E402
from common import comm, mesh as mesh_lib, plots, train  # noqa: E402
from configs import baseline_synthetic, sfb_mlr_synthetic  # noqa: E402

P = 8
LINK_BYTES_PER_S = 10e9 / 8     # 10 Gb/s, for the modeled network time
ROWS = (1, 4, 16, 64, 256)


def _config(algorithm: str, b: int, steps: int):
  config = sfb_mlr_synthetic.get_config() if algorithm == "sfb" else baseline_synthetic.get_config()
  config.update(dict(batch_size=P * b, num_steps=steps, checkpoint_every=0))
  if algorithm == "sfb":
    config.algo.rule = "always"
  return config


def measure(algorithm: str, b: int, steps: int, mesh, dataset) -> dict:
  exp = train.build(_config(algorithm, b, steps), dataset=dataset, mesh=mesh)
  compiled = exp.compile()
  report = comm.collective_bytes(compiled)
  times, _ = exp.time_steps(compiled, steps)
  return dict(payload=report.payload, wire=report.wire, gathered=sum(
      c.elements * c.count * 4 for c in report.of_kind("all-gather")),
              step_ms=1e3 * float(np.median(times[3:])), analytic=exp.method.analytic_payload)


def calibrate_flops(mesh, b: int = 64, reps: int = 10) -> float:
  """Per-device flop/s of SFB's reconstruction U^T V ([P·b, J]^T [P·b, D]), all devices at once
  (simulated devices share the host's cores, as in the step timings)."""
  put = lambda x: jax.device_put(x, jax.sharding.NamedSharding(mesh, jax.P("data")))  # noqa: E731
  u, v = put(np.ones((P, P * b, 1000), np.float32)), put(np.ones((P, P * b, 2000), np.float32))
  f = jax.jit(jax.shard_map(lambda u, v: (u[0].T @ v[0])[None], mesh=mesh, in_specs=(jax.P("data"),) * 2,
                            out_specs=jax.P("data")))
  f(u, v).block_until_ready()
  times = []
  for _ in range(reps):
    t0 = time.perf_counter()
    f(u, v).block_until_ready()
    times.append(time.perf_counter() - t0)
  return 2 * P * b * 1000 * 2000 / float(np.median(times))


def _modeled(r: dict) -> float:
  return r["step_ms"] + 1e3 * r["wire"] / LINK_BYTES_PER_S


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--steps", type=int, default=30)
  parser.add_argument("--train_steps", type=int, default=300)
  args = parser.parse_args()
  mesh = mesh_lib.make_mesh(P)
  dataset = train.load_dataset(_config("dense", 1, 1))
  flops = calibrate_flops(mesh)
  cost = sfb.CostModel(flops_per_s=flops, link_bytes_per_s=LINK_BYTES_PER_S)
  print(f"calibrated {flops / 1e9:.1f} GFLOP/s per simulated device", flush=True)
  rows = []
  for b in ROWS:
    s, d = measure("sfb", b, args.steps, mesh, dataset), measure("dense", b, args.steps, mesh, dataset)
    chosen = sfb.choose_sfb(2000, 1000, b, P, "payload")
    by_time = sfb.choose_sfb(2000, 1000, b, P, "time", cost=cost)
    rows.append((b, s, d, chosen, by_time))
    print(f"b={b}: SFB {s['payload']:,.0f} B sent / {s['gathered']:,.0f} B gathered, {s['step_ms']:.1f} ms; "
          f"dense {d['payload']:,.0f} B, {d['step_ms']:.1f} ms; payload rule picks {'SFB' if chosen else 'dense'}, "
          f"time rule {'SFB' if by_time else 'dense'}", flush=True)

  workdirs = []
  for algorithm in ("sfb", "dense"):
    workdir = tempfile.mkdtemp(prefix=f"sfb_sweep_{algorithm}_")
    config = _config(algorithm, 4, args.train_steps)
    config.update(dict(log_every=10, eval_every=0))
    train.run(config, workdir, quiet=True)
    workdirs.append(workdir)
  png = plots.plot_runs(workdirs, os.path.join(RESULTS, "sfb_loss_vs_bytes.png"),
                        labels=["SFB (b=4)", "dense all-reduce (b=4)"], log_bytes=True)

  lines = [
      "### SFB vs dense: synthetic softmax regression J=1000, D=2000, P=8",
      "",
      f"Command: `python -m benchmarks.sfb_sweep --steps {args.steps} --train_steps {args.train_steps}` on "
      f"{jax.default_backend()} ({os.cpu_count()} cores; 8 simulated devices share them). Bytes per device per "
      "step from the compiled programs: *sent* is each device's contribution (what `common.comm` calls payload; "
      "it includes the loop's 4-byte loss pmean), *gathered* is what SFB materialises on every device "
      "(P·b·(J+D)·4), *wire* the ring-model estimate. Dense sends J·D+J floats. Step time: median of "
      f"{args.steps} blocking steps, SFB forced on (`rule=always`). Simulated devices exchange through shared "
      "memory, so the measured time is almost all compute; *modeled at 10 Gb/s* adds wire bytes / 1.25 GB/s to "
      "it (T = T_compute + bytes/BW, sfb.md §4). The last two columns are the plan's choice: the `payload` rule "
      "(crossover b ≈ 83 = JD/(P(J+D))) and the `time` rule (`sfb.CostModel`: it also charges the 2(P−1)·b·J·D "
      f"extra reconstruction flops) with the reconstruction matmul calibrated here at {flops / 1e9:.1f} GFLOP/s "
      "per simulated device and 10 Gb/s links.",
      "",
      "| b | SFB sent (B) | SFB gathered (B) | dense (B) | dense/SFB gathered | dense/SFB wire | SFB step (ms) "
      "| dense step (ms) | SFB/dense time | SFB/dense modeled at 10 Gb/s | plan: payload | plan: time |",
      "|---|---|---|---|---|---|---|---|---|---|---|---|",
  ]
  for b, s, d, chosen, by_time in rows:
    lines.append(f"| {b} | {s['payload']:,.0f} | {s['gathered']:,.0f} | {d['payload']:,.0f} | "
                 f"{d['payload'] / s['gathered']:.1f}x | {d['wire'] / s['wire']:.1f}x | {s['step_ms']:.1f} | "
                 f"{d['step_ms']:.1f} | {s['step_ms'] / d['step_ms']:.2f} | {_modeled(s) / _modeled(d):.2f} | "
                 f"{'SFB' if chosen else 'dense'} | {'SFB' if by_time else 'dense'} |")

  def worst(pick):
    chosen = [(b, s["step_ms"] / d["step_ms"]) for b, s, d, *c in rows if pick(c)]
    return max(chosen, key=lambda t: t[1]) if chosen else None

  crossover = max((b for b in range(1, 257) if sfb.choose_sfb(2000, 1000, b, P, "time", cost=cost)), default=0)
  lines.append("")
  lines.append(f"- The `time` rule with this calibration picks SFB for b ≤ {crossover} (the `payload` rule: b ≤ 83).")
  for name, pick in (("payload", lambda c: c[0]), ("time", lambda c: c[1])):
    w = worst(pick)
    lines.append(f"- Target \"SFB step ≤ 1.3x dense where the plan picks SFB\", `{name}` rule: " + (
        "the rule picks SFB nowhere." if w is None else
        f"worst measured ratio {w[1]:.2f} (b={w[0]}): {'met' if w[1] <= 1.3 else 'not met'}."))
  b4 = next(r for r in rows if r[0] == 4)
  lines.append(f"- Bytes target (≥ 20x fewer than dense at b=4): dense/SFB gathered {b4[2]['payload'] / b4[1]['gathered']:.1f}x "
               f"(sent: {b4[2]['payload'] / b4[1]['payload']:.0f}x).")
  lines += ["", f"Loss vs cumulative bytes (b=4, {args.train_steps} steps, SGD lr 0.5): "
            f"![sfb loss vs bytes](benchmarks/results/{os.path.basename(png)})"]
  print("wrote", write_result("sfb", "\n".join(lines)))


if __name__ == "__main__":
  main()
