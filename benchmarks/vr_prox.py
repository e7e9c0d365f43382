"""vr_prox reproduction at small scale: convergence grid, bytes, epoch time, event-model throughput.

    python -m benchmarks.vr_prox [--epochs 20] [--quick]

Problem B of the spec (float64): breast_cancer, X = normalize(StandardScaler(X)) (569 x 30, unit
rows, L_i = 1/4), y = +-1, no intercept, elastic net l1 = 3e-3, l2 = 1e-2; P* from sklearn saga
(C = 1/(n(l1+l2)), l1_ratio = l1/(l1+l2)). One epoch = n/K rounds of K single-row messages (n
stochastic gradients at the read) plus one full pass. Round model (``vr_prox.sharded_epoch``)
on K simulated CPU devices, delays uniform on {0..D} (D in rounds). Writes
``benchmarks/results/vr_prox.md``, ``vr_prox_gap.png`` (gap vs epochs) and ``vr_prox_event.png``
(gap vs simulated time, event model).
"""
from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)  # this benchmark process only

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from jax import lax  # noqa: E402
from jax.sharding import AxisType  # noqa: E402

import vr_prox  # noqa: E402
from benchmarks.notes import RESULTS, write_result  # noqa: E402
from common import baseline  # noqa: E402
from common.comm import collective_bytes  # noqa: E402
from common.references import breast_cancer_elastic_net  # noqa: E402

L1, L2 = 3e-3, 1e-2


def problem():
  x, y, w_star = breast_cancer_elastic_net(L1, L2)
  return x, y, objective_np(x, y, w_star)


def objective_np(x, y, w):
  return np.mean(np.logaddexp(0, -y * (x @ w))) + L1 * np.abs(w).sum() + 0.5 * L2 * w @ w


def ex_loss(p, data):
  a, b = data
  return jnp.logaddexp(0, -b * (a @ p))


def mesh_of(k):
  return jax.make_mesh((k,), ("data",), axis_types=(AxisType.Auto,), devices=jax.devices()[:k])


def shard(x, y, k):
  parts = np.array_split(np.arange(len(y)), k)
  rows = max(len(p) for p in parts)
  xs, ys, ms = np.zeros((k, rows, x.shape[1])), np.zeros((k, rows)), np.zeros((k, rows))
  for i, idx in enumerate(parts):
    xs[i, :len(idx)], ys[i, :len(idx)], ms[i, :len(idx)] = x[idx], y[idx], 1
  return (jnp.asarray(xs.reshape(-1, x.shape[1])), jnp.asarray(ys.reshape(-1))), jnp.asarray(ms.reshape(-1))


def make_tx(algo, k, d):
  prox = vr_prox.prox_elastic_net(L1, L2)
  common = dict(max_delay=d, delay_schedule="uniform")
  if algo == "prox_svrg":
    return vr_prox.tap_svrg(1.0, prox), True  # K = 1, D = 0 on a 1-device mesh == ProxSVRG (tested)
  if algo == "tap_svrg":
    return vr_prox.tap_svrg(1.0, prox, **common), True
  if algo == "dap_svrg_theta1":
    return vr_prox.dap_svrg(1.0 / k, prox, relaxation=1.0, **common), True
  if algo == "dap_svrg_relaxed":
    theta = 1.0 / (k * (d + 1))
    return vr_prox.dap_svrg(0.5 / theta, prox, relaxation=theta, **common), True
  if algo == "dap_sgd":
    return vr_prox.dap_sgd(1.0, prox, relaxation=1.0 / k, **common), False
  raise ValueError(algo)


STEP_NOTE = {
    "prox_svrg": "gamma = 1",
    "tap_svrg": "gamma = 1",
    "dap_svrg_theta1": "gamma = 1/K, theta = 1 (paper rule)",
    "dap_svrg_relaxed": "theta = 1/(K(D+1)), gamma = 0.5/theta",
    "dap_sgd": "gamma = 1, theta = 1/K, no VR",
}


def run_gaps(x, y, p_star, algo, k, d, epochs):
  n, dim = x.shape
  tx, vr = make_tx(algo, k, d)
  data, mask = shard(x, y, k)
  ep = vr_prox.sharded_epoch(ex_loss, tx, mesh_of(k), rounds=n // k, variance_reduced=vr)
  p, s, gaps, times = jnp.zeros(dim), tx.init(jnp.zeros(dim)), [], []
  for _ in range(epochs):
    t0 = time.perf_counter()
    p, s = ep(p, s, data, mask, jax.random.PRNGKey(0))
    p = jax.block_until_ready(p)
    times.append(time.perf_counter() - t0)
    gaps.append(max((objective_np(x, y, np.asarray(p)) - p_star) / p_star, 1e-17))
  nnz = int(np.sum(np.abs(np.asarray(p)) > 1e-12))
  return np.array(gaps), nnz, float(np.median(times[1:])) if len(times) > 1 else times[0]


def run_serial(x, y, p_star, epochs, **kw):
  n, dim = x.shape
  data, mask = shard(x, y, 8)
  prox = vr_prox.prox_elastic_net(L1, L2)
  f = jax.jit(lambda p, key: vr_prox.serial_epoch(ex_loss, prox, p, data, mask, key, num_workers=8,
                                                  rounds=n // 8, max_delay=7, **kw))
  p, gaps = jnp.zeros(dim), []
  for e in range(epochs):
    p = f(p, jax.random.fold_in(jax.random.PRNGKey(0), e))
    gaps.append(max((objective_np(x, y, np.asarray(p)) - p_star) / p_star, 1e-17))
  return np.array(gaps), int(np.sum(np.abs(np.asarray(p)) > 1e-12))


SERIAL = (("DAP, theta = 1, fixed delay 7", dict(server="add", delay_schedule="fixed", learning_rate=1.0)),
          ("DAP, theta = 1, uniform delay {0..7}", dict(server="add", delay_schedule="uniform", learning_rate=1.0)),
          ("DAP, theta = 1/8, gamma = 8, fixed delay 7",
           dict(server="add", delay_schedule="fixed", learning_rate=8.0, relaxation=1 / 8)),
          ("TAP, fixed delay 7", dict(server="prox", delay_schedule="fixed", learning_rate=1.0)))


EVENT_RUNS = (  # (label, server, learning rate, theta, server time per update in worker-message units)
    ("DAP theta=1", "add", 1.0, 1.0, 0.01),
    ("DAP theta=1/8", "add", 8.0, 1 / 8, 0.01),
    ("TAP, cheap prox (p = a)", "prox", 1.0, 1.0, 0.02),
    ("TAP, expensive prox (p = 0.5)", "prox", 1.0, 1.0, 0.51),
)


def run_event(x, y, p_star, epochs, label, server, lr, theta, server_time, heterogeneous):
  """Serial model replaying a fresh event trace each epoch; returns (sim times, gaps, max delay)."""
  n, dim = x.shape
  k = 8
  rounds = n // k
  data, mask = shard(x, y, k)
  prox = vr_prox.prox_elastic_net(L1, L2)
  p, clock, times, gaps, max_delay = jnp.zeros(dim), 0.0, [], [], 0
  for e in range(epochs):
    tr = vr_prox.event_trace(k, rounds * k, speeds=np.linspace(1, 2, k) if heterogeneous else None,
                             sigma=0.3 if heterogeneous else 0.0, server_time=server_time, seed=e)
    tau = int(tr.delay.max())
    p = vr_prox.serial_epoch(ex_loss, prox, p, data, mask, jax.random.PRNGKey(e), learning_rate=lr,
                             num_workers=k, rounds=rounds, max_delay=tau, delay_schedule="trace",
                             delay_trace=tr.delay, worker_trace=tr.worker, server=server, relaxation=theta)
    clock += float(tr.time[-1])
    max_delay = max(max_delay, tau)
    times.append(clock)
    gaps.append(max((objective_np(x, y, np.asarray(p)) - p_star) / p_star, 1e-17))
  return np.array(times), np.array(gaps), max_delay


def first_below(gaps, tol):
  hit = np.flatnonzero(gaps <= tol)
  return str(hit[0] + 1) if len(hit) else "—"


def dense_epoch_fn(k, rounds, lr=0.1):
  """Dense data-parallel SGD epoch on the same mesh: per round local 1-row gradient, f64 pmean."""
  tx = baseline.dense_data_parallel(optax.sgd(lr), "data")

  def epoch(params, state, data, mask, key):
    n_k = jnp.sum(mask).astype(jnp.int32)
    worker = lax.axis_index("data")

    def one(carry, r):
      params, state = carry
      idx = vr_prox.sample_indices(key, r, worker, 1, n_k)
      batch = jax.tree.map(lambda a: a[idx], data)
      g = jax.grad(lambda p: jnp.mean(ex_loss(p, batch)))(lax.pcast(params, "data", to="varying"))
      u, state = tx.update(g, state, params)
      return (optax.apply_updates(params, u), state), None

    (params, state), _ = lax.scan(one, (params, state), jnp.arange(rounds))
    return params, state

  sm = jax.shard_map(epoch, mesh=mesh_of(k), in_specs=(jax.P(), jax.P(), jax.P("data"), jax.P("data"), jax.P()),
                     out_specs=(jax.P(), jax.P()))
  return jax.jit(sm), tx


def time_epochs(fn, args, reps):
  out = fn(*args)
  jax.block_until_ready(out)
  ts = []
  for _ in range(reps):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    ts.append(time.perf_counter() - t0)
  return float(np.median(ts))


def epoch_cost_table(x, y, k=8, reps=15):
  n, dim = x.shape
  rounds = n // k
  data, mask = shard(x, y, k)
  key = jax.random.PRNGKey(0)
  p0 = jnp.zeros(dim)
  rows = []
  dense, dtx = dense_epoch_fn(k, rounds)
  rep = collective_bytes(dense.lower(p0, dtx.init(p0), data, mask, key).compile())
  rows.append(("dense SGD (pmean of gradients)", time_epochs(dense, (p0, dtx.init(p0), data, mask, key), reps),
               rep.payload, rounds * 8 * dim))
  for label, algo in (("DAP-SVRG (server add)", "dap_svrg_relaxed"), ("TAP-SVRG (server prox)", "tap_svrg"),
                      ("DAP-SGD", "dap_sgd")):
    tx, vr = make_tx(algo, k, 3)
    ep = vr_prox.sharded_epoch(ex_loss, tx, mesh_of(k), rounds=rounds, variance_reduced=vr)
    s0 = tx.init(p0)
    rep = collective_bytes(ep.lower(p0, s0, data, mask, key).compile())
    analytic = (rounds + int(vr)) * vr_prox.payload_bytes(p0) + (8 if vr else 0)
    rows.append((label, time_epochs(ep, (p0, s0, data, mask, key), reps), rep.payload, analytic))
  return rows, rounds


def _time(f, args, reps):
  """Median seconds per blocking call after 3 warm-up calls (the first SVD calls are slow)."""
  for _ in range(3):
    jax.block_until_ready(f(*args))
  ts = []
  for _ in range(reps):
    t0 = time.perf_counter()
    jax.block_until_ready(f(*args))
    ts.append(time.perf_counter() - t0)
  return float(np.median(ts))


def event_model_costs():
  """Per-message costs on this host for three workloads: (name, g, p, a) in seconds.

  g = worker VR gradient of a b-row minibatch at two points, p = one prox evaluation (after the
  gradient step), a = one server add of the update. DAP: worker g + p, server a. TAP: worker g,
  server a + p (the prox is serialised on the server).
  """
  rng = np.random.default_rng(0)
  out = []

  def linear_workload(name, d, b, reps):
    a_rows = jnp.asarray(rng.normal(size=(b, d)) / np.sqrt(d))
    y_rows = jnp.asarray(np.sign(rng.normal(size=b)))
    grad = jax.grad(lambda p: jnp.mean(ex_loss(p, (a_rows, y_rows))))
    g = jax.jit(lambda p, s, mu: grad(p) - grad(s) + mu)
    prox = vr_prox.prox_elastic_net(L1, L2)
    pr = jax.jit(lambda z: prox(z, 1.0))
    add = jax.jit(lambda x, u: x + u)
    w = jnp.asarray(rng.normal(size=d))
    out.append((name, _time(g, (w, w, w), reps), _time(pr, (w,), reps), _time(add, (w, w), reps)))

  linear_workload("elastic-net logistic, d = 30, b = 1 (this problem)", 30, 1, 500)
  linear_workload("elastic-net logistic, d = 10,000, b = 100", 10_000, 100, 200)
  # trace-norm regularized multi-output least squares, W: 256 x 256, b = 100 rows
  a_rows = jnp.asarray(rng.normal(size=(100, 256)))
  t_rows = jnp.asarray(rng.normal(size=(100, 256)))
  grad = jax.grad(lambda w: 0.5 * jnp.mean(jnp.sum((a_rows @ w - t_rows) ** 2, -1)))
  g = jax.jit(lambda w, s, mu: grad(w) - grad(s) + mu)

  def trace_prox(z):
    u, sv, vt = jnp.linalg.svd(z, full_matrices=False)
    return (u * jnp.maximum(sv - 1e-3, 0)) @ vt

  w = jnp.asarray(rng.normal(size=(256, 256)))
  out.append(("trace-norm least squares, W 256 x 256, b = 100", _time(g, (w, w, w), 100),
              _time(jax.jit(trace_prox), (w,), 20), _time(jax.jit(lambda x, u: x + u), (w, w), 200)))
  return out


def throughput(k, c_worker, c_server):
  return min(k / c_worker, 1 / c_server)


def plot(curves, out):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  delays = sorted({d for (_, k, d) in curves if k == 8})
  fig, axes = plt.subplots(1, len(delays) + 1, figsize=(4.2 * (len(delays) + 1), 3.8), sharey=True)
  for ax, d in zip(axes, delays):
    for (algo, k, dd), gaps in curves.items():
      if k == 8 and dd == d:
        ax.semilogy(np.arange(1, len(gaps) + 1), gaps, label=algo)
    if ("prox_svrg", 1, 0) in curves:
      g = curves[("prox_svrg", 1, 0)]
      ax.semilogy(np.arange(1, len(g) + 1), g, "k--", lw=1, label="prox_svrg (K=1)")
    ax.set_title(f"K = 8, D = {d} (uniform)")
    ax.set_xlabel("epoch")
    ax.grid(alpha=0.3)
  ax = axes[-1]
  for k in (1, 2, 4, 8):
    if ("dap_svrg_theta1", k, 0) in curves:
      g = curves[("dap_svrg_theta1", k, 0)]
      ax.semilogy(np.arange(1, len(g) + 1), g, label=f"dap theta=1, K={k}")
  ax.set_title("paper rule (theta = 1), D = 0: stalls for K >= 2")
  ax.set_xlabel("epoch")
  ax.grid(alpha=0.3)
  axes[0].set_ylabel("relative gap (P - P*)/P*")
  for a in axes:
    a.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(out, dpi=100)
  plt.close(fig)


def plot_event(event, out):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
  for ax, scen in zip(axes, ("homogeneous", "heterogeneous")):
    for sc, label, st, times, gaps, tau in event:
      if sc == scen:
        ax.semilogy(times, gaps, marker=".", label=f"{label} (max delay {tau})")
    ax.set_title(f"event model, K = 8, {scen} workers")
    ax.set_xlabel("simulated time (worker-message units)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
  axes[0].set_ylabel("relative gap (P - P*)/P*")
  fig.tight_layout()
  fig.savefig(out, dpi=100)
  plt.close(fig)


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--epochs", type=int, default=20)
  parser.add_argument("--quick", action="store_true", help="K in {1, 8}, D in {0, 3} only")
  args = parser.parse_args()
  x, y, p_star = problem()
  ks = (1, 8) if args.quick else (1, 2, 4, 8)
  ds = (0, 3) if args.quick else (0, 1, 3, 7)
  algos = ("tap_svrg", "dap_svrg_theta1", "dap_svrg_relaxed", "dap_sgd")
  curves, table = {}, []
  gaps, nnz, sec = run_gaps(x, y, p_star, "prox_svrg", 1, 0, args.epochs)
  curves[("prox_svrg", 1, 0)] = gaps
  table.append(("prox_svrg", 1, 0, gaps, nnz, sec))
  for k in ks:
    for d in ds:
      for algo in algos:
        gaps, nnz, sec = run_gaps(x, y, p_star, algo, k, d, args.epochs)
        curves[(algo, k, d)] = gaps
        table.append((algo, k, d, gaps, nnz, sec))
        print(f"{algo:18s} K={k} D={d}: gap {gaps[-1]:.1e} nnz {nnz} 1e-6@{first_below(gaps, 1e-6)} "
              f"1e-9@{first_below(gaps, 1e-9)} ({sec * 1e3:.0f} ms/epoch)", flush=True)
  png = os.path.join(RESULTS, "vr_prox_gap.png")
  os.makedirs(RESULTS, exist_ok=True)
  plot(curves, png)

  serial = [(label, *run_serial(x, y, p_star, args.epochs, **kw)) for label, kw in SERIAL]
  event = []
  for het in (False, True):
    for label, server, lr, theta, st in EVENT_RUNS:
      times, gaps, tau = run_event(x, y, p_star, min(args.epochs, 15), label, server, lr, theta, st, het)
      event.append(("heterogeneous" if het else "homogeneous", label, st, times, gaps, tau))
      print(f"event {event[-1][0]} {label}: {times[-1]:.0f} time units, gap {gaps[-1]:.1e}, tau {tau}", flush=True)
  plot_event(event, os.path.join(RESULTS, "vr_prox_event.png"))
  cost_rows, rounds = epoch_cost_table(x, y)
  costs = event_model_costs()
  for r in cost_rows:
    print(r, flush=True)

  cmd = "python -m benchmarks.vr_prox" + (f" --epochs {args.epochs}" if args.epochs != 20 else "") + \
      (" --quick" if args.quick else "")
  lines = [
      "### vr_prox: DAP-SVRG vs TAP-SVRG vs ProxSVRG vs DAP-SGD (round model, simulated asynchrony)",
      "",
      f"Command: `{cmd}` ({jax.default_backend()}, {os.cpu_count()} cores shared with other jobs; K simulated "
      "devices). Problem B of the spec (float64): breast_cancer 569 x 30, unit rows, elastic net l1 = 3e-3, "
      f"l2 = 1e-2, no intercept; P* = {p_star:.15f} from sklearn saga (25 nonzeros). Epoch = n/K rounds of one "
      "row per worker + one full gradient. Delays uniform on {0..D} rounds (staleness in server updates up to "
      "K(D+1)-1). Columns: epochs to reach relative gap 1e-6 / 1e-9 (— = not within "
      f"{args.epochs}), gap after {args.epochs} epochs (floored at 1e-17: float64 rounding of P is ~2e-16), "
      "nonzeros (|x| > 1e-12) of the final iterate (optimum: 25).",
      "",
      "| algorithm | step rule | K | D | 1e-6 | 1e-9 | final gap | nnz |",
      "|---|---|---|---|---|---|---|---|",
  ]
  for algo, k, d, gaps, nnz, sec in table:
    lines.append(f"| {algo} | {STEP_NOTE[algo]} | {k} | {d} | {first_below(gaps, 1e-6)} | "
                 f"{first_below(gaps, 1e-9)} | {gaps[-1]:.1e} | {nnz} |")
  lines += [
      "",
      "Serial model (`vr_prox.serial_epoch`, update-level staleness, K = 8 workers arriving in seeded "
      "order, tau = 7 server updates, gamma = 1 unless noted): the dead-zone recursion x_{t+1} = x_t - "
      "x_{t-tau} (root modulus 1.166 for tau = 7) makes the paper's rule stall under a fixed delay; "
      "random delays that often hit 0, the relaxed rule and the server prox converge.",
      "",
      "| serial run | 1e-6 | 1e-9 | final gap | nnz |",
      "|---|---|---|---|---|",
  ]
  for label, gaps, nnz in serial:
    lines.append(f"| {label} | {first_below(gaps, 1e-6)} | {first_below(gaps, 1e-9)} | {gaps[-1]:.1e} | {nnz} |")
  lines += [
      "",
      "Event model (spec §4.1c; `vr_prox.event_trace` replayed by `vr_prox.serial_epoch`): K = 8 workers, "
      "one message takes 1 time unit on a speed-1 worker; homogeneous = deterministic equal workers "
      "(round robin, delay 7); heterogeneous = speeds 1..2 with log-normal(0, 0.3) jitter. The server "
      "serves one update per service time: a = 0.01 for the DAP add, a + p for TAP (p = 0.01: separable "
      "prox; p = 0.5: an expensive prox such as a trace norm, a hypothetical cost ratio). A fresh seeded "
      "trace per epoch; the clock excludes the full-gradient pass (the same for all). Plot: "
      "`benchmarks/results/vr_prox_event.png`.",
      "",
      "| workers | run | server time/update | max delay | epochs to 1e-9 | time to 1e-9 | final gap | time/epoch |",
      "|---|---|---|---|---|---|---|---|",
  ]
  for scen, label, st, times, gaps, tau in event:
    hit = np.flatnonzero(gaps <= 1e-9)
    lines.append(f"| {scen} | {label} | {st} | {tau} | {first_below(gaps, 1e-9)} | "
                 f"{times[hit[0]]:.0f} | {gaps[-1]:.1e} | {times[0]:.0f} |" if len(hit) else
                 f"| {scen} | {label} | {st} | {tau} | — | — | {gaps[-1]:.1e} | {times[0]:.0f} |")
  lines += [
      "",
      f"Plot: `benchmarks/results/vr_prox_gap.png` (relative gap vs epochs, K = 8 per D; paper rule vs K).",
      "",
      f"Epoch cost on the same 8-device mesh ({rounds} rounds of 1 row per worker; median of 15 epochs after "
      "compile; the dense baseline is data-parallel SGD with an f64 pmean of the gradient each round, "
      "inside the same kind of scan). Bytes are measured from the compiled epoch (per device) and compared "
      "with the analytic count: DAP = one d-float psum of Delta per round (+ the full gradient and its row "
      "count per epoch); TAP = its share of the all_gather of v (also d floats); dense = one d-float psum "
      "per round.",
      "",
      "| method | epoch time (ms) | measured payload/epoch (B) | analytic (B) |",
      "|---|---|---|---|",
  ]
  for label, sec, payload, analytic in cost_rows:
    lines.append(f"| {label} | {sec * 1e3:.1f} | {payload:,.0f} | {analytic:,.0f} |")
  lines += [
      "",
      "Event model (spec §3): server throughput = min(K / c_w, 1 / c_s) updates/s. DAP: c_w = g + p "
      "(worker gradient and prox), c_s = a (server add); TAP: c_w = g, c_s = a + p (server prox). g, p, a "
      "measured on this host (median blocking call after warm-up; shared 2-core machine, expect 10-30% noise; "
      "per-call dispatch, ~3-5 us, dominates the d = 30 row).",
      "",
      "| workload | g (us) | p (us) | a (us) | DAP upd/s K=1 / 8 / 64 | TAP upd/s K=1 / 8 / 64 | DAP/TAP at K=64 |",
      "|---|---|---|---|---|---|---|",
  ]
  for label, g, p, a in costs:
    dap = [throughput(k, g + p, a) for k in (1, 8, 64)]
    tap = [throughput(k, g, a + p) for k in (1, 8, 64)]
    lines.append(f"| {label} | {g * 1e6:.1f} | {p * 1e6:.1f} | {a * 1e6:.1f} | "
                 + " / ".join(f"{v:,.0f}" for v in dap) + " | " + " / ".join(f"{v:,.0f}" for v in tap)
                 + f" | {dap[-1] / tap[-1]:.2f} |")
  lines += [
      "",
      "Reading: once the server is the bottleneck DAP's throughput is (a + p)/a times TAP's. With a separable "
      "prox (l1, elastic net) p is about one add (both are one O(d) pass; here both are dispatch-bound), so the "
      "gain is about 2x; with a trace-norm prox (an SVD per update) the TAP server saturates at 1/(a + p) "
      "updates/s while DAP's server only adds (~60x at K = 64), which is the paper's motivation. These are "
      "event-model numbers from measured per-operation costs, not a distributed run. Convergence: the paper's rule (theta = 1) "
      "stalls in the round model for K >= 2 (persistent staleness: the dead-zone recursion of spec §2.5), "
      "the relaxed rule theta = 1/(K(D+1)) and TAP reach 1e-9; DAP-SGD stays at its noise floor. In the "
      "event model the paper's rule also stalls with heterogeneous, jittered workers (delays vary but are "
      "rarely 0); relaxed DAP keeps the add-only server and converges, and with an expensive prox TAP's "
      "serialised server makes each epoch ~3-4x longer in simulated time.",
  ]
  print("wrote", write_result("vr_prox", "\n".join(lines)), "and", png)


if __name__ == "__main__":
  main()
