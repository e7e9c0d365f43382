"""Sufficient factors of an unmodified flax model, by method interception.

For an ``nn.Dense`` layer ``y = x W + c`` inside any network, ``∂L/∂W = xᵀ δ`` with
``δ = ∂L/∂y`` (Xie et al., arXiv 1511.08486, Sec. 2; Poseidon, Zhang et al. ATC'17, Sec. 3.2):
the layer's sufficient factors are (u, v) = (δ, x) per row. ``factored_value_and_grad`` reads
them without touching the model: ``flax.linen.intercept_methods`` records each selected layer's
input ``x`` and returns ``y + probe`` with a zero, device-varying probe, so the gradient w.r.t. the
probe is exactly δ. Only the kernel and bias *inside* the intercepted call are frozen
(``stop_gradient``), so that call forms no dense gradient (and no implicit all-reduce); any other
use of them in the loss (an L2 term, tied weights) keeps its ordinary gradient, which is detected
at trace time and travels densely next to the factors (``SufficientFactors.extra``).

``nn.DenseGeneral`` and ``nn.Einsum`` layers (attention projections with kernels (D, H, Dh) and
(H, Dh, D)) are the same identity once flattened to ``y[rows, J] = x[rows, D] @ K[D, J]``
(``sfb.contraction``): rows are all batch × sequence positions, u and v are δ and x flattened, and
the kernel gradient is the (D, J) matrix reshaped back. Forms that are not one such contraction
(``batch_dims``, batched einsums, custom ``dot_general``) are refused by name.

Probes have the layer's output dtype (a bf16 layer stays bf16: the forward pass is the user's and
the factors travel as bf16). A layer called inside a flax lifted transformation (``nn.remat``,
``nn.scan``, ``nn.vmap``, ...) cannot be factored: its input lives in that transformation's trace
(and a loop reuses one kernel), so it is refused by name and ``sfb.plan`` leaves it dense.

References:
  Xie, Kim, Zhou, Ho, Kumar, Yu, Xing, `Distributed Machine Learning via Sufficient Factor
  Broadcasting <https://arxiv.org/abs/1511.08486>`_, 2015

  Zhang et al., `Poseidon: An Efficient Communication Architecture for Distributed Deep Learning
  on GPU Clusters <https://arxiv.org/abs/1706.03292>`_, USENIX ATC 2017
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from sfb import axis
from sfb.contraction import MATRIX_LAYERS, Contraction, contraction
from sfb.factors import FromFactors, SufficientFactors


@dataclasses.dataclass(frozen=True)
class ModuleCall:
  """One ``__call__`` of a flax module seen while evaluating the loss."""
  path: tuple[str, ...]
  module_type: str
  in_shape: tuple[int, ...]
  out_shape: tuple[int, ...]
  use_bias: bool
  out_dtype: Any = None
  lifted: tuple[str, ...] = ()   # path of the enclosing flax lifted transformation, () if none
  form: Contraction | str | None = None   # the call as x_flat @ K; why it is not one; None: no matrix layer
  input_id: int = -1             # calls with the same id got the very same input array

  @property
  def name(self) -> str:
    return "/".join(self.path) or "<root>"

  @property
  def is_matrix(self) -> bool:
    """An ``nn.Dense``, ``nn.DenseGeneral`` or ``nn.Einsum`` (factorable or not)."""
    return self.form is not None

  def refuse_if_lifted(self) -> None:
    """Raises for a layer inside a lifted transformation (its factors cannot be read exactly)."""
    if self.lifted:
      where = "/".join(self.lifted)
      raise ValueError(
          f"sfb: layer {self.name} is called inside the flax lifted transformation {where} (nn.remat, "
          f"nn.scan, nn.vmap, nn.jit, ...): its input lives in that transformation's trace, and a scan "
          f"uses one kernel several times, so its sufficient factors cannot be read exactly. Leave it "
          f"to the dense all-reduce: sfb.plan(..., rule=...) does so by itself (choice 'dense (in "
          f"{where})'); do not list it in layers=[...]")

  def check_factorable(self) -> None:
    """Raises, naming the layer and the fix, unless SFB can factor this call exactly."""
    if not self.is_matrix:
      raise ValueError(f"sfb: layer {self.name} is a {self.module_type}, not an nn.Dense, nn.DenseGeneral "
                       "or nn.Einsum; only their kernels have sufficient factors (convolutions share "
                       "weights across positions); leave it out of layers=[...]")
    if isinstance(self.form, str):
      raise ValueError(f"sfb: layer {self.name} cannot be factored: {self.form}. sfb.plan(..., rule=...) "
                       "leaves it dense by itself; do not list it in layers=[...]")
    self.refuse_if_lifted()


def layer_contraction(calls: list[ModuleCall]) -> Contraction:
  """The contraction shared by every call of one layer (calls may differ only in row axes)."""
  first = calls[0].form
  for c in calls[1:]:
    if (c.form.kernel_axes, c.form.in_features, c.form.out_features) != (
        first.kernel_axes, first.in_features, first.out_features):
      raise ValueError(f"sfb: layer {c.name} is called with two different contractions of its kernel "
                       f"(kernel axes {first.kernel_axes} vs {c.form.kernel_axes}, e.g. two einsum "
                       "equations), so its factors cannot be stacked; leave it out of layers=[...]")
  return first


def shared_inputs(calls: list[ModuleCall], selected) -> dict[tuple, tuple]:
  """``{layer: earlier layer}`` for selected layers whose input factor v is the earlier one's:
  both called once, on the very same input array, flattened alike (e.g. the q/k/v projections of
  self-attention). ``scale_by_sfb`` then gathers that v once for all of them."""
  count: dict[tuple, int] = {}
  for c in calls:
    count[c.path] = count.get(c.path, 0) + 1
  first: dict[tuple, tuple] = {}
  out: dict[tuple, tuple] = {}
  for c in calls:
    if c.path in selected and count[c.path] == 1:
      key = (c.input_id, c.form.in_perm, c.form.in_features, str(c.out_dtype))
      out.update({c.path: first[key]} if key in first else {})
      first.setdefault(key, c.path)
  return out


def module_calls(loss_fn: Callable, params, *args) -> list[ModuleCall]:
  """Every module call of ``loss_fn(params, *args)``, in order (abstract evaluation, no FLOPs)."""
  calls: list[ModuleCall] = []
  seen: list = []    # inputs, kept alive so that identity is meaningful

  def input_id(x) -> int:
    found = [i for i, y in enumerate(seen) if y is x]
    if not found:
      seen.append(x)
    return found[0] if found else len(seen) - 1

  def interceptor(next_fun, call_args, kwargs, context):
    out = next_fun(*call_args, **kwargs)
    if context.method_name == "__call__" and call_args and hasattr(call_args[0], "shape"):
      module = context.module
      calls.append(ModuleCall(tuple(module.path), type(module).__name__,
                              tuple(call_args[0].shape), tuple(getattr(out, "shape", ())),
                              bool(getattr(module, "use_bias", False)), getattr(out, "dtype", None),
                              tuple(module.scope.root.path), contraction(module, call_args, kwargs),
                              input_id(call_args[0])))
    return out

  def run(params, *args):
    with nn.intercept_methods(interceptor):
      return loss_fn(params, *args)

  jax.eval_shape(run, params, *args)
  return calls


def _vma(tree) -> tuple[str, ...]:
  axes: set[str] = set()
  for leaf in jax.tree.leaves(tree):
    axes |= axis.varying_axes(leaf) if isinstance(leaf, jax.Array) else set()
  return tuple(sorted(axes))


def _kernel_path(layer: tuple[str, ...], name: str) -> tuple[str, ...]:
  return ("params",) + layer + (name,)


def _get(tree, path):
  for key in path:
    tree = tree[key]
  return tree


def _replace(tree, path, value):
  """Copy of nested dicts ``tree`` with ``tree[path] = value``."""
  if not path:
    return value
  out = dict(tree)
  out[path[0]] = _replace(tree[path[0]], path[1:], value)
  return out


def _spy(value, key, used: set):
  """Identity whose backward pass records ``key`` in ``used`` iff a real cotangent arrives.

  With ``symbolic_zeros=True`` JAX skips (or hands a symbolic zero to) the rule when nothing
  downstream uses ``value`` differentiably: a trace-time, structural test for "used elsewhere".
  """

  @jax.custom_vjp
  def spy(x):
    return x

  def fwd(x):
    return x.value, None

  def bwd(_, ct):
    if isinstance(ct, jax.custom_derivatives.SymbolicZero):
      return (None,)
    used.add(key)
    return (ct,)

  spy.defvjp(fwd, bwd, symbolic_zeros=True)
  return spy(value)


def _frozen_call(module: nn.Module, args, kwargs):
  """``module(*args, **kwargs)`` with its own params under ``stop_gradient`` (this call only)."""
  variables = dict(module.variables)
  variables["params"] = jax.tree.map(lax.stop_gradient, variables["params"])
  return module.clone(parent=None).apply(variables, *args, **kwargs)


def _probed_gradients(loss_fn, selected, calls, params, args):
  """(loss, grads, deltas, inputs, used): gradients of the probed loss (see module docstring).

  ``used`` holds the ``(path, "kernel" | "bias")`` of selected parameters that the loss also uses
  outside their Dense call; their entry in ``grads`` is that use's gradient.
  """
  vma = _vma((params, args))   # each probe varies where the layer's output does
  probes = [functools.reduce(axis.to_varying, vma, jnp.zeros(c.out_shape, c.out_dtype)) for c in calls]
  used: set = set()

  def spied(params):
    for path in selected:
      for name in ("kernel", "bias"):
        try:
          leaf = _get(params, _kernel_path(path, name))
        except (KeyError, TypeError):
          continue
        params = _replace(params, _kernel_path(path, name), _spy(leaf, (path, name), used))
    return params

  def probed_loss(params, probes):
    inputs: list[jax.Array] = []
    reentrant = [False]

    def interceptor(next_fun, call_args, kwargs, context):
      module = context.module
      if (context.method_name == "__call__" and isinstance(module, MATRIX_LAYERS) and not reentrant[0]
          and tuple(module.path) in selected):
        i = len(inputs)
        inputs.append(call_args[0])
        reentrant[0] = True
        try:
          y = _frozen_call(module, call_args, kwargs)
        finally:
          reentrant[0] = False
        return y + probes[i]
      return next_fun(*call_args, **kwargs)

    with nn.intercept_methods(interceptor):
      loss = loss_fn(spied(params), *args)
    return loss, inputs

  (loss, inputs), (grads, deltas) = jax.value_and_grad(probed_loss, argnums=(0, 1), has_aux=True)(
      params, probes)
  return loss, grads, deltas, inputs, used


def _check_plan(layers, used, selected, shared) -> None:
  """A ``Plan`` counted the dense extra terms and the shared inputs of its loss; this loss must
  have the same ones."""
  for layer in getattr(layers, "layers", ()):
    if layer.path not in selected:
      continue
    now = "/".join(shared.get(layer.path, ()))
    if now != layer.shares_input:
      raise ValueError(f"sfb: layer {layer.name} shares its input with {layer.shares_input or 'no layer'} in "
                       f"the loss the plan was made for, but with {now or 'no layer'} in this loss, so the "
                       "plan's bytes would be wrong; make the plan with sfb.plan on this loss")
    for name, planned in (("kernel", layer.extra_kernel), ("bias", layer.extra_bias)):
      if ((layer.path, name) in used) != planned:
        raise ValueError(
            f"sfb: layer {layer.name}'s {name} is {'' if planned else 'also '}used outside its Dense call "
            f"in this loss {'but not' if planned else 'and not'} in the loss the plan was made for, so "
            "the plan's bytes would be wrong; make the plan with sfb.plan on this loss")


def factored_value_and_grad(loss_fn: Callable[..., jax.Array], layers, *,
                            axis_name: str | None = None) -> Callable:
  """``(params, *args) -> (loss, grads)`` with SufficientFactors at the selected layers' kernels.

  Args:
    loss_fn: ``(params, *args) -> scalar``; calls ``module.apply(params, ...)`` of a flax model
      whose variables are ``{"params": ...}``. Scale the loss as the mean over this device's rows
      (``scale_by_sfb`` then averages over devices, matching ``pmean`` of local-mean gradients).
      It may use a selected kernel or bias elsewhere too (an L2 term, tied weights).
    layers: module paths (tuples of names, e.g. ``("Dense_0",)``,
      ``("MultiHeadDotProductAttention_0", "query")``) of the ``nn.Dense`` / ``nn.DenseGeneral`` /
      ``nn.Einsum`` layers to factor, or an ``sfb.Plan`` (its SFB-chosen layers; then the loss
      must use the factored parameters elsewhere exactly where the plan's loss did).
    axis_name: if given, params are first cast to device-varying over it, so this device's
      dense gradients stay local even if the caller passed replicated params.

  Returns:
    A function whose ``grads`` has the params' structure except: each selected kernel is
    ``SufficientFactors(u=δ (rows, J), v=x (rows, D), layout="flax", extra=...)`` with the rows of
    all its call sites concatenated (rows: every position but the contracted axes), in the layer's
    output dtype, plus ``kernel_shape``/``kernel_axes`` for a multi-axis kernel; its bias is
    ``FromFactors(extra=..., bias_shape=...)``. ``extra`` is the dense gradient of the
    parameter's uses outside the layer's calls, or ``None`` when the loss has none (decided while
    tracing). Layers called once on the very same input (``shared_inputs``) hold one ``v`` array,
    which ``scale_by_sfb`` gathers once.

  Raises:
    ValueError: a selected layer that the loss does not call, that is not an ``nn.Dense``,
      ``nn.DenseGeneral`` or ``nn.Einsum``, whose form is not one ``x_flat @ K`` contraction
      (``sfb.contraction``), or that is called inside a flax lifted transformation (``nn.remat``,
      ``nn.scan``, ...).
  """
  selected = tuple(getattr(layers, "sfb_layers", layers))
  selected = {tuple(p) for p in selected}

  def fn(params, *args):
    params = axis.to_varying(params, axis_name)
    calls = [c for c in module_calls(loss_fn, params, *args) if c.path in selected]
    found = {c.path for c in calls}
    for path in selected:
      if path not in found:
        raise ValueError(f"sfb: layer {'/'.join(path)} selected for SFB was not called by the loss")
    for c in calls:
      c.check_factorable()
    loss, grads, deltas, inputs, used = _probed_gradients(loss_fn, selected, calls, params, args)
    shared = shared_inputs(calls, selected)
    _check_plan(layers, used, selected, shared)
    v_of: dict[tuple, jax.Array] = {}
    for path in dict.fromkeys(c.path for c in calls):   # call order: a shared v is made first
      rows = [(c, d, x) for c, d, x in zip(calls, deltas, inputs) if c.path == path]
      grads, v_of[path] = _factor_leaves(grads, path, rows, used, v_of.get(shared.get(path)))
    return loss, grads

  return fn


def _factor_leaves(grads, path, rows, used, v=None):
  """(``grads`` with layer ``path``'s kernel replaced by its SufficientFactors (all call sites'
  rows stacked) and its bias by FromFactors, v); ``rows``: (call, δ, input) per call site;
  ``v``: the input factor of an earlier layer with the same input (``shared_inputs``)."""
  form = layer_contraction([c for c, _, _ in rows])
  u = jnp.concatenate([c.form.output_factor(d) for c, d, _ in rows])
  if v is None:
    v = jnp.concatenate([c.form.input_factor(x).astype(d.dtype) for c, d, x in rows])
  extra = lambda name: _get(grads, _kernel_path(path, name)) if (path, name) in used else None
  multi_axis = form.kernel_axes != (0, 1)
  grads = _replace(grads, _kernel_path(path, "kernel"), SufficientFactors(
      u, v, "flax", extra("kernel"), form.kernel_shape if multi_axis else None,
      form.kernel_axes if multi_axis else None))
  try:
    bias = _get(grads, _kernel_path(path, "bias"))
  except (KeyError, TypeError):
    return grads, v
  return _replace(grads, _kernel_path(path, "bias"), FromFactors(extra("bias"), tuple(bias.shape))), v


def extra_uses(loss_fn: Callable, params, *args, layers) -> set:
  """``{(path, "kernel" | "bias")}`` of the given matrix layers' parameters that ``loss_fn`` also
  uses outside their own calls (abstract evaluation: shapes only, no FLOPs)."""
  selected = {tuple(p) for p in layers}
  used: set = set()

  def run(params, *args):
    calls = [c for c in module_calls(loss_fn, params, *args) if c.path in selected]
    loss, _, _, _, found = _probed_gradients(loss_fn, selected, calls, params, args)
    used.update(found)
    return loss

  if selected:
    jax.eval_shape(run, params, *args)
  return used


def factored_grad(loss_fn: Callable[..., jax.Array], layers, *, axis_name: str | None = None) -> Callable:
  """Like ``jax.grad``: ``(params, *args) -> grads`` of ``factored_value_and_grad``."""
  value_and_grad = factored_value_and_grad(loss_fn, layers, axis_name=axis_name)
  return lambda params, *args: value_and_grad(params, *args)[1]
