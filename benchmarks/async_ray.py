"""Measured: the Ray parameter server (common/async_ray) — throughput vs K, delays, gap vs wall time,
and the event model's prediction (vr_prox.event_trace) from the measured per-operation costs.

    python -m benchmarks.async_ray            # writes benchmarks/results/async_ray.md (~5 min on 2 cores)

Throughput runs: K in (1, 2, 3) workers, DAP vs TAP, elastic-net prox (breast_cancer, d = 30) and
trace-norm prox (digits multinomial, W 64 x 10), batch 1, tau = 4, 2 epochs; updates/s is
measured over the second epoch's asynchronous phase. Per-operation costs: c_comp (a worker's
jitted step incl. sampling), c_s (the server's service time per update), rtt (push round trip
seen by the worker). Event model: worker_time = c_comp + transport, transport = rtt - c_s of the
K = 1 run (no queue at K = 1), server_time = c_s; predicted updates/s = T / last completion time.
Everything runs on one machine: K workers + server + driver share its cores.
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np

from common.async_ray import ps

OUT = os.path.join(os.path.dirname(__file__), "results", "async_ray.md")


def _throughput_run(problem, variant, k, updates):
  spec = ps.Spec(problem=problem, variant=variant, num_workers=k, max_delay=4, lr=1.0, epochs=2,
                 updates_per_epoch=updates, seed=0)
  out = ps.run(spec, log=lambda line: None)
  rec = out["records"][-1]
  tr = rec["_trace"]
  comp = np.concatenate([np.asarray(c) for c in tr["comp"].values()])
  rtt = np.concatenate([np.asarray(r) for r in tr["rtt"].values()])
  return {"problem": problem, "variant": variant, "K": k, "ups": rec["updates_per_s"],
          "c_comp": float(np.median(comp)), "c_s": float(np.median(tr["service"])), "rtt": float(np.median(rtt)),
          "delays": tr["delay"], "refused": rec["refused"], "gap": rec["gap"]}


def _predict(row, transport):
  import vr_prox
  trace = vr_prox.event_trace(row["K"], 2000, worker_time=row["c_comp"] + transport, server_time=row["c_s"])
  return 2000 / trace.time[-1], trace


def _gap_run(variant, epochs):
  out = ps.run(ps.Spec(variant=variant, num_workers=2, max_delay=4, lr=1.0, epochs=epochs, seed=0),
               log=lambda line: None)
  return [(r["step"], r["wall_time"], r["gap"]) for r in out["records"]], out["startup_s"]


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", default=OUT)
  parser.add_argument("--workers", default="1,2,3")
  args = parser.parse_args(argv)
  import ray
  t0 = time.perf_counter()
  ps.start_ray(4)
  init_s = time.perf_counter() - t0
  ks = [int(k) for k in args.workers.split(",")]
  rows = []
  for problem, updates in (("elastic_net", 569), ("trace_norm", 600)):
    for variant in ("dap", "tap"):
      for k in ks:
        rows.append(_throughput_run(problem, variant, k, updates))
        print({key: v for key, v in rows[-1].items() if key != "delays"}, flush=True)
  gaps, startup = {}, {}
  for v in ("dap", "tap"):
    gaps[v], startup[v] = _gap_run(v, 9)
  ray.shutdown()
  lines = [f"# Ray parameter server (issue 16): measured\n",
           f"`python -m benchmarks.async_ray` on this machine ({os.cpu_count()} cores, shared), ray "
           f"{ray.__version__}; Ray start {init_s:.1f} s. Times are medians per operation.\n",
           "## Throughput vs K, and the event model from the measured costs\n",
           "| problem (prox) | server | K | updates/s measured | c_comp ms | c_s ms | rtt ms | event model updates/s "
           "| model / measured | delay mean | delay max | refused |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|"]
  for row in rows:
    base = next(r for r in rows if r["problem"] == row["problem"] and r["variant"] == row["variant"] and r["K"] == min(ks))
    transport = max(base["rtt"] - base["c_s"], 0.0)
    pred, _ = _predict(row, transport)
    d = row["delays"]
    lines.append(f"| {row['problem']} | {row['variant'].upper()} | {row['K']} | {row['ups']:.0f} | "
                 f"{row['c_comp'] * 1e3:.3f} | {row['c_s'] * 1e3:.4f} | {row['rtt'] * 1e3:.3f} | {pred:.0f} | "
                 f"{pred / row['ups']:.2f} | {d.mean():.2f} | {d.max()} | {row['refused']} |")
  lines += ["", "## Delay distribution (second epoch, share of updates with delay 0..4)\n",
            "| problem | server | K | " + " | ".join(f"d={i}" for i in range(5)) + " |",
            "|---|---|---|" + "---|" * 5]
  for row in rows:
    h = np.bincount(row["delays"], minlength=5)[:5] / len(row["delays"])
    lines.append(f"| {row['problem']} | {row['variant'].upper()} | {row['K']} | " + " | ".join(f"{x:.3f}" for x in h) + " |")
  lines += ["", "## Objective gap vs wall time (elastic net, K = 2, tau = 4, gamma = 1, theta = 1, m = n)\n",
            f"Wall time counts from when the server and workers are up (actor start-up, not counted: DAP "
            f"{startup['dap']:.1f} s, TAP {startup['tap']:.1f} s); each epoch includes the full-gradient pass.\n",
            "| epoch | DAP wall s | DAP rel. gap | TAP wall s | TAP rel. gap |", "|---|---|---|---|---|"]
  for (e, wd, gd), (_, wt, gt) in zip(gaps["dap"], gaps["tap"]):
    lines.append(f"| {e} | {wd:.1f} | {gd:.2e} | {wt:.1f} | {gt:.2e} |")
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  with open(args.out, "w") as f:
    f.write("\n".join(lines) + "\n")
  print("\n".join(lines))


if __name__ == "__main__":
  main()
