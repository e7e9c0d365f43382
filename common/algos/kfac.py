"""Adapter: K-FAC through kfac-jax, the curvature peer (``config.algorithm = "kfac"``).

Martens & Grosse, *Optimizing Neural Networks with Kronecker-factored Approximate Curvature*,
ICML 2015: each dense layer's curvature block is approximated by A ⊗ G with A = E[a aᵀ] (layer
inputs, a bias column appended) and G = E[g gᵀ] (output cotangents), Eq. (1)-(2) and §3; the
damped inverse uses the factored Tikhonov ("pi-adjusted") split of §6.3, (A + π√λ I)⁻¹ and
(G + √λ/π I)⁻¹ with π² = (tr A / dim A) / (tr G / dim G). The update with fixed learning rate α and
momentum μ is kfac-jax's ``Optimizer._step`` without adaptation: δ_t = -α F̂⁻¹ ∇L + μ δ_{t-1}.

Everything curvature-related is kfac-jax's own code (``kfac_jax.BlockDiagonalCurvature``: layer
auto-registration, factor statistics, ``sync``, ``update_cache``, ``multiply_matpower``); this
module only schedules it the way ``kfac_jax.Optimizer._step`` does, inside the harness's
``shard_map`` over ``"data"``:

* every step: each device adds its own minibatch's factor statistics to its own factor EMA (no
  communication; the factor state is per worker, ``P("data")``);
* every ``inverse_update_period`` steps (step counter ≡ 0, the first step included): the factor
  EMAs are averaged over devices (kfac-jax's ``sync``: one all-reduce per factor; the mean of the
  per-device EMAs is the EMA of the mean statistics) and the damped inverses are recomputed from
  them on every device (redundantly: ``distributed_inverses=False``, no inverse traffic);
* every step: the local gradient is preconditioned with the cached inverses (identical on every
  device) and the preconditioned gradient is averaged in one bucketed all-reduce. Since the
  preconditioner is linear and the same everywhere, mean_i(F̂⁻¹ g_i) = F̂⁻¹ mean_i(g_i), which is
  what ``Optimizer._step`` computes (it averages g first); averaging afterwards keeps the update
  replicated under ``shard_map(check_vma=True)``, where ``Optimizer.step`` itself cannot run (its
  staged methods are ``jit``/``pmap`` and its preconditioner output is device-varying).

Payload per device (``analytic_branches``, the loss's 4-byte pmean left out as for every method):
the parameters' bytes every step, plus every factor's bytes on refresh steps; the harness measures
both branches from the compiled program.
"""
from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from common import baseline, mesh as mesh_lib
from common.algos import defaults
from common.algos.base import BuildContext, Method, param_bytes, worker_key
from common.data import Shard, sample_batch
from common.errors import ConfigError
from sign1bit import axis as worker_axis

default_config = defaults.kfac

MODELS = ("softmax", "mlp", "logistic")
REFUSED = {   # model -> why kfac cannot run it here
    "cnn": "kfac-jax's convolution blocks fail shard_map's varying-axes check inside the harness's "
           "shard_map(check_vma=True) (a dynamic_slice of a per-device operand with invariant indices)",
    "transformer": "not tried with kfac in this harness (untested rather than known to fail; kfac-jax "
                   "would auto-register its einsums, and the cnn, the other real model, fails as above)",
}
# kfac-jax's modes. "fisher_empirical" scales G by 1/rows² (kfac-jax divides the per-row gradients by
# √rows before its 1/rows average), so its curvature grows with the device count at a fixed global
# batch (P times one device's); the others are averages over rows and do not depend on P.
ESTIMATION_MODES = ("ggn_curvature_prop", "fisher_curvature_prop", "fisher_gradients", "fisher_empirical",
                    "ggn_exact", "fisher_exact")
REFRESH, PLAIN = "refresh", "plain"


class Hyper(NamedTuple):
  """α (``config.lr``), μ (``config.momentum``) and the ``config.algo`` fields ``step`` uses."""
  lr: float
  momentum: float
  damping: float
  curvature_ema: float
  inverse_update_period: int


class KfacState(NamedTuple):
  """``curvature``: kfac-jax's estimator state (factor EMAs and cached inverses), per worker;
  ``velocity``: the previous update δ_{t-1}, replicated; ``count``: steps taken, replicated."""
  curvature: Any
  velocity: Any
  count: jax.Array

  def per_worker_fields(self):
    return ("curvature",)


def validate(config, dataset) -> None:
  del dataset
  try:
    import kfac_jax  # noqa: F401
  except ImportError:
    raise ConfigError("algorithm", "'kfac' needs kfac-jax: pip install kfac-jax==0.0.8 (requirements.txt)") from None
  if config.model not in MODELS:
    raise ConfigError("model", f"kfac runs {', '.join(MODELS)}; not {config.model!r}: "
                      f"{REFUSED.get(config.model, 'not tried')} (use another --config.algorithm)")
  a = config.algo
  if not a.damping > 0:
    raise ConfigError("algo.damping", f"must be > 0 (λ added to the curvature), got {a.damping!r}")
  if not 0 <= a.curvature_ema < 1:
    raise ConfigError("algo.curvature_ema", f"must be in [0, 1), got {a.curvature_ema!r}")
  period = a.inverse_update_period
  if not (isinstance(period, int) and not isinstance(period, bool) and period >= 1):
    raise ConfigError("algo.inverse_update_period", f"must be a positive integer (steps between inverse updates, "
                      f"e.g. --config.algo.inverse_update_period=5), got {period!r}")
  if a.estimation_mode not in ESTIMATION_MODES:
    raise ConfigError("algo.estimation_mode", f"unknown mode {a.estimation_mode!r}; allowed: "
                      f"{', '.join(ESTIMATION_MODES)}")


def registered_loss(model):
  """``(params, batch) -> masked mean loss`` of ``model`` with its output registered for kfac-jax
  (``register_softmax_cross_entropy_loss`` / ``register_sigmoid_cross_entropy_loss``); the same
  value as ``model.loss``. kfac-jax normalises the curvature by the rows of the batch and its
  sigmoid loss takes no mask, so the batch should hold real rows only (``sample_batch`` draws
  only those; its mask is all ones)."""
  import kfac_jax

  def loss_fn(params, batch: Shard):
    logits = model.apply(params, batch.x)
    if model.binary:
      kfac_jax.register_sigmoid_cross_entropy_loss(logits[:, None], batch.y[:, None].astype(logits.dtype))
      losses = optax.sigmoid_binary_cross_entropy(logits, batch.y.astype(logits.dtype))
    else:
      kfac_jax.register_softmax_cross_entropy_loss(logits, batch.y, mask=batch.mask)
      losses = optax.softmax_cross_entropy_with_integer_labels(logits, batch.y)
    return jnp.sum(losses * batch.mask) / jnp.maximum(jnp.sum(batch.mask), 1.0)

  return loss_fn


def _eval_jaxpr_eqn(eqn, in_values):
  """kfac-jax 0.0.8's ``tag_graph_matcher.eval_jaxpr_eqn`` for jax >= 0.10, where
  ``Primitive.get_bind_params`` returns the bind params alone (sub-functions inside them) rather
  than ``(subfuns, params)``; the body is ``jax.core.eval_jaxpr``'s per-equation step."""
  from jax.extend import source_info_util
  params = eqn.primitive.get_bind_params(eqn.params)
  in_values = _match_vma(in_values)
  with source_info_util.user_context(eqn.source_info.traceback), eqn.ctx.manager:
    output = eqn.primitive.bind(*in_values, **params)
  return output if isinstance(output, list) else [output]


def _to_varying(x, axes: frozenset):
  """``x`` cast (no-op, no communication) to be varying along ``axes`` as well."""
  missing = tuple(sorted(axes - worker_axis.varying_axes(x)))
  return lax.pcast(jnp.asarray(x), missing, to="varying") if missing else x


def _match_vma(values):
  """Casts invariant operands to the union of the operands' varying axes, as tracing inside
  ``shard_map(check_vma=True)`` does on its own; kfac-jax's rewritten jaxprs bind literals and
  pattern constants traced outside ``shard_map`` next to per-device values."""
  union = frozenset().union(*map(worker_axis.varying_axes, values))
  return [_to_varying(x, union) for x in values]


def _patch_kfac_for_jax():
  """Installs ``_eval_jaxpr_eqn`` when this jax's ``get_bind_params`` returns a dict (kfac-jax 0.0.8
  unpacks two values and fails with ``ValueError: too many values to unpack`` at the first
  curvature update, jax 0.10.2)."""
  from kfac_jax._src import tag_graph_matcher
  if isinstance(jax.extend.core.Primitive("probe").get_bind_params({}), dict):
    tag_graph_matcher.eval_jaxpr_eqn = _eval_jaxpr_eqn


def make_estimator(loss_fn, estimation_mode: str):
  """kfac-jax's block-diagonal curvature of ``loss_fn(params, batch)``, layers auto-registered."""
  import kfac_jax
  _patch_kfac_for_jax()
  return kfac_jax.BlockDiagonalCurvature(
      func=loss_fn, default_estimation_mode=estimation_mode, params_index=0, batch_index=1,
      distributed_multiplies=False, distributed_cache_updates=False)


def finalize(estimator, params, batch: Shard, mesh: jax.sharding.Mesh | None = None) -> None:
  """Lets kfac-jax trace ``loss_fn`` on ``batch`` (one device's rows) and find its layers.

  With a (1-D) ``mesh`` the trace runs inside ``shard_map`` over it with the params cast to
  varying along its axis, as ``step`` will see them: kfac-jax later re-binds the
  primitives of this trace (and of the custom-JVP rules it holds, such as ``relu``'s), and under
  ``check_vma=True`` a trace made outside ``shard_map`` does not type-check against varying
  operands. The estimator then serves only steps on that mesh (``mesh=None``: single device).
  """
  axis_name = None if mesh is None else mesh.axis_names[0]

  def trace(params, batch):
    if axis_name is not None:
      params = lax.pcast(params, axis_name, to="varying")
    estimator.finalize((params, batch))
    return jnp.zeros([])

  if mesh is None:
    jax.eval_shape(trace, params, batch)
    return
  rows = jax.tree.map(lambda x: jax.ShapeDtypeStruct((mesh.size * x.shape[0],) + x.shape[1:], x.dtype), batch)
  jax.eval_shape(jax.shard_map(trace, mesh=mesh, in_specs=(jax.P(), jax.P(axis_name)), out_specs=jax.P()),
                 params, rows)


def init(estimator, params, batch: Shard, key) -> KfacState:
  """Zero factor EMAs and caches (kfac-jax traces ``loss_fn`` on ``batch`` to find the layers)."""
  curvature = estimator.init(key, (params, batch), exact_powers_to_cache=None, approx_powers_to_cache=-1,
                             cache_eigenvalues=False)
  return KfacState(curvature, jax.tree.map(jnp.zeros_like, params), jnp.zeros([], jnp.int32))


def _sync(estimator, curvature, axis_name: str | None):
  """kfac-jax's ``BlockDiagonalCurvature._sync_state``: every block's ``sync`` (one pmean per factor
  EMA). Unlike ``estimator.sync`` it does not skip already-synced states through a ``lax.cond``
  whose branches differ in their varying axes (the factors come out invariant, the rest not)."""
  if axis_name is None:
    return curvature
  blocks = tuple(block.sync(state.copy(), axis_name)
                 for block, state in zip(estimator.blocks, curvature.blocks_states))
  return type(curvature)(synced=jnp.asarray(True), blocks_states=blocks)


def _refresh(estimator, damping, axis_name, curvature):
  """The factor all-reduce (``_sync``) then kfac-jax's ``update_cache`` (pi-damped inverses)."""
  curvature = estimator.update_cache(_sync(estimator, curvature, axis_name), identity_weight=damping,
                                     exact_powers=None, approx_powers=-1, eigenvalues=False, pmap_axis_name=None)
  return worker_axis.to_varying(curvature, axis_name)   # the state is per worker


def step(estimator, loss_fn, hyper, params, state: KfacState, batch: Shard, key, axis_name: str | None):
  """One K-FAC step on this device's ``batch`` (see the module docstring).

  ``hyper``: a ``Hyper`` (fields may be traced arrays). With ``axis_name=None``
  it is the exact single-device step (no collectives). Returns ``(params, state, mean loss)``.
  """
  local = params if axis_name is None else lax.pcast(params, axis_name, to="varying")
  rows = batch.x.shape[0]
  curvature = estimator.update_curvature_matrix_estimate(
      state.curvature, ema_old=hyper.curvature_ema, ema_new=1.0, identity_weight=hyper.damping,
      batch_size=rows, rng=key, func_args=(local, batch))
  keep = functools.partial(worker_axis.to_varying, axis_name=axis_name)
  curvature = lax.cond(state.count % hyper.inverse_update_period == 0,
                       functools.partial(_refresh, estimator, hyper.damping, axis_name), keep, curvature)
  loss, grads = jax.value_and_grad(loss_fn)(local, batch)
  direction = estimator.multiply_matpower(curvature, grads, identity_weight=hyper.damping, power=-1,
                                          exact_power=False, use_cached=True, pmap_axis_name=None)
  if axis_name is not None:
    direction, loss = baseline.bucketed_pmean(direction, axis_name), lax.pmean(loss, axis_name)
  delta = jax.tree.map(lambda d, v: -hyper.lr * d + hyper.momentum * v, direction, state.velocity)
  return optax.apply_updates(params, delta), KfacState(curvature, delta, state.count + 1), loss


def factor_bytes(curvature) -> int:
  """Bytes of every block's moving averages (Kronecker factors, diagonals, full matrices): what the
  blocks' ``sync`` all-reduce."""
  import kfac_jax
  average = kfac_jax.utils.WeightedMovingAverage
  found = jax.tree.leaves(curvature.blocks_states, is_leaf=lambda x: isinstance(x, average))
  return int(sum(x.size * np.dtype(x.dtype).itemsize
                 for f in found if isinstance(f, average) for x in jax.tree.leaves(f.value)))


def hyper_from_config(config) -> Hyper:
  a = config.algo
  return Hyper(config.lr, config.momentum, a.damping, a.curvature_ema, a.inverse_update_period)


def example_batch(params, num_features: int, rows: int) -> Shard:
  dtype = jax.tree.leaves(params)[0].dtype
  return Shard(np.zeros((rows, num_features), dtype), np.zeros((rows,), np.int32), np.ones((rows,), np.float32))


def build(config, ctx: BuildContext) -> Method:
  axis, hyper, workers = ctx.axis_name, hyper_from_config(config), ctx.num_devices
  loss_fn = registered_loss(ctx.model)
  estimator = make_estimator(loss_fn, config.algo.estimation_mode)

  batch = example_batch(ctx.params, ctx.dataset.num_features, ctx.batch_per_device)
  finalize(estimator, ctx.params, batch, mesh_lib.make_mesh(workers))
  first = init(estimator, ctx.params, batch, jax.random.key(config.seed))

  def init_state(params, key):
    del key   # kfac-jax's Kronecker-factored blocks start from zeros
    return worker_axis.stack(first._replace(velocity=jax.tree.map(jnp.zeros_like, params)), workers)

  def local_step(params, state, shard, key):
    key = worker_key(key, axis)
    batch = sample_batch(shard, key, ctx.batch_per_device)
    own = worker_axis.local(state, "kfac")
    params, own, loss = step(estimator, loss_fn, hyper, params, own, batch, jax.random.fold_in(key, 1), axis)
    return params, worker_axis.unlocal(own), {"loss": loss}

  factors = factor_bytes(first.curvature)
  plain = param_bytes(ctx.params)
  period = config.algo.inverse_update_period
  return Method(
      init_state=init_state, local_step=local_step,
      state_specs=lambda state: worker_axis.state_specs(state, axis),
      analytic_payload=plain + factors,
      branches={REFRESH: {"_refresh": True}, PLAIN: {"_refresh": False}},
      branch_of=lambda t: REFRESH if (t - 1) % period == 0 else PLAIN,
      analytic_branches={REFRESH: plain + factors, PLAIN: plain},
      describe=f"K-FAC (kfac-jax {config.algo.estimation_mode}, λ={config.algo.damping}, factor all-reduce + "
               f"inverses every {period} steps), lr {config.lr}, momentum {config.momentum}")
