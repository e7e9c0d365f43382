"""1-bit gradient coding with real stragglers on Ray (common/async_ray/gc.py) against NumPy.

In-process (no Ray, fast): the workers' messages decoded by the coordinator equal the NumPy
formulas of spec sign1bit.md §2.3/§5.1 for the messages that arrived -- SGC (1/N) sum_{i in R} c_i
with c_i = sum_{k in S_i} grad f_k / (d (1 - s/K)), ignore-stragglers (1/|R|) sum_{i in R} grad f_i --
and 1-bit GC with B = 'linf' equals ``sign1bit.reference_decode`` fed NumPy gradients; the injected
delays are seeded with the configured means. Against the SPMD version (``gc_spmd.spmd_run``:
``sign1bit``'s transformation in ``shard_map`` on a K-device mesh): with every worker waited for,
the runtime's workers + coordinator give the SPMD iterates step by step, in-process and (slow) on
Ray. The step-time model (``gc_model``) against a NumPy recomputation of its order statistic.
On Ray (slow: a private local node on loopback that the test starts and stops): K = 3 with a
worker killed mid-run (a permanent straggler, logged) and a lost DAP server (exit 4, one line
naming it and the kept checkpoint).
"""
import dataclasses
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from common.async_ray import gc

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAM = 1e-3


def _keep_env(monkeypatch):
  for name in ("XLA_FLAGS", "JAX_PLATFORMS"):   # workers set them for their own process
    if name in os.environ:
      monkeypatch.setenv(name, os.environ[name])
    else:
      monkeypatch.delenv(name, raising=False)


def _partition_grad_np(w, x, y):
  """grad of f_k(w) = mean softmax cross-entropy + (LAM/2)||w||^2, w flat (65 x 10 row-major)."""
  w = np.asarray(w, np.float64).reshape(65, 10)
  logits = x.astype(np.float64) @ w
  p = np.exp(logits - logits.max(1, keepdims=True))
  p /= p.sum(1, keepdims=True)
  p[np.arange(len(y)), y] -= 1.0
  return (x.T @ p / len(y) + LAM * w).ravel()


def _workers(spec, monkeypatch):
  _keep_env(monkeypatch)
  xs, ys, _, _ = gc.load_digits(spec)
  alloc = gc.make_allocation(spec)
  return [gc.GCWorker(i, spec, xs[alloc.index[i]], ys[alloc.index[i]]) for i in range(spec.num_workers)], xs, ys


W0 = np.random.default_rng(0).normal(size=650).astype(np.float32) * 0.05


@pytest.mark.parametrize("method", ["sgc", "ignore_stragglers"])
def test_real_valued_decode_of_the_arrivals_matches_numpy(method, monkeypatch):
  spec = gc.GCSpec(method=method, num_workers=3, allocation="cyclic", redundancy=2, wait="first",
                   num_stragglers=1, delay="none", lr=0.5)
  workers, xs, ys = _workers(spec, monkeypatch)
  alloc = gc.make_allocation(spec)
  arrived = [0, 2]                                      # worker 1 is the straggler
  msgs = {i: workers[i].step(W0, 7) for i in arrived}
  w_next, g = gc.Decoder(spec)(W0, spec.lr, msgs)
  part = np.stack([_partition_grad_np(W0, x, y) for x, y in zip(xs, ys)])   # [N, D]
  local = alloc.matrix.astype(np.float64) @ part                          # sum_{k in S_i} grad f_k
  if method == "sgc":
    d, n = 2, alloc.num_partitions
    want = sum(local[i] / (d * (1 - 1 / 3)) for i in arrived) / n
  else:
    want = local[arrived].mean(0)
  np.testing.assert_allclose(g, want, rtol=2e-5, atol=2e-6)
  np.testing.assert_allclose(w_next, W0 - spec.lr * want, rtol=2e-5, atol=2e-6)
  assert all(gc.message_bytes(m) == 4 * 650 for m in msgs.values())


def test_one_bit_linf_equals_reference_decode_of_numpy_gradients(monkeypatch):
  import sign1bit
  spec = gc.GCSpec(method="gc_linf", num_workers=2, redundancy=1, wait="all", delay="none", seed=3)
  workers, xs, ys = _workers(spec, monkeypatch)
  alloc = gc.make_allocation(spec)
  step = 11
  msgs = {i: w.step(W0, step) for i, w in enumerate(workers)}
  _, g = gc.Decoder(spec)(W0, 0.1, msgs)
  part = np.stack([_partition_grad_np(W0, x, y) for x, y in zip(xs, ys)])
  want, active = sign1bit.reference_decode(alloc.matrix.astype(np.float64) @ part, alloc, 0.0, "linf",
                                           seed=3, step=step)
  assert np.all(np.asarray(active))
  np.testing.assert_allclose(g, np.asarray(want), rtol=1e-5, atol=1e-6)
  assert all(gc.message_bytes(m) == 82 + 4 for m in msgs.values())     # ceil(650 / 8) bytes + one f32
  other = gc.Decoder(spec)(W0, 0.1, {i: w.step(W0, step + 1) for i, w in enumerate(workers)})[1]
  assert np.abs(other - g).max() > 0   # fresh quantiser noise every step


def test_injected_delays_are_seeded_with_the_configured_mean():
  exp = gc.GCSpec(delay="exponential", delay_mean_s=0.05, delay_cap_s=100.0)
  par = gc.GCSpec(delay="pareto", delay_mean_s=0.05, pareto_shape=1.5, delay_cap_s=100.0)
  n = 4000
  d_exp = np.array([gc.draw_delay(exp, 1, t) for t in range(n)])
  assert abs(d_exp.mean() - 0.05) < 4.5 * 0.05 / np.sqrt(n)
  d_par = np.array([gc.draw_delay(par, 1, t) for t in range(n)])
  x_m = 0.05 * 0.5 / 1.5
  assert d_par.min() >= x_m and abs(np.median(d_par) / (x_m * 2 ** (1 / 1.5)) - 1) < 0.08
  assert np.quantile(d_par, 0.999) > 10 * np.quantile(d_exp, 0.5)     # the heavy tail
  assert gc.draw_delay(exp, 1, 5) == gc.draw_delay(exp, 1, 5) != gc.draw_delay(exp, 2, 5)
  assert gc.draw_delay(gc.GCSpec(delay="pareto", delay_cap_s=0.2, delay_mean_s=10.0), 0, 0) == 0.2


NO_STRAGGLERS = gc.GCSpec(method="gc_linf", num_workers=3, allocation="cyclic", redundancy=2, wait="all",
                          delay="none", lr=0.3, seed=5)


@pytest.mark.slow   # 43 s at load 27 on 2 cores (a 3-device shard_map program and 3 worker programs)
def test_runtime_iterates_equal_the_spmd_sign1bit_run(monkeypatch):
  """K = 3 (cyclic d = 2, l = 2 partitions per worker), 1-bit B = 'linf', p = 0: the Ray runtime's
  GCWorker messages decoded by its coordinator give w_1..w_4 of the SPMD run with the same seed
  (the same quantizer keys from the same w_t; 0.0 difference measured in one process)."""
  from common.async_ray import gc_spmd
  spec, steps = NO_STRAGGLERS, 4
  want = gc_spmd.spmd_run(spec, steps)
  workers, _, _ = _workers(spec, monkeypatch)
  decoder, w = gc.Decoder(spec), np.zeros(650, np.float32)
  for t in range(steps):
    w, _ = decoder(w, spec.lr, {i: worker.step(w, t) for i, worker in enumerate(workers)})
    np.testing.assert_allclose(w, want[t + 1], rtol=0, atol=1e-6, err_msg=f"step {t + 1}")
  assert np.abs(want[steps]).max() > 0.05   # moved: not a comparison of zeros


def test_step_model_is_the_order_statistic_of_the_seeded_delays():
  """gc_model: the median costs are recovered from timing records built from known costs, and each
  predicted step is dispatch + decode + eval + the n-th smallest (lead + delay), NumPy-sorted."""
  from common.async_ray import gc_model
  c = {"dispatch": 0.004, "compute": 0.01, "msg": 0.02, "decode": 0.001, "eval": 0.003}
  spec = gc.GCSpec(num_workers=4, wait="first", num_stragglers=1, delay="exponential", delay_mean_s=0.05)
  timing = []
  for t in range(9):
    arr = [(i, c["compute"], gc.draw_delay(spec, i, t), c["msg"] + c["compute"] + gc.draw_delay(spec, i, t))
           for i in range(4)]
    timing.append({"step": t, "live": [0, 1, 2, 3], "dispatch_s": c["dispatch"], "decode_s": c["decode"],
                   "eval_s": c["eval"], "arrivals": arr[:3]})
  got = gc_model.measured_costs(timing)
  assert got == pytest.approx(c, abs=1e-12)
  for wait, k in (("first", 2), ("all", 3)):
    s = gc.GCSpec(**{**spec.__dict__, "wait": wait})
    times = gc_model.predict_step_times(s, got, range(9), [[0, 1, 2, 3]] * 9)
    for t in range(9):
      delays = np.sort([gc.draw_delay(s, i, t) for i in range(4)])
      assert times[t] == pytest.approx(0.008 + 0.03 + delays[k], abs=1e-12)
  s = gc.GCSpec(**{**spec.__dict__, "wait": "deadline", "deadline_s": 0.15})
  times = gc_model.predict_step_times(s, got, range(9), [[0, 1, 2, 3]] * 9)
  last = np.array([max(gc.draw_delay(s, i, t) for i in range(4)) for t in range(9)])
  np.testing.assert_allclose(times, 0.008 + np.minimum(0.15, 0.03 + last), rtol=0, atol=1e-12)
  assert np.any(0.03 + last < 0.15) and np.any(0.03 + last > 0.15)   # both cases occur
  assert gc_model.predict_step_times(spec, got, [0], [[0, 2]])[0] == pytest.approx(
      0.038 + max(gc.draw_delay(spec, 0, 0), gc.draw_delay(spec, 2, 0)))   # 2 live < K - s: wait for both


@pytest.mark.slow   # a private local Ray node (~25-60 s to start on 2 busy cores) and 3 worker actors
def test_ray_gc_iterates_equal_the_spmd_run(monkeypatch):
  """On Ray (loopback), NO_STRAGGLERS for 8 steps: the coordinator's iterates equal the SPMD run's
  (up to float32 rounding: the worker processes run XLA single-threaded; 1.2e-7 measured)."""
  import ray
  from common.async_ray import gc_spmd, ps
  _keep_env(monkeypatch)
  spec = dataclasses.replace(NO_STRAGGLERS, num_steps=8)
  started = ps.start_ray(spec.num_workers + 1)
  try:
    ws = []
    out = gc.run(spec, on_step=lambda record, w: ws.append(np.array(w)), log=lambda line: None)
  finally:
    if started:
      ray.shutdown()
  want = gc_spmd.spmd_run(spec, 8)[1:]
  assert [r["active"] for r in out["records"]] == [3] * 8
  np.testing.assert_allclose(np.stack(ws), want, rtol=0, atol=1e-5)
  assert np.abs(want[-1]).max() > 0.05


@pytest.mark.slow   # a private local Ray node (~25-60 s to start on 2 busy cores) and 3 worker actors
def test_ray_gc_killed_worker_is_a_logged_permanent_straggler(tmp_path, capsys, monkeypatch):
  from common.async_ray import runtime
  from common.metrics import read_metrics
  from configs.async_sign1bit import get_config
  _keep_env(monkeypatch)
  config = get_config()
  for k, v in dict(num_workers=3, allocation="cyclic", num_steps=16, kill_worker=1, kill_at_step=6,
                   delay_mean_s=0.01, log_every=100, checkpoint_every=8, step_timeout_s=60.0).items():
    config[k] = v
  result = runtime.run(config, str(tmp_path))
  out = capsys.readouterr().out
  # logged when the coordinator sees the death: at step 6 or later (the first K - s may arrive before
  # Ray reports the dead actor), never before it died
  seen = re.search(r"worker 1 lost at step (\d+) \([0-9.]+ s\); a permanent straggler from now on, 2 live: \[0, 2\]", out)
  assert seen and 6 <= int(seen.group(1)) < 16, out
  rows = read_metrics(str(tmp_path))
  assert [r["step"] for r in rows] == list(range(1, 17))
  assert all(r["active"] == 2 for r in rows)                       # first K - s = 2 every step
  assert all(1 not in r["arrived"] for r in rows[5:])               # dead from step 6 on
  assert all(r["live"] == [0, 2] for r in rows[int(seen.group(1)) - 1:])
  assert rows[-1]["uplink_bits"] == 16 * 2 * (650 + 32)
  assert rows[-1]["loss"] < rows[0]["loss"] < np.log(10) + 1e-3
  assert [d["worker"] for d in result.final["lost_workers"]] == [1]
  assert (tmp_path / "checkpoints" / "16" / "params.npz").exists()


@pytest.mark.slow
def test_lost_dap_server_is_one_line_and_the_checkpoint_is_kept(tmp_path):
  """The server actor's process exits at version 700 (epoch 2): exit 4, one line naming the
  parameter server and the last checkpoint (epoch 1), which is still on disk."""
  workdir = tmp_path / "run"
  proc = subprocess.run([sys.executable, "launch.py", "--config", "configs/async_dap_svrg.py",
                         "--config.kill_server_at_version=700", "--config.num_steps=3", "--workdir", str(workdir)],
                        cwd=ROOT, capture_output=True, text=True, timeout=400)
  errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
  assert proc.returncode == 4, proc.stderr[-2000:]
  assert len(errors) == 1 and "parameter server actor lost" in errors[0], proc.stderr[-2000:]
  assert f"last checkpoint kept: {workdir / 'checkpoints' / '1'}" in errors[0]
  assert "Traceback" not in proc.stderr
  assert (workdir / "checkpoints" / "1" / "params.npz").exists()


_HEAD = """
import os, sys, time, ray
ray.init(address="local", num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1")
port = ray.get_runtime_context().gcs_address.rsplit(":", 1)[1]
open(sys.argv[1] + ".tmp", "w").write(port)
os.replace(sys.argv[1] + ".tmp", sys.argv[1])
t = time.time()
while not os.path.exists(sys.argv[2]) and time.time() - t < 300:
  time.sleep(0.5)
ray.shutdown()
"""


def _with_head(tmp_path, env, body):
  """Runs ``body(port)`` against a separate local Ray head process (loopback), then stops it."""
  import time
  port_file, stop_file = tmp_path / "port", tmp_path / "stop"
  head = subprocess.Popen([sys.executable, "-c", _HEAD, str(port_file), str(stop_file)], env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  try:
    deadline = time.monotonic() + 150
    while not port_file.exists() and time.monotonic() < deadline and head.poll() is None:
      time.sleep(0.5)
    assert port_file.exists(), "the head node did not start"
    return body(port_file.read_text())
  finally:
    stop_file.touch()
    head.wait(timeout=120)


@pytest.mark.slow
@pytest.mark.parametrize("auth", ["token", "disabled"])
def test_ray_address_joins_a_running_head_or_is_one_line(tmp_path, auth):
  """ray_address = 127.0.0.1:<GCS port> of a head started here: with auth disabled on both sides the
  run joins it and finishes; a token-authenticated head (Ray's default) without the token is one
  line naming ray_address, exit 2."""
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  if auth == "disabled":
    env["RAY_AUTH_MODE"] = "disabled"
  else:
    env.pop("RAY_AUTH_MODE", None)

  def launch(port):
    return subprocess.run([sys.executable, "launch.py", "--config", "configs/async_sign1bit.py",
                           f"--config.ray_address=127.0.0.1:{port}", "--config.num_workers=2",
                           "--config.num_steps=3", "--workdir", str(tmp_path / "run")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)

  proc = _with_head(tmp_path, env, launch)
  if auth == "disabled":
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "run" / "checkpoints" / "3" / "params.npz").exists()
  else:
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert proc.returncode == 2 and len(errors) == 1, proc.stderr[-2000:]
    assert errors[0].startswith("error: config.ray_address: could not join the Ray cluster at '127.0.0.1:")
    assert "Traceback" not in proc.stderr


def _gc_config(**fields):
  from configs.async_sign1bit import get_config
  config = get_config()
  base = dict(num_workers=3, allocation="cyclic", redundancy=2, wait="all", delay="none", lr=0.3, seed=5,
              log_every=100)
  for k, v in {**base, **fields}.items():
    config[k] = v
  return config


def test_gc_resume_refuses_a_different_config_before_touching_the_workdir(tmp_path, capsys):
  """A GC workdir rerun with a changed non-resumable field (lr) is one line naming --workdir and
  the field, exit 2, before Ray starts; the stored config and metrics are kept."""
  import json
  from common.async_ray import runtime
  (tmp_path / "config.json").write_text(json.dumps(_gc_config(num_steps=5).to_dict()))
  (tmp_path / "metrics.jsonl").write_text('{"step": 1, "loss": 2.0}\n')
  assert runtime.main(_gc_config(num_steps=5, lr=0.1), str(tmp_path)) == 2
  err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
  assert len(err) == 1 and err[0].startswith("error: --workdir:") and "lr: 0.3 -> 0.1" in err[0], err
  assert json.loads((tmp_path / "config.json").read_text())["lr"] == 0.3
  assert (tmp_path / "metrics.jsonl").read_text() == '{"step": 1, "loss": 2.0}\n'


@pytest.mark.slow   # a private local Ray node and two runs of 3 worker actors
def test_ray_gc_resume_continues_from_the_last_checkpoint(tmp_path, capsys, monkeypatch):
  """Run 5 steps (checkpoints at 3 and 5), lose the step-5 checkpoint as a kill before the final save
  would, rerun with num_steps=8: it resumes at step 3, metrics.jsonl has one line per step 1..8, the
  counters continue, and w_8 equals the uninterrupted SPMD run's (no stragglers, same keys)."""
  import shutil
  import ray
  from common.async_ray import gc_spmd, ps, runtime
  from common.metrics import read_metrics
  _keep_env(monkeypatch)
  started = ps.start_ray(4)
  try:
    runtime.run(_gc_config(num_steps=5, checkpoint_every=3), str(tmp_path))
    first = read_metrics(str(tmp_path))
    shutil.rmtree(tmp_path / "checkpoints" / "5")
    runtime.run(_gc_config(num_steps=8, checkpoint_every=3), str(tmp_path))
  finally:
    if started:
      ray.shutdown()
  assert "resumed from checkpoint at step 3" in capsys.readouterr().out
  rows = read_metrics(str(tmp_path))
  assert [r["step"] for r in rows] == list(range(1, 9))
  assert rows[:3] == first[:3] and rows[3]["wall_time"] > first[2]["wall_time"]   # kept, not rerun
  assert [r["wall_time"] for r in rows[3:5]] != [r["wall_time"] for r in first[3:5]]   # 4 and 5 were redone,
  np.testing.assert_allclose([r["loss"] for r in rows[3:5]], [r["loss"] for r in first[3:5]], rtol=1e-5)  # same keys
  assert [r["uplink_bits"] for r in rows] == [3 * (650 + 32) * t for t in range(1, 9)]
  assert all(b["wall_time"] > a["wall_time"] for a, b in zip(rows, rows[1:]))
  want = gc_spmd.spmd_run(gc.GCSpec(**{**NO_STRAGGLERS.__dict__, "num_steps": 8}), 8)
  with np.load(tmp_path / "final_params.npz") as f:
    np.testing.assert_allclose(f["w"], want[8], rtol=0, atol=1e-5)
  assert np.abs(want[8] - want[3]).max() > 0.01   # the resumed steps moved w
