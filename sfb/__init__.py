"""Sufficient Factor Broadcasting (Xie et al., arXiv 1511.08486; Poseidon, ATC'17).

Matrix parameters exchange per-row factors (u, v) instead of their J×D gradient; exact. The
layers: ``nn.Dense``, and ``nn.DenseGeneral`` / ``nn.Einsum`` kernels (attention projections)
flattened to one J×D matrix (``sfb.contraction``).

    tx = optax.chain(sfb.scale_by_sfb("data"), optax.adam(1e-3))
    plan = sfb.plan(loss_fn, params, x, y, num_devices=8)          # which layers use SFB
    grad_fn = sfb.factored_value_and_grad(loss_fn, plan)             # inside shard_map

The mesh axis is touched only through ``sfb.axis`` (``varying_axes``, ``to_varying``,
``axis_size``, ``axis_index``; ``axis_name=None`` means one device and no collectives).

References:
  Xie, Kim, Zhou, Ho, Kumar, Yu, Xing, `Distributed Machine Learning via Sufficient Factor
  Broadcasting <https://arxiv.org/abs/1511.08486>`_, 2015

  Zhang et al., `Poseidon: An Efficient Communication Architecture for Distributed Deep Learning
  on GPU Clusters <https://arxiv.org/abs/1706.03292>`_, USENIX ATC 2017
"""
from sfb import axis
from sfb.aggregate import gather_factors, scale_by_sfb, sfb, sfb_mean_gradient
from sfb.capture import factored_grad, factored_value_and_grad, module_calls
from sfb.contraction import Contraction, contraction
from sfb.factors import FromFactors, SufficientFactors, reconstruct
from sfb.models import (metric_learning_factors, nmf_codes, nmf_factors, nonnegative, project,
                        softmax_factors, sparse_codes, sparse_coding_factors, squared_hinge_factors,
                        unit_columns)
from sfb.sdca import LOSSES as SDCA_LOSSES
from sfb.sdca import SDCA, SDCAState, sdca
from sfb.staleness import StaleSFBState, scale_by_stale_sfb
from sfb.plan import (RULES, CostModel, LayerPlan, Plan, choose_sfb, dense_bytes, gathered_bytes, payload_bytes,
                      plan, wire_bytes)

__all__ = [
    "Contraction", "CostModel", "axis", "FromFactors", "LayerPlan", "Plan", "RULES", "SDCA", "SDCAState", "SDCA_LOSSES", "StaleSFBState", "scale_by_stale_sfb", "sdca", "metric_learning_factors",
    "nmf_codes", "nmf_factors", "nonnegative", "project", "softmax_factors", "sparse_codes",
    "sparse_coding_factors", "squared_hinge_factors", "unit_columns", "SufficientFactors", "choose_sfb", "dense_bytes",
    "contraction", "factored_grad", "factored_value_and_grad", "gather_factors", "gathered_bytes", "module_calls", "payload_bytes",
    "plan", "reconstruct", "scale_by_sfb", "sfb", "sfb_mean_gradient", "wire_bytes",
]
