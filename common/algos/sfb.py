"""Adapter: Sufficient Factor Broadcasting (``config.algorithm = "sfb"``).

Every ``nn.Dense`` of the model is factored or all-reduced as ``sfb.plan`` decides (rule
``config.algo.rule``); the exchanged mean gradient then goes to ``config.optimizer``.
"""
from __future__ import annotations

import jax
import ml_collections
import numpy as np
import optax
from absl import logging

import sfb
from common.algos.base import BuildContext, Method, local_gradient_method
from common.algos.dense import optimizer_from_config
from common.data import Shard
from common.errors import ConfigError


def default_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.rule = "payload"        # payload | wire | time | always | never: per-layer SFB vs dense all-reduce
  c.gflops = 0.0            # rule "time": flop/s per device in GFLOP/s (required; see benchmarks.sfb_sweep)
  c.link_gbit = 10.0        # rule "time": link speed in Gbit/s
  return c


def validate(config, dataset) -> None:
  del dataset
  if config.algo.rule not in sfb.RULES:
    raise ConfigError("algo.rule", f"unknown rule {config.algo.rule!r}; allowed: {', '.join(sfb.RULES)}")
  if config.algo.rule == "time":
    for field, unit in (("gflops", "GFLOP/s per device"), ("link_gbit", "Gbit/s")):
      if not config.algo[field] > 0:
        raise ConfigError(f"algo.{field}", f"rule 'time' needs algo.{field} > 0 ({unit}), got {config.algo[field]}")


def make_plan(config, ctx: BuildContext) -> sfb.Plan:
  """The per-layer plan for the global batch ``config.batch_size`` over ``ctx.num_devices``."""
  rows = config.batch_size
  dtype = jax.tree.leaves(ctx.params)[0].dtype
  batch = Shard(np.zeros((rows, ctx.dataset.num_features), dtype),
                np.zeros((rows,), ctx.dataset.y_train.dtype), np.ones((rows,), np.float32))
  cost = None
  if config.algo.rule == "time":
    cost = sfb.CostModel(flops_per_s=config.algo.gflops * 1e9, link_bytes_per_s=config.algo.link_gbit * 1e9 / 8,
                         itemsize=np.dtype(dtype).itemsize)
  return sfb.plan(ctx.loss_fn, ctx.params, batch, num_devices=ctx.num_devices, rule=config.algo.rule, cost=cost)


def build(config, ctx: BuildContext) -> Method:
  plan = make_plan(config, ctx)
  logging.info("%s", plan.table())
  tx = optax.chain(sfb.scale_by_sfb(ctx.axis_name), optimizer_from_config(config))
  choice = ", ".join(f"{l.name}:{'SFB' if l.use_sfb else 'dense'}" for l in plan.layers)
  return local_gradient_method(
      ctx, tx, grad_fn=sfb.factored_value_and_grad(ctx.loss_fn, plan),
      analytic_payload=sfb.payload_bytes(plan),
      describe=f"SFB ({config.algo.rule} rule; {choice}), then {config.optimizer}")
