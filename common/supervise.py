"""Multi-process runs: each ``launch.py`` process runs its training in a child and watches it.

When a peer dies, JAX's runtime usually ends the survivor before any Python handler runs: the
coordination service's heartbeat check aborts the process (C++ ``LOG(FATAL)``, exit -6, stack
dump), or gloo raises a misleading "collective mismatch". The parent here imports no JAX; it
forwards the child's output, keeps gloo's per-rank "connected" lines out of it, and when the
child fails it ends with one harness line naming the lost peer (from the runtime's own words)
and exit code ``EXIT_PEER``, within ``--peer_timeout`` (the heartbeat timeout) of the loss. The
runtime's dump goes to ``<workdir>/process<i>-runtime.log``, not to the terminal. Checkpoints
are written atomically by orbax, so the last one stays intact.
"""
from __future__ import annotations

import collections
import ctypes
import os
import re
import signal
import subprocess
import sys

from common.errors import EXIT_CONFIG, EXIT_NONFINITE, EXIT_PEER

CHILD_ENV = "COMM_HARNESS_CHILD"
# gloo prints these from several threads at once, so a line may be a fragment of one
_GLOO_CONNECTED = re.compile(r"\[Gloo\]|connected peer ranks|is connected to \d+ peer|^\s*\d+\s*$")
# the first line of a runtime crash report or of the runtime's own complaint about a lost task;
# nothing after it goes to the terminal (it goes to the runtime log)
_FATAL = re.compile(r"^(F\d{4} |\*\*\* Check failure|Fatal Python error|terminate called|"
                    r"[WE]\d{4} .*(coordination_service|preemption_sync_manager|client\.h))")


def is_child() -> bool:
  return os.environ.get(CHILD_ENV) == "1"


def lost_peer(output: str, process_id: int, num_processes: int) -> str | None:
  """What the runtime's output says about the lost peer, as words for the harness line (or None)."""
  others = [p for p in range(num_processes) if p != process_id]
  if re.search(r"did not join within --init_timeout|CoordinationService/RegisterTask", output):
    return ("not every process joined within --init_timeout (a peer never started, or process 0, which hosts "
            "the coordinator, is not running)")
  unhealthy = re.search(r"unhealthy \(stopped sending heartbeats\):\s*([\d,\s]+?)\s*(?:The tasks|$)", output)
  if unhealthy:
    ids = sorted({int(t) for t in re.findall(r"\d+", unhealthy.group(1))})
    return f"peer process {', '.join(map(str, ids))} stopped sending heartbeats"
  timeouts = sorted({int(t) for t in re.findall(r"Task (\d+) heartbeat timeout", output)} - {process_id})
  if timeouts:
    return f"peer process {', '.join(map(str, timeouts))} stopped sending heartbeats"
  if re.search(r"leader task was preempted/died|Failed to send RPC to coordination service", output):
    return "peer process 0 (the coordinator) is gone"
  if re.search(r"Connection closed by peer|Connection reset by peer|Gloo \w+ failed|gloo::EnforceNotMet|"
               r"gloo::IoException", output):
    who = f"peer process {others[0]}" if len(others) == 1 else "a peer process"
    return f"{who} is gone (its gloo connection closed)"
  timeout = re.search(r"step (\d+) did not finish within --step_timeout", output)
  if timeout:
    return f"no peer answered while this process waited on step {timeout.group(1)} (hung or gone)"
  return None


def _die_with_parent():  # runs in the child before exec: SIGKILL it when the parent dies
  try:
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
  except OSError:
    pass


def run_child(argv: list[str], *, process_id: int, num_processes: int, workdir: str) -> int:
  """Runs ``python argv`` as this process's training child; returns the exit code to exit with."""
  env = dict(os.environ, **{CHILD_ENV: "1", "PYTHONUNBUFFERED": "1"})
  child = subprocess.Popen([sys.executable, *argv], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           preexec_fn=_die_with_parent, text=True, errors="replace")
  for sig in (signal.SIGTERM, signal.SIGINT):
    signal.signal(sig, lambda signum, frame: child.send_signal(signum))
  tail = collections.deque(maxlen=2000)
  crashed, harness_error = False, False
  for line in child.stdout:
    tail.append(line)
    crashed = crashed or bool(_FATAL.match(line))
    if not crashed and not _GLOO_CONNECTED.search(line):
      harness_error = harness_error or line.startswith("error: ") or "] error: " in line
      sys.stderr.write(line)
      sys.stderr.flush()
  code = child.wait()
  if code == 0 or (harness_error and code in (EXIT_CONFIG, EXIT_NONFINITE)):
    return code
  output = "".join(tail)
  saved = _save(output, workdir, process_id)
  why = lost_peer(output, process_id, num_processes)
  if why is None:
    sys.stderr.write(f"error: process {process_id}: the run failed (exit code {code}); runtime output: {saved}\n")
    return code if code > 0 else EXIT_PEER
  sys.stderr.write(f"error: process {process_id}: lost a peer: {why}; exiting with code {EXIT_PEER}. "
                   f"Checkpoints in {os.path.join(workdir, 'checkpoints')} are intact; runtime output: {saved}\n")
  return EXIT_PEER


def _save(output: str, workdir: str, process_id: int) -> str:
  try:
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, f"process{process_id}-runtime.log")
    with open(path, "w") as f:
      f.write(output)
    return path
  except OSError:
    return "(not saved)"
