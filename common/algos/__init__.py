"""Algorithm adapters by name: ``config.algorithm`` -> module ``common.algos.<name>``.

See ``common/algos/base.py`` for the contract an adapter implements.
"""
from __future__ import annotations

import importlib
from types import ModuleType

from common.errors import ConfigError

ALGORITHMS = ("dense", "sfb", "sfb_sdca", "sign1bit", "vr_prox", "dho", "powersgd", "kfac")


def check(name) -> str:
  if name not in ALGORITHMS:
    raise ConfigError("algorithm", f"unknown algorithm {name!r}; allowed: {', '.join(ALGORITHMS)}")
  return name


def get(name: str) -> ModuleType:
  return importlib.import_module(f"common.algos.{check(name)}")


def default_config(name: str):
  """``config.algo`` of algorithm ``name`` without importing JAX where possible (``defaults``)."""
  from common.algos import defaults
  return defaults.default_config(check(name))
