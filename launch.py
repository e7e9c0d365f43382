r"""Runs one experiment: ``python launch.py --config configs/X.py[:arg] [--config.field=value ...]``.

Examples:
  python launch.py                                            # configs/default.py
  python launch.py --config configs/baseline_digits.py --config.lr=0.2 --workdir runs/lr02
  python launch.py --config configs/sfb_mlr_synthetic.py --config.num_steps=200

Several processes on JAX's distributed runtime (here two processes of 4 CPU devices each):
  python launch.py --num_processes 2 --process_id 0 --coordinator 127.0.0.1:12355 &
  python launch.py --num_processes 2 --process_id 1 --coordinator 127.0.0.1:12355

Writes ``<workdir>/config.json``, ``metrics.jsonl`` (one line per step), ``summary.json`` and
orbax checkpoints; rerunning with the same workdir resumes from the latest checkpoint.
"""
import os
import sys
import time

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config", os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", "default.py"),
    "Experiment config file (configs/*.py), optionally with ':arg'.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory (default runs/<config>-<time>).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", 1, "Processes in a multi-process run.")
_PROCESS_ID = flags.DEFINE_integer("process_id", 0, "This process's index in a multi-process run.")
_COORDINATOR = flags.DEFINE_string("coordinator", None, "host:port of process 0's coordinator.")
_STEP_TIMEOUT = flags.DEFINE_float(
    "step_timeout", 120.0, "Multi-process only: exit when no step finishes for this many seconds.")


def _default_workdir(config_path: str) -> str:
  name = os.path.splitext(os.path.basename(config_path.split(":")[0]))[0]
  return os.path.join("runs", f"{name}-{time.strftime('%Y%m%d-%H%M%S')}")


class _QuietLibraries:
  """Drops INFO records from orbax/etils so progress lines stay readable."""

  def filter(self, record):
    import logging as pylogging
    return record.levelno >= pylogging.WARNING or not any(
        part in record.pathname for part in ("/orbax/", "/etils/", "/jax/_src/"))


def main(argv):
  del argv
  logging.get_absl_handler().addFilter(_QuietLibraries())
  from common import mesh as mesh_lib
  from common.errors import ConfigError
  config = _CONFIG.value
  try:
    mesh_lib.configure_devices(config.num_devices, x64=config.x64, num_processes=_NUM_PROCESSES.value,
                               process_id=_PROCESS_ID.value, coordinator=_COORDINATOR.value)
    from common import train
    workdir = _WORKDIR.value or _default_workdir(flags.FLAGS["config"].config_filename)
    logging.info("config:\n%s", config)
    logging.info("workdir: %s", os.path.abspath(workdir))
    result = train.run(config, workdir,
                       step_timeout_s=_STEP_TIMEOUT.value if _NUM_PROCESSES.value > 1 else 0)
  except ConfigError as e:
    sys.exit(f"error: {e}")
  except train.NonFiniteError as e:
    sys.exit(f"error: {e}")
  if _NUM_PROCESSES.value > 1:
    import jax
    jax.distributed.shutdown()
  return 0 if result.status == "ok" else 1


if __name__ == "__main__":
  logging.set_verbosity(logging.INFO)
  app.run(main)
