"""Adapter: PowerSGD peer baseline (``config.algorithm = "powersgd"``).

Vogels, Karimireddy, Jaggi, NeurIPS 2019, Algorithm 1 (rank-r power step, warm start) inside
Algorithm 2 (error feedback); the transformation is ``common.powersgd.scale_by_powersgd``. Its
estimate of the mean gradient is handed to ``config.optimizer`` (the paper uses momentum SGD).

State: the error memories differ per worker (``init`` gives them a leading axis P,
``powersgd.state_specs`` places them under ``P("data")``); Q is replicated. Payload (``powersgd.payload_bytes``): r(n+m) floats of P and Q
per compressed matrix plus every dense leaf, per device and step.
"""
from __future__ import annotations

from common import powersgd
from common.algos import defaults
from common.algos.base import BuildContext, Method, local_gradient_method
from common.algos.dense import optimizer_from_config
from common.errors import ConfigError

default_config = defaults.powersgd


def validate(config, dataset) -> None:
  del dataset
  rank = config.algo.rank
  if not (isinstance(rank, int) and not isinstance(rank, bool) and rank >= 1):
    raise ConfigError("algo.rank", f"must be a positive integer (the rank r of each matrix's "
                      f"approximation, e.g. --config.algo.rank=2), got {rank!r}")


def build(config, ctx: BuildContext) -> Method:
  rank = config.algo.rank
  tx = powersgd.powersgd_with(optimizer_from_config(config), rank, axis_name=ctx.axis_name,
                              num_workers=ctx.num_devices, seed=config.seed)
  return local_gradient_method(
      ctx, tx, state_specs=powersgd.state_specs,
      analytic_payload=powersgd.payload_bytes(ctx.params, rank),
      describe=f"PowerSGD rank {rank} (P, Q, dense leaves in three all-reduces), then {config.optimizer}")
