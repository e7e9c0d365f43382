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
  c.rule = "payload"        # payload | wire | always | never: per-layer SFB vs dense all-reduce
  return c


def validate(config, dataset) -> None:
  del dataset
  if config.algo.rule not in sfb.RULES:
    raise ConfigError("algo.rule", f"unknown rule {config.algo.rule!r}; allowed: {', '.join(sfb.RULES)}")


def make_plan(config, ctx: BuildContext) -> sfb.Plan:
  """The per-layer plan for the global batch ``config.batch_size`` over ``ctx.num_devices``."""
  rows = config.batch_size
  dtype = jax.tree.leaves(ctx.params)[0].dtype
  batch = Shard(np.zeros((rows, ctx.dataset.num_features), dtype),
                np.zeros((rows,), ctx.dataset.y_train.dtype), np.ones((rows,), np.float32))
  return sfb.plan(ctx.loss_fn, ctx.params, batch, num_devices=ctx.num_devices, rule=config.algo.rule)


def build(config, ctx: BuildContext) -> Method:
  plan = make_plan(config, ctx)
  logging.info("%s", plan.table())
  tx = optax.chain(sfb.scale_by_sfb(ctx.axis_name), optimizer_from_config(config))
  choice = ", ".join(f"{l.name}:{'SFB' if l.use_sfb else 'dense'}" for l in plan.layers)
  return local_gradient_method(
      ctx, tx, grad_fn=sfb.factored_value_and_grad(ctx.loss_fn, plan),
      analytic_payload=sfb.payload_bytes(plan),
      describe=f"SFB ({config.algo.rule} rule; {choice}), then {config.optimizer}")
