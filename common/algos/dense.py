"""Adapter: dense data-parallel baseline (``config.algorithm = "dense"``)."""
from __future__ import annotations


from common.algos import defaults
from common import baseline
from common.algos.base import BuildContext, Method, local_gradient_method


default_config = defaults.dense


def validate(config, dataset) -> None:
  del config, dataset


def build(config, ctx: BuildContext) -> Method:
  tx = baseline.dense_data_parallel(optimizer_from_config(config), ctx.axis_name)
  return local_gradient_method(
      ctx, tx, analytic_payload=baseline.payload_bytes(ctx.params),
      describe=f"dense data parallel: pmean of f32 gradients, then {config.optimizer}")


def optimizer_from_config(config):
  """The optimizer named by ``config.optimizer`` with ``config.lr`` and its knobs."""
  return baseline.optimizer(config.optimizer, config.lr, momentum=config.momentum,
                            b1=config.b1, b2=config.b2, weight_decay=config.weight_decay)
