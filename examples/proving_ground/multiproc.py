"""The 2-process column: every row's ``plain`` case on 2 processes x 4 CPU devices (JAX's
distributed runtime, gloo over 127.0.0.1), compared with 1 process x 8 devices.

    python examples/proving_ground/run.py --two_process     # launches both workers, adds the column

Each worker (``--process_id i``) joins the runtime, builds the 8-device global mesh and runs the
rows exactly as the single-process table does; process 0 writes the final params to ``--out``.
"""
from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
DEVICES = 8


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def launch(out_path: str, rows: list[str], num_processes: int = 2, timeout: float = 300) -> list[str]:
  """Runs the workers to completion; returns their logs. Raises RuntimeError on a failure."""
  port = _free_port()
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env.pop("XLA_FLAGS", None)       # the worker sets its own device count
  procs, logs = [], []
  for i in range(num_processes):
    log = open(f"{out_path}.{i}.log", "w")
    logs.append(log.name)
    procs.append(subprocess.Popen(
        [sys.executable, os.path.join(HERE, "multiproc.py"), "--worker", f"--process_id={i}",
         f"--num_processes={num_processes}", f"--port={port}", f"--out={out_path}", f"--rows={','.join(rows)}"],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
  try:
    codes = [p.wait(timeout=timeout) for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        os.killpg(p.pid, signal.SIGKILL)   # JAX's preemption handler swallows SIGTERM
        p.wait()
  text = [open(name).read() for name in logs]
  if codes != [0] * num_processes:
    raise RuntimeError(f"workers exited with {codes}:\n" + "\n".join(t[-3000:] for t in text))
  return text


def _worker(args):
  import jax
  jax.config.update("jax_num_cpu_devices", DEVICES // args.num_processes)
  jax.distributed.initialize(coordinator_address=f"127.0.0.1:{args.port}", num_processes=args.num_processes,
                             process_id=args.process_id, initialization_timeout=60)
  sys.path.insert(0, os.path.dirname(HERE))
  from proving_ground import cases, methods, spmd
  mesh = spmd.make_mesh()
  assert mesh.size == DEVICES and jax.process_count() == args.num_processes
  saved = {}
  for name in args.rows.split(","):
    out = methods.BY_NAME[name].run(cases.BY_NAME["plain"], mesh, {"step": 0})
    for i, leaf in enumerate(jax.tree.leaves(out.sharded)):
      saved[f"{name}/{i}"] = np.asarray(leaf)
    print(f"{name}: done", flush=True)
  if args.process_id == 0:
    np.savez(args.out, **saved)
  jax.distributed.shutdown()


def load(path: str, rows: list[str]) -> dict[str, list[np.ndarray]]:
  """``{row: [leaves]}`` written by process 0."""
  data = np.load(path)
  return {r: [data[k] for k in sorted((k for k in data.files if k.startswith(r + "/")),
                                      key=lambda k: int(k.rsplit("/", 1)[1]))] for r in rows}


def main():
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--worker", action="store_true")
  parser.add_argument("--process_id", type=int, default=0)
  parser.add_argument("--num_processes", type=int, default=2)
  parser.add_argument("--port", type=int, default=0)
  parser.add_argument("--out", default="/tmp/proving_ground_2proc.npz")
  parser.add_argument("--rows", default="")
  args = parser.parse_args()
  if not args.worker:
    parser.error("this is the worker; run `python examples/proving_ground/run.py --two_process`")
  _worker(args)


if __name__ == "__main__":
  main()
