"""Checks of the harness's own config fields that need no JAX, and the allowed names.

``launch.py`` runs ``check(config)`` before it imports JAX, and ``common.train.validate`` runs it
first, so a bad value stops in well under a second with one line naming the field and what is
allowed. What needs the data, the devices or an algorithm package (divisibility by the actual
device count, the algorithm's own fields) is checked in ``common.train.validate``, still before
anything compiles. ``check_resume`` compares a config with the one stored in a workdir.
"""
from __future__ import annotations

import difflib
import json
import math
import os

from common import algos
from common.errors import ConfigError, FlagError

DATASETS = ("digits", "breast_cancer", "synthetic", "sparse_logistic", "text", "svmlight:<path>")
MODELS = ("softmax", "mlp", "logistic", "cnn", "transformer")
OPTIMIZERS = ("sgd", "momentum", "nesterov", "adam", "adamw")
RUNTIMES = ("spmd", "ray")   # config.runtime: the jit(shard_map) harness, or common/async_ray (issue 16)
# Fields a resumed run may change: they only schedule the loop, never the state or the math.
RESUMABLE = ("num_steps", "log_every", "eval_every", "checkpoint_every")


def _is_int(value) -> bool:
  return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
  return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _int_at_least(config, field, low):
  if not (_is_int(config[field]) and config[field] >= low):
    what = "a positive integer" if low == 1 else f"an integer >= {low}"
    raise ConfigError(field, f"must be {what}, got {config[field]!r}")


def _number_in(config, field, low, high, text):
  value = config[field]
  if not (_is_number(value) and low(value) and high(value)):
    raise ConfigError(field, f"must be {text}, got {value!r}")


def _one_of(config, field, allowed):
  if config[field] not in allowed:
    raise ConfigError(field, f"unknown {field} {config[field]!r}; allowed: {', '.join(allowed)}")


def check_runtime(config) -> None:
  """``config.runtime`` is "spmd" (the default when absent) or "ray"; an SPMD run needs a
  ``base_config`` (a Ray config file switched to "spmd" lacks its fields)."""
  runtime = config.get("runtime", "spmd")
  if runtime not in RUNTIMES:
    raise ConfigError("runtime", f"unknown runtime {runtime!r}; allowed: {', '.join(RUNTIMES)}")
  if runtime == "spmd" and "algo" not in config:
    raise ConfigError("runtime", "'spmd' needs a config built with configs.common.base_config; this config file "
                      "is for the Ray runtime (runtime = 'ray')")


def check(config) -> None:
  """Raises ConfigError for the first bad harness field (see module docstring)."""
  check_runtime(config)
  for field in ("batch_size", "num_steps", "log_every"):
    _int_at_least(config, field, 1)
  for field in ("eval_every", "checkpoint_every", "num_devices", "seed"):
    _int_at_least(config, field, 0)
  for field in ("x64", "use_bias"):
    if not isinstance(config[field], bool):
      raise ConfigError(field, f"must be true or false, got {config[field]!r}")
  algos.check(config.algorithm)
  _one_of(config, "optimizer", OPTIMIZERS)
  _number_in(config, "lr", lambda v: v > 0, lambda v: True, "a finite number > 0")
  _number_in(config, "momentum", lambda v: v >= 0, lambda v: v < 1, "in [0, 1)")
  for field in ("b1", "b2"):
    _number_in(config, field, lambda v: v >= 0, lambda v: v < 1, "in [0, 1)")
  _number_in(config, "weight_decay", lambda v: v >= 0, lambda v: True, "a finite number >= 0")
  _number_in(config, "test_fraction", lambda v: v > 0, lambda v: v < 1, "in (0, 1)")
  _one_of(config, "model", MODELS)
  widths = config.widths
  if not (isinstance(widths, (tuple, list)) and all(_is_int(w) and w > 0 for w in widths)
          and (widths or config.model != "mlp")):
    raise ConfigError("widths", f"must be a tuple of positive integers such as (64, 64) (mlp needs at least one; "
                      f"positive hidden widths), got {widths!r}")
  dataset = config.dataset
  if not isinstance(dataset, str) or not (dataset in DATASETS[:-1] or dataset.startswith("svmlight:")):
    raise ConfigError("dataset", f"unknown dataset {dataset!r}; allowed: {', '.join(DATASETS)}")
  if dataset in ("synthetic", "sparse_logistic"):
    for field in ("num_classes", "num_features", "num_rows"):
      _int_at_least(config, field, 1)
  check_model_fields(config)
  if config.num_devices and config.batch_size % config.num_devices:
    raise ConfigError("batch_size", f"global batch {config.batch_size} is not divisible by "
                      f"{config.num_devices} devices; use a multiple of {config.num_devices}")
  check_algo_fields(config)


def check_model_fields(config) -> None:
  """The cnn / transformer fields, and that the transformer and the text dataset go together."""
  _int_at_least(config, "max_train_rows", 0)
  channels = config.channels
  if not (isinstance(channels, (tuple, list)) and channels and all(_is_int(c) and c > 0 for c in channels)):
    raise ConfigError("channels", f"must be a non-empty tuple of positive integers, one per cnn stage, such as "
                      f"(16, 32, 64), got {channels!r}")
  for field in ("seq_len", "d_model", "num_heads", "num_layers"):
    _int_at_least(config, field, 1)
  if config.d_model % config.num_heads:
    raise ConfigError("d_model", f"must be divisible by num_heads={config.num_heads} (each head gets "
                      f"d_model / num_heads features), got {config.d_model}")
  if (config.model == "transformer") != (config.dataset == "text"):
    raise ConfigError("model" if config.dataset == "text" else "dataset",
                      f"model 'transformer' and dataset 'text' go together (a causal LM over byte windows); "
                      f"got model {config.model!r} on dataset {config.dataset!r}")


def check_algo_fields(config) -> None:
  """``config.algo`` must hold exactly the fields of ``config.algorithm``'s defaults."""
  expected = set(algos.default_config(config.algorithm).keys())
  have = set(config.algo.keys()) if hasattr(config.algo, "keys") else set()
  if have != expected:
    raise ConfigError("algo", f"holds the fields of another algorithm ({', '.join(sorted(have - expected)) or 'none'} "
                      f"not in {config.algorithm}'s); build the config with base_config({config.algorithm!r}) "
                      f"or set --config.algorithm on the command line, which rebuilds config.algo")


def field_names(config, prefix: str = "") -> list[str]:
  """Every dotted field name of ``config`` (groups included)."""
  names = []
  for key, value in config.items():
    names.append(prefix + key)
    if hasattr(value, "items"):
      names += field_names(value, f"{prefix}{key}.")
  return names


def nearest(name: str, names) -> str | None:
  match = difflib.get_close_matches(name, list(names), n=1, cutoff=0.6)
  return match[0] if match else None


def _flat(d, prefix=""):
  out = {}
  for key, value in d.items():
    if isinstance(value, dict):
      out.update(_flat(value, f"{prefix}{key}."))
    else:
      out[prefix + key] = list(value) if isinstance(value, tuple) else value
  return out


# Fields added after runs were first stored, with the value every run without them had: a stored
# config that lacks one reads as that value, so older workdirs still resume.
IMPLICIT = {"runtime": "spmd"}


def config_differences(old: dict, new: dict) -> dict[str, tuple]:
  """``{dotted field: (old value, new value)}`` for every field that differs (JSON-normalised)."""
  a, b = {**IMPLICIT, **_flat(old)}, {**IMPLICIT, **_flat(json.loads(json.dumps(new, default=str)))}
  return {k: (a.get(k, "<absent>"), b.get(k, "<absent>")) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}


def check_resume(config, workdir: str | None) -> dict[str, tuple]:
  """Compares ``config`` with ``<workdir>/config.json`` before anything in the workdir is touched.

  Returns the differences in ``RESUMABLE`` fields (to be logged). Raises ConfigError naming every
  other differing field (FlagError on ``--workdir``): the stored checkpoints and metrics belong to the stored config.
  """
  path = os.path.join(workdir, "config.json") if workdir else None
  if not path or not os.path.exists(path):
    return {}
  try:
    with open(path) as f:
      stored = json.load(f)
  except (OSError, ValueError) as e:
    raise FlagError("workdir", f"{path} is not readable JSON ({e}); use a new --workdir") from None
  diff = config_differences(stored, config.to_dict())
  refused = {k: v for k, v in diff.items() if k not in RESUMABLE}
  if refused:
    listed = "; ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in refused.items())
    raise FlagError("workdir", f"{workdir} holds a run of a different config ({listed}); a resume may change "
                      f"only {', '.join(RESUMABLE)}. Use a new --workdir, or the stored values")
  return diff
