"""Two processes x 4 CPU devices on JAX's distributed runtime (gloo) over loopback."""
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMMON = ["--config", "configs/baseline_digits.py", "--config.num_steps=30", "--config.eval_every=0",
          "--config.checkpoint_every=0", "--config.log_every=10"]


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _env():
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env.pop("XLA_FLAGS", None)  # the launcher sets the per-process device count itself
  return env


def _start(args, log):
  return subprocess.Popen([sys.executable, "launch.py", *args], cwd=ROOT, env=_env(),
                          stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def _kill(procs):
  for p in procs:
    if p.poll() is None:
      os.killpg(p.pid, signal.SIGKILL)  # JAX's preemption handler swallows SIGTERM
      p.wait()


def _two_processes(tmp_path, extra, workdir):
  port = _free_port()
  procs = []
  for i in range(2):
    log = open(tmp_path / f"proc{i}.log", "w")
    procs.append(_start([*COMMON, *extra, "--num_processes=2", f"--process_id={i}",
                         f"--coordinator=127.0.0.1:{port}", "--workdir", str(workdir)], log))
  return procs


def _logs(tmp_path):
  return "\n".join((tmp_path / f"proc{i}.log").read_text() for i in range(2) if (tmp_path / f"proc{i}.log").exists())


def test_two_processes_match_one_process(tmp_path):
  procs = _two_processes(tmp_path, [], tmp_path / "multi")
  try:
    codes = [p.wait(timeout=240) for p in procs]
  finally:
    _kill(procs)
  assert codes == [0, 0], _logs(tmp_path)
  single = subprocess.run([sys.executable, "launch.py", *COMMON, "--workdir", str(tmp_path / "single")],
                          cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=240)
  assert single.returncode == 0, single.stderr[-3000:]
  multi = np.load(tmp_path / "multi" / "final_params.npz")
  ref = np.load(tmp_path / "single" / "final_params.npz")
  assert set(multi.files) == set(ref.files)
  for k in ref.files:
    np.testing.assert_allclose(multi[k], ref[k], rtol=1e-5, atol=1e-6)
  assert "on 8 cpu devices (2 process(es))" in _logs(tmp_path)


def test_dead_peer_makes_the_survivor_exit(tmp_path):
  workdir = tmp_path / "dead"
  procs = _two_processes(tmp_path, ["--config.num_steps=1000000", "--step_timeout=10"], workdir)
  try:
    metrics = workdir / "metrics.jsonl"
    deadline = time.monotonic() + 180
    while not (metrics.exists() and metrics.stat().st_size > 0):
      assert time.monotonic() < deadline, _logs(tmp_path)
      assert procs[0].poll() is None, _logs(tmp_path)
      time.sleep(0.5)
    os.killpg(procs[1].pid, signal.SIGKILL)
    killed_at = time.monotonic()
    code = procs[0].wait(timeout=90)
    elapsed = time.monotonic() - killed_at
  finally:
    _kill(procs)
  assert code != 0
  assert elapsed < 90
