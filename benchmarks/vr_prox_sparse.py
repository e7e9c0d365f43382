"""DAP-SVRG on a large sparse logistic-regression problem, rows kept sparse end to end (issue 14).

    python -m benchmarks.vr_prox_sparse [--rows 20000] [--features 100000] [--epochs 12] [--quick]
    python -m benchmarks.vr_prox_sparse --gap_of <workdir>   # a launch.py run of configs/vr_prox_sparse.py

1. Generates a seeded text-like problem (``common.data.sparse_logistic_csr``: 20-60 nonzeros per
   row at Zipf-distributed columns, unit-l2 rows, labels +-1 from a sparse ground truth) and writes
   it in svmlight format (``sklearn.datasets.dump_svmlight_file``, LIBSVM's 1-based columns) to a
   cache directory (``$VR_PROX_SPARSE_CACHE``, default ``/tmp/vr_prox_sparse``).
2. Loads it through the harness's loader (``common.data.load("svmlight:...")``, scipy CSR): load
   time, CSR bytes and the process's peak-RSS growth, against the 4 n d bytes densifying would take.
3. Reference optimum: sklearn ``LogisticRegression(solver="saga")`` on the same CSR matrix. Mapping
   of P(w) = (1/n) sum_i log(1 + exp(-y_i a_i.w)) + l1 |w|_1 + (l2/2) |w|^2 onto sklearn's
   C sum_i log(1 + exp(-y_i a_i.w)) + r |w|_1 + (1 - r)/2 |w|^2: divide P by (l1 + l2), so
   C = 1 / (n (l1 + l2)) and l1_ratio r = l1 / (l1 + l2); no intercept.
4. Rows on device as ELL arrays (``vr_prox.ell_from_csr``; why ELL: ``vr_prox/_sparse.py``), float32,
   sharded over 8 simulated CPU devices. DAP-SVRG in the round model (relaxed server, theta = 1/K,
   D = 0, step gamma/theta; gamma = 1/L = 4 by default) via ``vr_prox.sharded_epoch``, and the serial ProxSVRG reference on one
   device (``vr_prox.prox_svrg`` via ``vr_prox.epoch_fn``). Gap (P(w) - P*)/P* per epoch in float64
   numpy on the CSR matrix, seconds per epoch, and bytes per device per epoch measured from the
   compiled program (``common.comm.collective_bytes``) against the analytic (rounds + 1) x 4 d + 4
   (one d-float psum per round, the full gradient and its row count once per epoch).

Writes ``benchmarks/results/vr_prox_sparse.md``.

``--gap_of <workdir>`` reads a finished ``launch.py`` run (``config.json``, ``metrics.jsonl``,
``final_params.npz``; ``configs/vr_prox_sparse.py``): rebuilds its training rows with
``common.train.load_dataset``, solves them with sklearn saga at the run's l1 / l2 (step 3), and prints
the relative gap of each logged epoch (the harness's float32 P(w)) and of the final params (float64
on the CSR matrix), then compiles the run's step once more for its per-device memory
(``memory_analysis``) against the rows x features x 4 bytes its rows would take dense.
"""
from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import AxisType  # noqa: E402

import vr_prox  # noqa: E402
from benchmarks.notes import write_result  # noqa: E402
from common import data  # noqa: E402
from common.comm import collective_bytes  # noqa: E402

L1, L2 = 1e-4, 1e-3
K = 8
CACHE = os.environ.get("VR_PROX_SPARSE_CACHE", "/tmp/vr_prox_sparse")


def write_problem(rows: int, features: int, seed: int = 0) -> tuple[str, float]:
  """The svmlight file of the seeded problem (written once per size and seed) and the write seconds."""
  from sklearn.datasets import dump_svmlight_file
  os.makedirs(CACHE, exist_ok=True)
  path = os.path.join(CACHE, f"sparse_logistic_{rows}x{features}_s{seed}.svm")
  if os.path.exists(path):
    return path, 0.0
  t0 = time.perf_counter()
  x, y, _ = data.sparse_logistic_csr(rows, features, seed=seed)
  dump_svmlight_file(x, y, path + ".tmp", zero_based=False)
  os.replace(path + ".tmp", path)
  return path, time.perf_counter() - t0


def _status_kib(field: str) -> int:
  for line in open("/proc/self/status"):
    if line.startswith(field + ":"):
      return int(line.split()[1])
  raise KeyError(field)


def _reset_peak_rss() -> int:
  """Resets the process's peak RSS (Linux ``clear_refs`` 5) and returns the current RSS in bytes."""
  with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
  return _status_kib("VmRSS") * 1024


def load_problem(path: str):
  """(CSR float64 x, y in {-1, +1}, load stats) through ``common.data.load`` (all rows, no test split)."""
  rss0 = _reset_peak_rss()
  t0 = time.perf_counter()
  ds = data.load(f"svmlight:{path}", test_fraction=0.0)
  seconds = time.perf_counter() - t0
  peak = _status_kib("VmHWM") * 1024 - rss0
  x = ds.x_train
  stats = dict(seconds=seconds, csr_bytes=x.data.nbytes + x.indices.nbytes + x.indptr.nbytes,
               peak=peak, dense_bytes=4 * x.shape[0] * x.shape[1],
               shape=x.shape, nnz=x.nnz, sparse=data.is_sparse(x))
  return x.astype(np.float64), np.where(ds.y_train == 1, 1.0, -1.0), stats


def sklearn_optimum(x, y, l1=L1, l2=L2):
  """(w*, seconds) of sklearn saga with the mapping of the module docstring."""
  from sklearn.linear_model import LogisticRegression
  t0 = time.perf_counter()
  clf = LogisticRegression(C=1 / (x.shape[0] * (l1 + l2)), l1_ratio=l1 / (l1 + l2), solver="saga",
                           fit_intercept=False, tol=1e-10, max_iter=100000).fit(x, y)
  return clf.coef_.ravel(), time.perf_counter() - t0


def objective(x, y, w, l1=L1, l2=L2):
  return float(np.mean(np.logaddexp(0, -y * (x @ w))) + l1 * np.abs(w).sum() + 0.5 * l2 * w @ w)


def gap_of(workdir: str) -> None:
  """Prints the gaps and the device memory of a launch.py run (module docstring, ``--gap_of``)."""
  import json

  import ml_collections

  from common import train
  from common.metrics import read_metrics
  with open(os.path.join(workdir, "config.json")) as f:
    config = ml_collections.ConfigDict(json.load(f))
  a = config.algo
  if config.model != "logistic" or a.prox != "elastic_net" or config.use_bias:
    raise SystemExit(f"--gap_of: needs model logistic, prox elastic_net, no bias (configs/vr_prox_sparse.py); "
                     f"got {config.model}, {a.prox}, use_bias={config.use_bias}")
  ds = train.load_dataset(config)
  x, y = ds.x_train.astype(np.float64), np.where(ds.y_train == 1, 1.0, -1.0)
  w_star, seconds = sklearn_optimum(x, y, a.l1, a.l2)
  p_star = objective(x, y, w_star, a.l1, a.l2)
  print(f"{x.shape[0]} x {x.shape[1]} training rows, {x.nnz:,} nonzeros; sklearn saga P* = {p_star:.10f} "
        f"({np.count_nonzero(w_star)} nonzeros) in {seconds:.1f} s")
  for row in read_metrics(workdir):
    print(f"  epoch {row['step']}: P = {row['loss']:.8f} (float32, on device)  gap {(row['loss'] - p_star) / p_star:.2e}"
          f"  bytes {row['bytes']:,.0f}")
  w = np.load(os.path.join(workdir, "final_params.npz"))["['params']['Dense_0']['kernel']"].astype(np.float64).ravel()
  print(f"final params: P = {objective(x, y, w, a.l1, a.l2):.10f}, gap {(objective(x, y, w, a.l1, a.l2) - p_star) / p_star:.2e}"
        f" (float64 on the CSR matrix), {np.count_nonzero(w)} nonzeros")
  exp = train.build(config, ds)
  memory = exp.compile().memory_analysis()
  rows = exp.shard.mask.shape[0] // exp.mesh.shape["data"]
  print(f"per device: arguments {memory.argument_size_in_bytes:,} B, temporaries {memory.temp_size_in_bytes:,} B, "
        f"outputs {memory.output_size_in_bytes:,} B; its {rows:,} rows as ELL {type(exp.shard.x).__name__} width "
        f"{exp.shard.x.values.shape[1]}: {rows * exp.shard.x.values.shape[1] * 8:,} B; dense they would take "
        f"{rows * x.shape[1] * 4:,} B")


def ell_shards(x, y, k):
  """float32 ELL rows of ``x`` as k padded equal shards flattened for P('data'), and their mask."""
  parts = np.array_split(np.arange(x.shape[0]), k)
  rows = max(len(p) for p in parts)
  idx, val = vr_prox.ell_from_csr(x.indptr, x.indices, x.data, dtype=np.float32)
  arrays = (idx, val, y.astype(np.float32))
  out = [np.zeros((k, rows) + a.shape[1:], a.dtype) for a in arrays]
  mask = np.zeros((k, rows), np.float32)
  for d, p in enumerate(parts):
    for o, a in zip(out, arrays):
      o[d, :len(p)] = a[p]
    mask[d, :len(p)] = 1
  return tuple(jnp.asarray(o.reshape((k * rows,) + o.shape[2:])) for o in out), jnp.asarray(mask.reshape(-1))


def run_epochs(step, p, s, args, epochs, gap):
  """Blocking epochs; returns (gaps, seconds per epoch), the first (compiling) call timed apart."""
  gaps, times = [], []
  for e in range(epochs):
    t0 = time.perf_counter()
    p, s = step(p, s, *args, jax.random.PRNGKey(e))
    jax.block_until_ready(p)
    times.append(time.perf_counter() - t0)
    gaps.append(gap(np.asarray(p, np.float64)))
    print(f"  epoch {e + 1}: gap {gaps[-1]:.3e}  {times[-1]:.2f} s", flush=True)
  return gaps, times


def dap_svrg_run(x, y, epochs, batch, gap, lr):
  n, dim = x.shape
  ell, mask = ell_shards(x, y, K)
  rounds = n // (K * batch)
  tx = vr_prox.dap_svrg(lr * K, vr_prox.prox_elastic_net(L1, L2), relaxation="auto")
  mesh = jax.make_mesh((K,), ("data",), axis_types=(AxisType.Auto,))
  step = vr_prox.sharded_epoch(vr_prox.ell_logistic_loss, tx, mesh, rounds=rounds, batch_size=batch)
  p0 = jnp.zeros(dim, jnp.float32)
  t0 = time.perf_counter()
  compiled = step.lower(p0, tx.init(p0), ell, mask, jax.random.PRNGKey(0)).compile()
  compile_s = time.perf_counter() - t0
  rep = collective_bytes(compiled)
  gaps, times = run_epochs(compiled, p0, tx.init(p0), (ell, mask), epochs, gap)
  return dict(rounds=rounds, gaps=gaps, times=times, compile_s=compile_s, measured=rep.payload,
              analytic=(rounds + 1) * vr_prox.payload_bytes(p0) + 4, per_round=vr_prox.payload_bytes(p0),
              fill=vr_prox.ell_fill(ell[1]), width=int(ell[0].shape[1]))


def prox_svrg_run(x, y, epochs, batch, gap, lr):
  n, dim = x.shape
  ell, mask = ell_shards(x, y, 1)
  tx = vr_prox.prox_svrg(lr, vr_prox.prox_elastic_net(L1, L2))
  step = jax.jit(vr_prox.epoch_fn(vr_prox.ell_logistic_loss, tx, rounds=n // batch, batch_size=batch,
                                  axis_name=None))
  p0 = jnp.zeros(dim, jnp.float32)
  gaps, times = run_epochs(step, p0, tx.init(p0), (ell, mask), epochs, gap)
  return dict(rounds=n // batch, gaps=gaps, times=times)


def report(args, load, ref, dap, serial) -> str:
  (n, d), mib = load["shape"], 2 ** 20
  sci = lambda v: f"{v:.1e}"  # noqa: E731
  lines = [
      "### vr_prox: DAP-SVRG on a sparse problem of >= 100k features (ELL rows on device)",
      "",
      f"`python -m benchmarks.vr_prox_sparse --rows {args.rows} --features {args.features} --epochs {args.epochs}"
      f" --batch {args.batch} --lr {args.lr}` (load average at start: {args.load}). Problem: `common.data.sparse_logistic_csr`"
      f" (seed 0) written as svmlight and read back by `common.data.load`: {n} x {d}, {load['nnz']:,} nonzeros"
      f" ({load['nnz'] / n:.1f} per row); l1 = {L1}, l2 = {L2}; sklearn saga (C = 1/(n (l1 + l2)) ="
      f" {1 / (n * (L1 + L2)):.4g}, l1_ratio = l1/(l1 + l2) = {L1 / (L1 + L2):.4g}, no intercept, tol 1e-10)"
      f" gives P* = {ref['p_star']:.10f} with {ref['nnz']} nonzero weights in {ref['seconds']:.1f} s.",
      "",
      f"Loading: {load['seconds']:.2f} s, kept sparse ({'scipy CSR' if load['sparse'] else 'DENSE'}):"
      f" {load['csr_bytes'] / mib:.1f} MiB of CSR arrays, peak RSS growth during the load (Linux VmHWM after `clear_refs`) {load['peak'] / mib:.1f} MiB;"
      f" densifying would take {load['dense_bytes'] / mib:,.0f} MiB (float32)."
      f" On device: ELL width {dap['width']} (longest row), fill {dap['fill']:.2f}.",
      "",
      "| epoch | DAP-SVRG K = 8 (theta = 1/8, D = 0) gap | ProxSVRG (1 device) gap |",
      "|---|---|---|",
  ]
  for e in range(args.epochs):
    lines.append(f"| {e + 1} | {sci(dap['gaps'][e])} | {sci(serial['gaps'][e])} |")
  steady = lambda t: float(np.median(t[1:])) if len(t) > 1 else t[0]  # noqa: E731
  lines += [
      "",
      f"Gap = (P(w) - P*)/P*, P in float64 numpy on the CSR matrix, iterates in float32. Minibatch {args.batch}"
      f" rows per worker per round; DAP-SVRG {dap['rounds']} rounds/epoch, ProxSVRG {serial['rounds']} steps"
      f" of {args.batch} rows/epoch; step gamma = {args.lr:g} = 1/L (unit rows: L_i = 1/4; DAP: gamma/theta = {K * args.lr:g} with"
      f" theta = 1/8).",
      f"Bytes per device per epoch, measured from the compiled program (`common.comm.collective_bytes`):"
      f" {dap['measured']:,.0f} B = analytic (rounds + 1) x params + 4 = {dap['analytic']:,} B"
      f" ({'equal' if dap['measured'] == dap['analytic'] else 'DIFFERENT'}); per round = params ="
      f" {dap['per_round']:,} B (4 d).",
      f"Time per epoch (median of epochs 2..{args.epochs}, blocking, 8 simulated CPU devices on 2 shared cores):"
      f" DAP-SVRG {steady(dap['times']):.2f} s ({1e3 * steady(dap['times']) / dap['rounds']:.2f} ms/round),"
      f" compile {dap['compile_s']:.1f} s; ProxSVRG {steady(serial['times']):.2f} s.",
  ]
  return "\n".join(lines)


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--rows", type=int, default=20000)
  ap.add_argument("--features", type=int, default=100000)
  ap.add_argument("--epochs", type=int, default=12)
  ap.add_argument("--batch", type=int, default=8)
  ap.add_argument("--lr", type=float, default=4.0, help="step gamma (rows have unit norm: L_i = 1/4)")
  ap.add_argument("--quick", action="store_true", help="2000 x 100000, 4 epochs, no results file")
  ap.add_argument("--gap_of", help="a launch.py workdir of configs/vr_prox_sparse.py: its gaps and memory")
  args = ap.parse_args()
  if args.gap_of:
    return gap_of(args.gap_of)
  if args.quick:
    args.rows, args.epochs = 2000, 4
  args.load = " ".join(f"{v:.1f}" for v in os.getloadavg())
  path, write_s = write_problem(args.rows, args.features)
  print(f"problem file {path} (written in {write_s:.1f} s)" if write_s else f"problem file {path} (cached)")
  x, y, load = load_problem(path)
  print(f"loaded {load['shape']} nnz {load['nnz']:,} in {load['seconds']:.2f} s, CSR {load['csr_bytes']:,} B,"
        f" dense would be {load['dense_bytes']:,} B", flush=True)
  w_star, ref_s = sklearn_optimum(x, y)
  p_star = objective(x, y, w_star)
  ref = dict(p_star=p_star, nnz=int(np.count_nonzero(w_star)), seconds=ref_s)
  print(f"sklearn saga P* = {p_star:.10f} ({ref['nnz']} nonzeros) in {ref_s:.1f} s", flush=True)

  def gap(w):
    return (objective(x, y, w) - p_star) / p_star

  print("DAP-SVRG, K = 8", flush=True)
  dap = dap_svrg_run(x, y, args.epochs, args.batch, gap, args.lr)
  print(f"  bytes/device/epoch measured {dap['measured']:,.0f}, analytic {dap['analytic']:,}", flush=True)
  print("ProxSVRG, one device", flush=True)
  serial = prox_svrg_run(x, y, args.epochs, args.batch, gap, args.lr)
  text = report(args, load, ref, dap, serial)
  print(text)
  if not args.quick:
    print("wrote", write_result("vr_prox_sparse", text))


if __name__ == "__main__":
  main()
