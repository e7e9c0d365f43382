"""Two processes x 4 CPU devices on JAX's distributed runtime (gloo) over loopback (127.0.0.1 only).

Killing either process ends the other with the harness's one line naming the lost peer and exit
code 4 within ``--peer_timeout``; a peer that never starts ends process 0 within ``--init_timeout``;
gloo's per-rank "connected" lines stay out of the output.
"""
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from common.errors import EXIT_PEER

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMMON = ["--config", "configs/baseline_digits.py", "--config.num_steps=30", "--config.eval_every=0",
          "--config.checkpoint_every=0", "--config.log_every=10"]
PEER_TIMEOUT = 10


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
      os.killpg(p.pid, signal.SIGKILL)  # the whole group: the launcher and its training child
      p.wait()


def _two_processes(tmp_path, extra, workdir):
  port = _free_port()
  procs = []
  for i in range(2):
    log = open(tmp_path / f"proc{i}.log", "w")
    procs.append(_start([*COMMON, *extra, "--num_processes=2", f"--process_id={i}",
                         f"--coordinator=127.0.0.1:{port}", "--workdir", str(workdir)], log))
  return procs


def _log(tmp_path, i):
  path = tmp_path / f"proc{i}.log"
  return path.read_text() if path.exists() else ""


def _logs(tmp_path):
  return "\n".join(_log(tmp_path, i) for i in range(2))


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
  logs = _logs(tmp_path)
  assert "on 8 cpu devices (2 process(es))" in logs
  assert "[Gloo]" not in logs and "connected peer ranks" not in logs, logs


def kill_one(tmp_path, victim: int) -> tuple[float, str]:
  """Starts two processes, kills ``victim``'s whole process group once steps run; returns
  (seconds until the survivor exited, its output). Asserts the survivor's harness line."""
  workdir = tmp_path / f"kill{victim}"
  procs = _two_processes(tmp_path, ["--config.num_steps=1000000", "--config.checkpoint_every=100",
                                    f"--peer_timeout={PEER_TIMEOUT}", "--step_timeout=60"], workdir)
  survivor = 1 - victim
  try:
    metrics = workdir / "metrics.jsonl"
    deadline = time.monotonic() + 240
    while not (metrics.exists() and len(metrics.read_text().splitlines()) > 150):   # a checkpoint exists
      assert time.monotonic() < deadline, _logs(tmp_path)
      assert all(p.poll() is None for p in procs), _logs(tmp_path)
      time.sleep(0.5)
    os.killpg(procs[victim].pid, signal.SIGKILL)
    killed_at = time.monotonic()
    code = procs[survivor].wait(timeout=PEER_TIMEOUT + 60)
    elapsed = time.monotonic() - killed_at
  finally:
    _kill(procs)
  out = _log(tmp_path, survivor)
  last = out.strip().splitlines()[-1]
  assert code == EXIT_PEER, out[-3000:]
  assert last.startswith(f"error: process {survivor}: lost a peer:") and f"process {victim}" in last, out[-3000:]
  assert elapsed < PEER_TIMEOUT + 5, (elapsed, out[-3000:])
  assert "Traceback" not in out and "Check failure" not in out and "[Gloo]" not in out, out[-3000:]
  checkpoints = sorted(p.name for p in (workdir / "checkpoints").iterdir())
  assert checkpoints and all(name.isdigit() for name in checkpoints), checkpoints   # finalised, no tmp dirs
  return elapsed, last


def test_killing_a_peer_ends_the_survivor_with_the_harness_line(tmp_path):
  kill_one(tmp_path, victim=1)


@pytest.mark.slow
@pytest.mark.parametrize("victim", [0, 1])
def test_killing_either_peer_five_times(tmp_path, victim):
  times = []
  for attempt in range(5):
    (tmp_path / str(attempt)).mkdir()
    elapsed, _ = kill_one(tmp_path / str(attempt), victim)
    times.append(round(elapsed, 2))
  print(f"victim {victim}: survivor exited after {times} s")


def test_a_peer_that_never_starts_ends_process_zero_within_init_timeout(tmp_path):
  start = time.monotonic()
  proc = subprocess.run([sys.executable, "launch.py", *COMMON, "--num_processes=2", "--process_id=0",
                         f"--coordinator=127.0.0.1:{_free_port()}", "--init_timeout=5",
                         "--workdir", str(tmp_path / "alone")], cwd=ROOT, env=_env(), capture_output=True,
                        text=True, timeout=120)
  elapsed = time.monotonic() - start
  assert proc.returncode == EXIT_PEER, proc.stderr[-3000:]
  assert "waiting up to 5 s (--init_timeout) for every process" in proc.stderr
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith("error: process 0: lost a peer: not every process joined within --init_timeout"), last
  assert "Check failure" not in proc.stderr and "Traceback" not in proc.stderr
  assert elapsed < 60, elapsed
