"""Runs many ``launch.py`` command lines in one process, through ``launch.main`` itself.

    python tests/launch_batch.py CASES.json RESULTS.json

``CASES.json``: a list of argv lists (what follows ``launch.py``). For each, in order, the flags
are reset to their defaults, file descriptors 1 and 2 are redirected to files, and
``launch.main(["launch.py", *argv])`` runs (what ``python launch.py ...`` runs before
``sys.exit``); an exception escaping ``main`` is written to the captured stderr as its traceback,
as the interpreter would. ``RESULTS.json``: per case its return code, captured stdout and
stderr, seconds, and whether JAX had been imported before and after the case (cases that must
be refused before JAX go first). ``tests/test_launch_bad_inputs.py`` asserts on these; a few cases
there still run as their own ``launch.py`` processes.
"""
import json
import os
import sys
import tempfile
import time
import traceback

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _captured(fn):
  """(fn()'s return, stdout text, stderr text) with fds 1 and 2 sent to temporary files."""
  saved = {fd: os.dup(fd) for fd in (1, 2)}
  files = {fd: tempfile.TemporaryFile("w+") for fd in (1, 2)}
  sys.stdout.flush()
  sys.stderr.flush()
  for fd, f in files.items():
    os.dup2(f.fileno(), fd)
  try:
    try:
      code = fn()
    except SystemExit as e:
      code = e.code
    except BaseException:   # noqa: BLE001 -- reported as the interpreter would: a traceback, exit 1
      traceback.print_exc()
      code = 1
  finally:
    sys.stdout.flush()
    sys.stderr.flush()
    for fd in (1, 2):
      os.dup2(saved[fd], fd)
      os.close(saved[fd])
  texts = []
  for fd in (1, 2):
    files[fd].seek(0)
    texts.append(files[fd].read())
    files[fd].close()
  return code, texts[0], texts[1]


def main(cases_path, results_path):
  os.chdir(ROOT)
  sys.path.insert(0, ROOT)
  from absl import flags
  import launch
  results = []
  for argv in json.load(open(cases_path)):
    flags.FLAGS.unparse_flags()
    jax_before, start = "jax" in sys.modules, time.monotonic()
    code, out, err = _captured(lambda: launch.main(["launch.py", *argv]))
    results.append({"returncode": code, "stdout": out, "stderr": err, "seconds": time.monotonic() - start,
                    "jax_before": jax_before, "jax_after": "jax" in sys.modules})
  with open(results_path, "w") as f:
    json.dump(results, f)


if __name__ == "__main__":
  main(*sys.argv[1:])
