"""``launch.py``'s command line without JAX: config files, ``--config.<field>`` overrides, flag checks.

Everything here runs before JAX is imported, so a bad command line ends in well under a second
with one line naming the flag or field and what is allowed (``FlagError`` / ``ConfigError``).

Overrides follow ml_collections' syntax: ``--config.lr=0.1``, ``--config.lr 0.1``,
``--config.widths="(128, 128)"``, ``--config.x64`` / ``--noconfig.x64`` for booleans. Values are
parsed by the type of the field they replace. ``--config.algorithm=X`` rebuilds ``config.algo``
from X's defaults (logged) before the other overrides apply.
"""
from __future__ import annotations

import ast
import importlib.util
import math
import os
import traceback

import ml_collections

from common import algos, fields
from common.errors import ConfigError, FlagError


# ----------------------------------------------------------------------------- --config.<field> arguments
def split_config_args(argv: list[str]) -> tuple[list[str], list[tuple[str, str | None]]]:
  """Separates ``--config.<field>[=value]`` arguments from the rest (which absl parses).

  Returns ``(rest, [(dotted field, value text or None)])``; ``--noconfig.f`` gives ``(f, "false")``.
  """
  rest, overrides, i = [], [], 0
  while i < len(argv):
    arg = argv[i]
    name = arg.lstrip("-")
    if arg.startswith("-") and name.startswith(("config.", "noconfig.")):
      negated = name.startswith("noconfig.")
      name = name.split(".", 1)[1]
      value = None
      if "=" in name:
        name, value = name.split("=", 1)
      elif not negated and i + 1 < len(argv) and not argv[i + 1].startswith("--"):
        value, i = argv[i + 1], i + 1
      overrides.append((name, "false" if negated else value))
    else:
      rest.append(arg)
    i += 1
  return rest, overrides


def _parse_value(field: str, text: str | None, current):
  flag = f"config.{field}"
  if isinstance(current, bool):
    value = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}.get(
        "true" if text is None else text.strip().lower())
    if value is None:
      raise FlagError(flag, f"expects true or false, got {text!r}")
    return value
  if text is None:
    raise FlagError(flag, f"needs a value, e.g. --{flag}={current!r}")
  if isinstance(current, ml_collections.ConfigDict):
    names = ", ".join(f"{field}.{k}" for k in current.keys()) or "none"
    raise FlagError(flag, f"is a group of fields; set one of them (fields: {names})")
  if isinstance(current, int):
    try:
      return int(text)
    except ValueError:
      raise FlagError(flag, f"expects an integer, got {text!r}") from None
  if isinstance(current, float):
    try:
      value = float(text)
    except ValueError:
      raise FlagError(flag, f"expects a number, got {text!r}") from None
    if not math.isfinite(value):
      raise FlagError(flag, f"expects a finite number, got {text!r}")
    return value
  if isinstance(current, str):
    return text
  try:
    value = ast.literal_eval(text)
  except (ValueError, SyntaxError):
    if isinstance(current, (tuple, list)):
      raise FlagError(flag, f"expects a tuple such as {tuple(current)!r} (quote it in the shell), got {text!r}") from None
    return text
  if isinstance(current, (tuple, list)):
    if not isinstance(value, (tuple, list)):
      raise FlagError(flag, f"expects a tuple such as {tuple(current)!r}, got {text!r}")
    return tuple(value)
  return value


def _lookup(config, field: str):
  """(parent ConfigDict, last key) of the dotted ``field``; FlagError naming the nearest valid field."""
  target, parts = config, field.split(".")
  for depth, part in enumerate(parts):
    if not isinstance(target, ml_collections.ConfigDict) or part not in target:
      near = fields.nearest(field, fields.field_names(config))
      hint = f"; did you mean --config.{near}?" if near else "; see the config file for the fields"
      raise FlagError(f"config.{field}", f"no such field{hint}")
    if depth < len(parts) - 1:
      target = target[part]
  return target, parts[-1]


def apply_overrides(config: ml_collections.ConfigDict, overrides, say=print) -> None:
  """Applies ``split_config_args`` overrides; ``algorithm`` first (it rebuilds ``config.algo``)."""
  ordered = sorted(overrides, key=lambda o: o[0] != "algorithm")
  for field, text in ordered:
    parent, key = _lookup(config, field)
    value = _parse_value(field, text, parent[key])
    if field == "algorithm" and value != config.algorithm:
      algos.check(value)
      config.unlock()
      config.algo = algos.default_config(value)
      config.lock()
      say(f"config.algorithm {config.algorithm!r} -> {value!r}: config.algo rebuilt from {value}'s defaults")
    try:
      parent[key] = value
    except (TypeError, ValueError, AttributeError, KeyError) as e:
      raise FlagError(f"config.{field}", f"cannot take {text!r}: {str(e).splitlines()[0]}") from None


# ----------------------------------------------------------------------------- config files
def load_config(spec: str) -> ml_collections.ConfigDict:
  """Runs ``get_config(arg)`` of ``path[:arg]``; FlagError / ConfigError (one line) on any failure."""
  path, _, arg = spec.partition(":")
  if not path.endswith(".py"):
    raise FlagError("config", f"{spec!r} is not a Python config file (configs/<name>.py[:arg])")
  if not os.path.isfile(path):
    raise FlagError("config", f"{path} does not exist; the shipped configs are in configs/ "
                    f"(e.g. configs/default.py)")
  name = "_config_" + os.path.splitext(os.path.basename(path))[0]
  try:
    module_spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    if not callable(getattr(module, "get_config", None)):
      raise FlagError("config", f"{path} has no get_config(arg=None) function")
    config = module.get_config(arg) if arg else module.get_config()
  except (FlagError, ConfigError):
    raise
  except Exception as e:  # the user's own config code: one line with where it failed
    raise FlagError("config", f"{spec}: {_where(e, path)}{type(e).__name__}: {e}") from None
  if not isinstance(config, ml_collections.ConfigDict):
    raise FlagError("config", f"{path}: get_config returned {type(config).__name__}, not a ConfigDict")
  config.lock()
  return config


def _where(error: BaseException, path: str) -> str:
  frames = [f for f in traceback.extract_tb(error.__traceback__) if os.path.abspath(f.filename) ==
            os.path.abspath(path)]
  return f"line {frames[-1].lineno}: " if frames else ""


def format_config(config: ml_collections.ConfigDict) -> str:
  """One ``field = value`` line per field (dotted for ``algo``), values as Python literals."""
  flat = {}

  def walk(d, prefix):
    for key, value in d.items():
      if isinstance(value, ml_collections.ConfigDict):
        walk(value, f"{prefix}{key}.")
      else:
        flat[prefix + key] = value
  walk(config, "")
  width = max(map(len, flat), default=0)
  return "\n".join(f"  {k:<{width}} = {v!r}" for k, v in flat.items())


# ----------------------------------------------------------------------------- launcher flags
def check_launch(*, num_processes: int, process_id: int, coordinator: str | None, workdir: str | None,
                 step_timeout: float, peer_timeout: int, init_timeout: int, config=None) -> None:
  """The launcher's own flags, before JAX starts (FlagError naming the flag)."""
  if num_processes < 1:
    raise FlagError("num_processes", f"must be >= 1, got {num_processes}")
  if not 0 <= process_id < num_processes:
    raise FlagError("process_id", f"must be in 0..{num_processes - 1} (--num_processes={num_processes}), "
                    f"got {process_id}")
  if num_processes > 1:
    host, _, port = (coordinator or "").rpartition(":")
    if not coordinator:
      raise FlagError("coordinator", "a multi-process run needs --coordinator host:port (process 0's address)")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
      raise FlagError("coordinator", f"must be host:port with a port in 1..65535, got {coordinator!r}")
    if config is not None and config.num_devices % num_processes:
      raise ConfigError("num_devices", f"{config.num_devices} devices do not split over {num_processes} processes; "
                        f"use a multiple of {num_processes}")
  for flag, value in (("step_timeout", step_timeout), ("peer_timeout", peer_timeout),
                      ("init_timeout", init_timeout)):
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
      raise FlagError(flag, f"must be a number of seconds > 0, got {value!r}")
  if workdir is not None:
    check_workdir(workdir)


def check_workdir(workdir: str) -> None:
  """``workdir`` is a directory or can become one (no file on its path, writable)."""
  if not workdir:
    raise FlagError("workdir", "must not be empty")
  path = os.path.abspath(workdir)
  probe = path
  while not os.path.exists(probe):
    probe = os.path.dirname(probe)
  if not os.path.isdir(probe):
    raise FlagError("workdir", f"{probe} exists and is not a directory; pick another --workdir")
  if not os.access(probe, os.W_OK | os.X_OK):
    raise FlagError("workdir", f"{probe} is not writable; pick another --workdir")
