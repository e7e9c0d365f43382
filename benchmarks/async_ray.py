"""Measured: the Ray parameter server (common/async_ray) — throughput vs K, delays, gap vs wall time,
and the event model's prediction (vr_prox.event_trace) from the measured per-operation costs; and
(``--part sign1bit``) 1-bit gradient coding with real stragglers: time-to-target on digits.

    python -m benchmarks.async_ray            # writes benchmarks/results/async_ray.md (~5 min on 2 cores)
    python -m benchmarks.async_ray --part sign1bit   # benchmarks/results/async_sign1bit.md + _loss_vs_time.png

The sign1bit part also predicts each run's median step and time to target from the costs measured
in it (``common/async_ray/gc_model.py``: dispatch, worker compute, message round trip, decode,
eval, and the order statistic of the seeded delays) and compares every method with its SPMD
``sign1bit`` run on a 4-device mesh (``common/async_ray/gc_spmd.py``) and with F* (L-BFGS).

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

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")   # the SPMD references' mesh

import numpy as np

from common.async_ray import ps

OUT = os.path.join(os.path.dirname(__file__), "results", "async_ray.md")
OUT_GC = os.path.join(os.path.dirname(__file__), "results", "async_sign1bit.md")


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
  parser.add_argument("--part", choices=("ps", "sign1bit"), default="ps")
  parser.add_argument("--out", default=None, help=f"default {OUT} (ps) or {OUT_GC} (sign1bit)")
  parser.add_argument("--workers", default="1,2,3")
  parser.add_argument("--gc-steps", type=int, default=400, help="sign1bit: step cap per run")
  parser.add_argument("--gc-target", type=float, default=GC_TARGET, help="sign1bit: target F(w)")
  parser.add_argument("--spmd-steps", type=int, default=SPMD_STEPS,
                      help="sign1bit: steps of each Ray-vs-SPMD comparison run (0: skip the comparison)")
  args = parser.parse_args(argv)
  if args.part == "sign1bit":
    return main_sign1bit(args.out or OUT_GC, args.gc_steps, args.gc_target, args.spmd_steps)
  args.out = args.out or OUT
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
  lines = [f"### Ray parameter server (issue 16): measured\n",
           f"`python -m benchmarks.async_ray` on this machine ({os.cpu_count()} cores, shared), ray "
           f"{ray.__version__}; Ray start {init_s:.1f} s. Times are medians per operation.\n",
           "#### Throughput vs K, and the event model from the measured costs\n",
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
  lines += ["", "#### Delay distribution (second epoch, share of updates with delay 0..4)\n",
            "| problem | server | K | " + " | ".join(f"d={i}" for i in range(5)) + " |",
            "|---|---|---|" + "---|" * 5]
  for row in rows:
    h = np.bincount(row["delays"], minlength=5)[:5] / len(row["delays"])
    lines.append(f"| {row['problem']} | {row['variant'].upper()} | {row['K']} | " + " | ".join(f"{x:.3f}" for x in h) + " |")
  lines += ["", "#### Objective gap vs wall time (elastic net, K = 2, tau = 4, gamma = 1, theta = 1, m = n)\n",
            f"Wall time counts from when the server and workers are up (actor start-up, not counted: DAP "
            f"{startup['dap']:.1f} s, TAP {startup['tap']:.1f} s); each epoch includes the full-gradient pass.\n",
            "| epoch | DAP wall s | DAP rel. gap | TAP wall s | TAP rel. gap |", "|---|---|---|---|---|"]
  for (e, wd, gd), (_, wt, gt) in zip(gaps["dap"], gaps["tap"]):
    lines.append(f"| {e} | {wd:.1f} | {gd:.2e} | {wt:.1f} | {gt:.2e} |")
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  with open(args.out, "w") as f:
    f.write("\n".join(lines) + "\n")
  print("\n".join(lines))


# ----------------------------------------------------------------------------- 1-bit GC, real stragglers
# F(w) target, fixed before any run: full-batch GD (lr 1) on this problem reaches 0.589 at step 30 and
# 0.453 at step 50 (NumPy), so 0.6 is ~30 dense steps.
GC_TARGET = 0.6
K_GC = 4
# (label, method, wait, lr, extra GCSpec fields): lrs are configs/async_sign1bit.py's (sign1bit_digits').
GC_RUNS = (
    ("dense SGD, wait for all", "dense", "all", 1.0, {}),
    ("ignore stragglers (first K-1)", "ignore_stragglers", "first", 1.0, {}),
    ("SGC fp32, frc d=2 (first K-1)", "sgc", "first", 1.0, {}),
    ("1-bit GC, B=linf (first K-1)", "gc_linf", "first", 0.3, {}),
    ("1-bit GC, B const (first K-1)", "gc_const", "first", 0.03, {}),
    ("1-bit GC, B=linf, deadline 3 x mean delay", "gc_linf", "deadline", 0.3, {"straggler_prob": 0.25}),
)
DELAY_KINDS = (("exponential", {}), ("pareto", {"pareto_shape": 1.5}))
SPMD_STEPS, TAIL = 300, 50
W_TOL = 1e-5   # float32 rounding: Ray workers run XLA single-threaded, the SPMD mesh does not
# the Ray-vs-SPMD runs: GC_RUNS (exponential delays) and 1-bit GC waiting for all (p = 0: both
# runtimes decode every worker's message with the same keys, so their iterates must agree)
SPMD_RUNS = GC_RUNS[:4] + (("1-bit GC, B=linf, wait for all", "gc_linf", "all", 0.3, {}),) + GC_RUNS[4:]
KILLED = ("1-bit GC, B=linf (first K-1), worker 2 killed at step 10", "gc_linf", "first", 0.3,
          {"kill_worker": 2, "kill_at_step": 10})


def _gc_spec(method, wait, lr, extra, delay, delay_extra, steps, target, mean_s):
  from common.async_ray import gc
  return gc.GCSpec(method=method, num_workers=K_GC, redundancy=2, wait=wait, num_stragglers=1, lr=lr,
                   delay=delay, delay_mean_s=mean_s, deadline_s=3 * mean_s, num_steps=steps,
                   target_loss=target, seed=0, **delay_extra, **extra)


def _gc_run(label, method, wait, lr, extra, delay, delay_extra, steps, target, mean_s):
  from common.async_ray import gc, gc_model
  spec = _gc_spec(method, wait, lr, extra, delay, delay_extra, steps, target, mean_s)
  lines = []
  out = gc.run(spec, log=lines.append)
  recs = out["records"]
  ttt, step = gc.time_to_target(recs, target)
  hit = recs[step - 1] if step else recs[-1]
  model = gc_model.predict(spec, out, step)
  return {"label": label, "delay": delay, "method": method, "ttt": ttt, "steps": step, "last": recs[-1],
          "bits_per_step": float(np.mean([r["bits_per_step"] for r in recs])),
          "active": float(np.mean([r["active"] for r in recs])), "mbit": hit["uplink_bits"] / 1e6,
          "step_s": float(np.median([r["step_s"] for r in recs])), "acc": out["test_accuracy"],
          "startup": out["startup_s"], "curve": [(r["wall_time"], r["loss"]) for r in recs],
          "lost": out["lost"], "log": [l for l in lines if "lost" in l], "model": model,
          "load": os.getloadavg()[0]}


def _gc_plot(rows, path):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  kinds = [k for k, _ in DELAY_KINDS]
  fig, axes = plt.subplots(1, len(kinds), figsize=(6 * len(kinds), 4.2), sharey=True)
  for ax, kind in zip(axes, kinds):
    for r in (r for r in rows if r["delay"] == kind):
      t, loss = zip(*r["curve"])
      ax.plot(t, loss, label=r["label"])
    ax.axhline(GC_TARGET, color="k", lw=0.7, ls="--")
    ax.set_title(f"{kind} delays, K = {K_GC}")
    ax.set_xlabel("wall time (s)")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
  axes[0].set_ylabel("train objective F(w)")
  axes[-1].legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def _gc_reading(rows) -> str:
  """Ratios between the rows that decide the comparison, per delay distribution."""
  out = []
  for kind, _ in DELAY_KINDS:
    by = {r["method"] + ":" + r["label"].split("(")[-1]: r for r in rows if r["delay"] == kind and not r["lost"]}
    dense = next(r for r in by.values() if r["method"] == "dense")
    first = {r["method"]: r for r in by.values() if "first" in r["label"]}
    sgc, linf = first["sgc"], first["gc_linf"]
    if dense["ttt"] and first["ignore_stragglers"]["ttt"] and sgc["ttt"] and linf["ttt"]:
      out.append(f"{kind}: waiting for all took {dense['ttt'] / first['ignore_stragglers']['ttt']:.2f}x the time "
                 f"of ignore-stragglers and {dense['ttt'] / sgc['ttt']:.2f}x that of SGC (median step "
                 f"{dense['step_s'] / sgc['step_s']:.2f}x); 1-bit GC (linf) needed {linf['steps'] / sgc['steps']:.1f}x "
                 f"SGC's steps and {linf['ttt'] / sgc['ttt']:.1f}x its time, with {sgc['mbit'] / linf['mbit']:.1f}x "
                 f"fewer uplink bits to the target")
  const = [r for r in rows if r["method"] == "gc_const"]
  missed = all(r["ttt"] is None for r in const)
  return ("; ".join(out) + ". On loopback uplink bits cost no time, so fewer steps win on time; the 1-bit "
          "methods pay off only where bits cost time (equal-bit budgets: benchmarks/results/sign1bit.md). "
          + ("Constant B = l G / (d (1 - p)) did not reach the target within the cap in any run."
             if missed else "Constant B = l G / (d (1 - p)) reached the target in some runs."))


def _spmd_compare(steps, mean_s):
  """Each SPMD_RUNS method for ``steps`` steps on Ray (exponential delays) and on a K-device mesh
  (``gc_spmd.spmd_run``, same seed and lr); F* of the problem; rows of objective levels."""
  from common.async_ray import gc, gc_spmd
  from common.digits_softmax import LAM
  specs = [(label, _gc_spec(method, wait, lr, extra, "exponential", {}, steps, 0.0, mean_s))
           for label, method, wait, lr, extra in SPMD_RUNS]
  t0 = time.perf_counter()
  f_star, _ = gc_spmd.optimum(specs[0][1])
  print(f"F* = {f_star:.10f} ({time.perf_counter() - t0:.1f} s)", flush=True)
  rows = []
  for label, spec in specs:
    xs, ys, _, _ = gc.load_digits(spec)
    x, y = xs.reshape(-1, xs.shape[-1]), ys.reshape(-1)
    ws_ray = []
    out = gc.run(spec, on_step=lambda record, w: ws_ray.append(np.array(w)), log=lambda line: None)
    ws_spmd = gc_spmd.spmd_run(spec, steps)[1:]
    f_ray = np.array([r["loss"] for r in out["records"]])
    f_spmd = np.array([gc.objective_np(w, x, y, LAM)[0] for w in ws_spmd])
    rows.append({"label": label, "f_ray": f_ray, "f_spmd": f_spmd, "load": os.getloadavg()[0],
                 "w_diff": float(np.max(np.abs(np.stack(ws_ray) - ws_spmd)))})
    print(f"{label:48s} Ray F {f_ray[-1]:.4f} SPMD F {f_spmd[-1]:.4f} max|w diff| {rows[-1]['w_diff']:.2e}",
          flush=True)
  return f_star, rows


def _spmd_lines(f_star, rows, steps, mean_s):
  lines = ["", f"#### Ray vs the SPMD `sign1bit` runs and the optimum F*\n",
           f"Same K = {K_GC}, allocation, seed, lr and exponential delays (mean {mean_s * 1e3:.0f} ms) as above, "
           f"{steps} steps, no target; the SPMD run is `sign1bit`'s transformation in `shard_map` on a "
           f"{K_GC}-device mesh (`common/async_ray/gc_spmd.py`), its stragglers drawn from the key (fixed s = 1, "
           f"none when waiting for all, Bernoulli p = straggler_prob for the deadline run) where Ray's are the late arrivals. F* = {f_star:.10f}: L-BFGS-B "
           f"(float64, gradient norm <= 1e-8) on the same 1432 training rows. Tail = the last {TAIL} steps "
           f"(mean and sd of F). Max |w diff| = largest coordinate difference between the two runs' iterates "
           f"over all steps.\n",
           "| method | Ray F(T) | SPMD F(T) | Ray tail mean (sd) | SPMD tail mean (sd) | Ray/SPMD tail mean - 1 | "
           "Ray tail gap (F - F*)/F* | SPMD tail gap (F - F*)/F* | max abs w diff | load |",
           "|---|---|---|---|---|---|---|---|---|---|"]
  for r in rows:
    tr, ts = r["f_ray"][-TAIL:], r["f_spmd"][-TAIL:]
    lines.append(f"| {r['label']} | {r['f_ray'][-1]:.4f} | {r['f_spmd'][-1]:.4f} | {tr.mean():.4f} ({tr.std():.4f}) | "
                 f"{ts.mean():.4f} ({ts.std():.4f}) | {tr.mean() / ts.mean() - 1:+.2%} | "
                 f"{(tr.mean() - f_star) / f_star:.3f} | {(ts.mean() - f_star) / f_star:.3f} | {r['w_diff']:.2e} | "
                 f"{r['load']:.1f} |")
  rel = [abs(r["f_ray"][-TAIL:].mean() / r["f_spmd"][-TAIL:].mean() - 1) for r in rows]
  same = [r["label"] for r in rows if r["w_diff"] <= W_TOL]
  gaps = {k: [(r["f_" + k][-TAIL:].mean() - f_star) / f_star for r in rows] for k in ("ray", "spmd")}
  lines += ["", f"Reading (computed from the rows above): the Ray and SPMD tail means differ by at most "
            f"{max(rel):.2%} over the {len(rows)} methods; the same iterates up to float32 rounding (max |w diff| "
            f"<= {W_TOL:g}) for: "
            f"{'; '.join(same) if same else 'none'}. Smallest tail gap to F* after {steps} steps: Ray "
            f"{min(gaps['ray']):.3f}, SPMD {min(gaps['spmd']):.3f} (plain SGD at a constant rate; the 1-bit "
            f"and straggler rows level off at their noise floor, not at F*)."]
  return lines


def _model_cells(r) -> str:
  """The event model's median step and time to target (or to the end of the run), with model/measured,
  for the median costs and for the measured jitter."""
  measured = r["ttt"] if r["ttt"] is not None else r["last"]["wall_time"]
  what = "" if r["ttt"] is not None else "(run) "
  return " | ".join(f"{m['step_s']:.3f} ({m['step_s'] / r['step_s']:.2f}) | {what}{m['time_to_target']:.1f} "
                    f"({m['time_to_target'] / measured:.2f})" for m in (r["model"]["median"], r["model"]["jitter"]))


def main_sign1bit(out_path, steps, target, spmd_steps=SPMD_STEPS, mean_s=0.05):
  import ray
  from common.async_ray import ps
  load = os.getloadavg()
  t0 = time.perf_counter()
  ps.start_ray(K_GC + 1)
  init_s = time.perf_counter() - t0
  rows = []
  runs = [(r, kind, extra) for kind, extra in DELAY_KINDS for r in GC_RUNS] + [(KILLED, "exponential", {})]
  for (label, method, wait, lr, extra), kind, delay_extra in runs:
    rows.append(_gc_run(label, method, wait, lr, extra, kind, delay_extra, steps, target, mean_s))
    r = rows[-1]
    print(f"{kind:12s} {label:48s} ttt {r['ttt']} steps {r['steps']} final {r['last']['loss']:.3f} "
          f"step_s {r['step_s']:.3f} model {_model_cells(r)} "
          f"startup {r['startup']:.1f}", flush=True)
  spmd = _spmd_compare(spmd_steps, mean_s) if spmd_steps else None
  ray.shutdown()
  load_after = os.getloadavg()
  png = out_path.replace(".md", "_loss_vs_time.png")
  _gc_plot([r for r in rows if not r["lost"]], png)
  lines = [
      "### 1-bit gradient coding with real stragglers on Ray (issue 16): measured\n",
      f"`python -m benchmarks.async_ray --part sign1bit` (ray {ray.__version__}, {os.cpu_count()} cores shared with "
      f"other jobs: load average {load[0]:.1f} before, {load_after[0]:.1f} after; Ray start {init_s:.1f} s). "
      f"Digits softmax regression of `common/digits_softmax.py` (D = 650, label-sorted partitions), K = {K_GC} "
      f"worker actors, frc d = 2 (N = 2) for SGC / 1-bit GC, d = 1 (N = 4) for dense / ignore-stragglers. "
      f"Every worker sleeps a seeded delay per step (mean {mean_s * 1e3:.0f} ms; exponential, or Pareto with "
      f"shape 1.5: infinite variance; capped at 2 s) after computing; the coordinator decodes the first K - 1 "
      f"arrivals (decoder p = 1/4), every live worker (dense), or what arrived by a deadline of "
      f"{3 * mean_s * 1e3:.0f} ms (decoder p = 0.25, whatever the realised arrivals). The sleeps make the delays real although the "
      f"{K_GC} workers share 2 cores with the coordinator (and other engineers' jobs), so compute times are "
      f"inflated; wall time counts from when every worker is up and compiled (start-up excluded). "
      f"Target F(w) <= {target} fixed before the runs (full-batch GD reaches it in ~30 steps); cap {steps} steps. "
      f"Uplink bits per step = |R_t| x bits per message (650 x 32 fp32, 650 + 32 for B = linf, 650 for "
      f"constant B); Mbit to target is cumulative. Model: `common/async_ray/gc_model.py` from the costs "
      f"measured in the same run (medians of dispatch, worker compute, message round trip less compute and "
      f"delay, decode, eval) and the order statistic of that step's seeded delays over the live workers "
      f"(K - 1-th arrival, all, or min(deadline, last)); \"+ jitter\": each arrival's compute + round trip "
      f"drawn from that run's measured messages instead of the medians; in parentheses model / measured; "
      f"\"(run)\": the whole run where the target was not reached. Load = 1-min load average after the run.\n",
      "| delays | method | time to target s | steps to target | median step s | mean arrivals/step | "
      "uplink bits/step | uplink Mbit to target | final F (steps) | test acc | model: median step s | "
      "model: time to target s | model + jitter: median step s | model + jitter: time to target s | load |",
      "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
  for r in rows:
    ttt = f"{r['ttt']:.1f}" if r["ttt"] is not None else f"not reached in {r['last']['step']} steps"
    mbit = f"{r['mbit']:.2f}" if r["ttt"] is not None else f"({r['mbit']:.2f} at the cap)"
    lines.append(f"| {r['delay']} | {r['label']} | {ttt} | {r['steps'] or '-'} | {r['step_s']:.3f} | "
                 f"{r['active']:.2f} | {r['bits_per_step']:.0f} | {mbit} | "
                 f"{r['last']['loss']:.3f} ({r['last']['step']}) | {100 * r['acc']:.1f} % | {_model_cells(r)} | "
                 f"{r['load']:.1f} |")
  lines += ["", "Reading (computed from the rows above): " + _gc_reading(rows) + " " + _model_reading(rows)]
  killed = [r for r in rows if r["lost"]]
  for r in killed:
    lines += ["", f"Killed worker: {'; '.join(r['log'])}. It is a permanent straggler: the decoder keeps "
              f"p = 1/4, so every later step decodes the other three (biased: its partition's group is "
              f"now always one worker short)."]
  lines += ["", f"Plot: `{os.path.basename(png)}` (loss vs wall time, both delay distributions)."]
  if spmd:
    lines += _spmd_lines(*spmd, spmd_steps, mean_s)
  os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
  with open(out_path, "w") as f:
    f.write("\n".join(lines) + "\n")
  print("\n".join(lines))


def _model_reading(rows) -> str:
  parts = []
  for name, what in (("median", "with the median costs"), ("jitter", "with the measured jitter")):
    step = [r["model"][name]["step_s"] / r["step_s"] for r in rows]
    ttt = [r["model"][name]["time_to_target"] / r["ttt"] for r in rows if r["ttt"] is not None]
    parts.append(f"{what}, the model's median step is {min(step):.2f}-{max(step):.2f}x the measured one"
                 + (f" and its time to target {min(ttt):.2f}-{max(ttt):.2f}x the measured time ({len(ttt)} runs reached the target)"
                  if ttt else " (no run reached the target)"))
  return "Event model: " + "; ".join(parts) + "."


if __name__ == "__main__":
  main()
