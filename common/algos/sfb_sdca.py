"""Adapter: SFB-SDCA for one-vs-rest L2-regularized linear SVMs (``config.algorithm = "sfb_sdca"``).

The model must be ``softmax`` (one Dense layer): its kernel and bias form ``W`` (J, D+1) over
features ``[x, 1]`` (the bias is regularized like LinearSVC with ``fit_intercept=False`` on data with
a ones column). Each step is one SDCA round of ``batch_size / P`` dual steps per device; the loss
metric is the primal objective, and ``duality_gap`` certifies it. SDCA starts from ``W(Z=0) = 0``,
whatever the model's initialisation.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

import sfb
from common.algos import defaults
from common.algos.base import BuildContext, Method
from common.errors import ConfigError


default_config = defaults.sfb_sdca


def validate(config, dataset) -> None:
  del dataset
  if config.model != "softmax":
    raise ConfigError("model", f"sfb_sdca trains a linear model; use --config.model=softmax, got {config.model!r}")
  if config.algo.loss not in sfb.SDCA_LOSSES:
    raise ConfigError("algo.loss", f"unknown loss {config.algo.loss!r}; allowed: {', '.join(sfb.SDCA_LOSSES)}")
  if not config.algo.C > 0:
    raise ConfigError("algo.C", f"must be > 0, got {config.algo.C}")
  if config.algo.sigma_prime < 0:
    raise ConfigError("algo.sigma_prime", f"must be >= 0 (0 means the number of devices), got "
                      f"{config.algo.sigma_prime}")


def build(config, ctx: BuildContext) -> Method:
  n, p = ctx.dataset.num_train, ctx.num_devices
  rows_local = -(-n // p)                    # common.data.shard_rows pads to equal blocks
  use_bias = config.use_bias
  solver = sfb.sdca(config.algo.loss, l2=1.0 / (config.algo.C * n), num_rows=n,
                    rows_per_round=ctx.batch_per_device, sigma_prime=config.algo.sigma_prime or None,
                    axis_name=ctx.axis_name, seed=config.seed)
  dense = ctx.params["params"]["Dense_0"]
  num_classes = dense["kernel"].shape[1]

  def to_w(params):
    d = params["params"]["Dense_0"]
    return (jnp.concatenate([d["kernel"], d["bias"][None]]) if use_bias else d["kernel"]).T

  def from_w(w):
    layer = {"kernel": w[:, :-1].T, "bias": w[:, -1]} if use_bias else {"kernel": w.T}
    return {"params": {"Dense_0": layer}}

  def features(x):
    return jnp.concatenate([x, jnp.ones((x.shape[0], 1), x.dtype)], 1) if use_bias else x

  def targets(y):
    return y if config.algo.loss == "squared_hinge" else 2.0 * jax.nn.one_hot(y, num_classes) - 1.0

  def init_state(params, key):
    del key
    state = solver.init(np.zeros(np.shape(to_w(params)), dense["kernel"].dtype), rows_local)
    return state._replace(duals=np.zeros((p,) + state.duals.shape, state.duals.dtype))

  def state_specs(state):
    return sfb.SDCAState(jax.P(), jax.P(ctx.axis_name), jax.P())

  def local_step(params, state, shard, key):
    del key
    state = state._replace(duals=state.duals[0])
    w = jnp.where(state.count == 0, 0.0, to_w(params))
    x, y = features(shard.x), targets(shard.y)
    w, state, _ = solver.step(w, state, x, y, shard.mask)
    gap = solver.duality_gap(w, state, x, y, shard.mask)
    metrics = {"loss": gap["primal"], "dual": gap["dual"], "duality_gap": gap["gap"]}
    return from_w(w), state._replace(duals=state.duals[None]), metrics

  itemsize = np.dtype(dense["kernel"].dtype).itemsize
  features_in = dense["kernel"].shape[0] + int(use_bias)
  return Method(init_state=init_state, local_step=local_step, state_specs=state_specs,
                analytic_payload=itemsize * ctx.batch_per_device * (num_classes + features_in),
                describe=f"SFB-SDCA ({config.algo.loss}, C={config.algo.C}, "
                         f"σ'={config.algo.sigma_prime or p}): all-gather of b·(J+D) factors per round")
