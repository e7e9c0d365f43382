r"""Runs one experiment: ``python launch.py --config configs/X.py[:arg] [--config.field=value ...]``.

Examples:
  python launch.py                                            # configs/default.py
  python launch.py --config configs/baseline_digits.py --config.lr=0.2 --workdir runs/lr02
  python launch.py --config configs/sfb_mlr_synthetic.py --config.num_steps=200

Several processes on JAX's distributed runtime (here two processes of 4 CPU devices each):
  python launch.py --num_processes 2 --process_id 0 --coordinator 127.0.0.1:12355 &
  python launch.py --num_processes 2 --process_id 1 --coordinator 127.0.0.1:12355

Writes ``<workdir>/config.json``, ``metrics.jsonl`` (one line per step), ``summary.json`` and
orbax checkpoints (every ``checkpoint_every`` steps and always at the end); rerunning with the
same workdir resumes from the latest checkpoint, or says that nothing ran.

The command line is checked before JAX is imported (``common/cli.py``, ``common/fields.py``).
Exit codes: 0 done (or nothing to run); 2 bad flag, config field or workdir (one line
``error: --<flag or config.field>: ...``); 3 loss or parameters not finite (the last good
checkpoint is kept); 4 multi-process: a peer died, never joined, or a step hung (one line naming
the peer or the step, within ``--peer_timeout`` / ``--step_timeout``).
"""
import os
import sys

from absl import flags, logging

from common import cli, fields, supervise
from common.errors import EXIT_CONFIG, EXIT_NONFINITE, EXIT_OK, EXIT_PEER, ConfigError, FlagError, PeerError

ROOT = os.path.dirname(os.path.abspath(__file__))
_CONFIG = flags.DEFINE_string(
    "config", os.path.join(ROOT, "configs", "default.py"),
    "Experiment config file (configs/*.py), optionally with ':arg'; fields are overridden with "
    "--config.<field>=<value>.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory (default runs/<config>-<time>).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", 1, "Processes in a multi-process run.")
_PROCESS_ID = flags.DEFINE_integer("process_id", 0, "This process's index in a multi-process run.")
_COORDINATOR = flags.DEFINE_string("coordinator", None, "host:port of process 0's coordinator.")
_STEP_TIMEOUT = flags.DEFINE_float(
    "step_timeout", 120.0, "Multi-process only: exit (code 4) when no step finishes for this many seconds.")
_PEER_TIMEOUT = flags.DEFINE_integer(
    "peer_timeout", 30, "Multi-process only: a peer silent this many seconds is lost (exit code 4).")
_INIT_TIMEOUT = flags.DEFINE_integer(
    "init_timeout", 60, "Multi-process only: seconds to wait for every process to join.")


def _default_workdir(config_path: str) -> str:
  import time
  name = os.path.splitext(os.path.basename(config_path.split(":")[0]))[0]
  return os.path.join("runs", f"{name}-{time.strftime('%Y%m%d-%H%M%S')}")


class _QuietLibraries:
  """Drops INFO records from orbax/etils/jax so progress lines stay readable."""

  def filter(self, record):
    import logging as pylogging
    return record.levelno >= pylogging.WARNING or not any(
        part in record.pathname for part in ("/orbax/", "/etils/", "/jax/_src/"))


def _fail(message: str, code: int) -> int:
  logging.flush()
  sys.stderr.write(f"error: {message}\n")
  sys.stderr.flush()
  return code


def _parse(argv):
  """Flags and config, all checked without JAX; returns (config, workdir)."""
  rest, overrides = cli.split_config_args(argv)
  try:
    flags.FLAGS(rest)
  except flags.Error as e:
    raise FlagError(getattr(e, "flagname", None) or "flags", str(e).splitlines()[0]) from None
  config = cli.load_config(_CONFIG.value)
  cli.apply_overrides(config, overrides, say=lambda line: logging.info("%s", line))
  workdir = _WORKDIR.value or _default_workdir(_CONFIG.value)
  if config.get("runtime") == "ray":   # asynchronous parameter server on Ray (issue 16, common/async_ray)
    from common.async_ray import runtime as ray_runtime   # imports neither JAX nor Ray
    ray_runtime.check(config, num_processes=_NUM_PROCESSES.value)
    cli.check_workdir(workdir)
    return config, workdir
  cli.check_launch(num_processes=_NUM_PROCESSES.value, process_id=_PROCESS_ID.value,
                   coordinator=_COORDINATOR.value, workdir=workdir, step_timeout=_STEP_TIMEOUT.value,
                   peer_timeout=_PEER_TIMEOUT.value, init_timeout=_INIT_TIMEOUT.value, config=config)
  fields.check(config)
  fields.check_resume(config, workdir)
  return config, workdir


def main(argv) -> int:
  if any(a in ("-h", "--help", "--helpshort", "--helpfull") for a in argv[1:]):
    print(__doc__ + "\n" + flags.FLAGS.main_module_help())
    return EXIT_OK
  logging.use_absl_handler()
  logging.set_verbosity(logging.INFO)
  logging.get_absl_handler().addFilter(_QuietLibraries())
  try:
    config, workdir = _parse(argv)
  except (FlagError, ConfigError) as e:
    return _fail(str(e), EXIT_CONFIG)
  if config.get("runtime") == "ray":
    from common.async_ray import runtime as ray_runtime
    logging.info("config %s:\n%s", _CONFIG.value, cli.format_config(config))
    return ray_runtime.main(config, workdir)
  multi = _NUM_PROCESSES.value > 1
  if multi and not supervise.is_child():
    return supervise.run_child(argv, process_id=_PROCESS_ID.value, num_processes=_NUM_PROCESSES.value,
                               workdir=workdir)
  logging.info("config %s:\n%s", _CONFIG.value, cli.format_config(config))
  logging.info("workdir: %s", os.path.abspath(workdir))
  from common import mesh as mesh_lib
  try:
    mesh_lib.configure_devices(config.num_devices, x64=config.x64, num_processes=_NUM_PROCESSES.value,
                               process_id=_PROCESS_ID.value, coordinator=_COORDINATOR.value,
                               heartbeat_timeout_s=_PEER_TIMEOUT.value, init_timeout_s=_INIT_TIMEOUT.value)
    from common import train
    result = train.run(config, workdir, step_timeout_s=_STEP_TIMEOUT.value if multi else 0)
  except (FlagError, ConfigError) as e:
    return _fail(str(e), EXIT_CONFIG)
  except PeerError as e:
    return _fail(str(e), EXIT_PEER)
  except Exception as e:  # noqa: BLE001 -- NonFiniteError (imported with JAX) and nothing else is expected
    if type(e).__name__ != "NonFiniteError":
      raise
    return _fail(str(e), EXIT_NONFINITE)
  if multi:
    import jax
    jax.distributed.shutdown()
  return EXIT_OK if result.status in ("ok", "nothing_ran") else EXIT_NONFINITE


if __name__ == "__main__":
  sys.exit(main(sys.argv))
