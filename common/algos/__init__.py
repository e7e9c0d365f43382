"""Algorithm adapters by name: ``config.algorithm`` -> module ``common.algos.<name>``.

See ``common/algos/base.py`` for the contract an adapter implements.
"""
from __future__ import annotations

import importlib
from types import ModuleType

from common.errors import ConfigError

ALGORITHMS = ("dense", "sfb", "sfb_sdca", "sign1bit", "vr_prox", "dho")


def get(name: str) -> ModuleType:
  if name not in ALGORITHMS:
    raise ConfigError("algorithm", f"unknown algorithm {name!r}; allowed: {', '.join(ALGORITHMS)}")
  return importlib.import_module(f"common.algos.{name}")
