"""Sufficient factors of an unmodified flax model, by method interception.

For an ``nn.Dense`` layer ``y = x W + c`` inside any network, ``∂L/∂W = xᵀ δ`` with
``δ = ∂L/∂y`` (Xie et al., arXiv 1511.08486, Sec. 2; Poseidon, Zhang et al. ATC'17, Sec. 3.2):
the layer's sufficient factors are (u, v) = (δ, x) per row. ``factored_value_and_grad`` reads
them without touching the model: ``flax.linen.intercept_methods`` records each selected layer's
input ``x`` and returns ``y + probe`` with a zero, device-varying probe, so the gradient w.r.t. the
probe is exactly δ. Selected kernels and biases are wrapped in ``stop_gradient`` so no dense
gradient (and no implicit all-reduce) is formed for them.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from sfb.factors import FromFactors, SufficientFactors, varying_axes


@dataclasses.dataclass(frozen=True)
class ModuleCall:
  """One ``__call__`` of a flax module seen while evaluating the loss."""
  path: tuple[str, ...]
  module_type: str
  is_dense: bool
  in_shape: tuple[int, ...]
  out_shape: tuple[int, ...]
  use_bias: bool


def module_calls(loss_fn: Callable, params, *args) -> list[ModuleCall]:
  """Every module call of ``loss_fn(params, *args)``, in order (abstract evaluation, no FLOPs)."""
  calls: list[ModuleCall] = []

  def interceptor(next_fun, call_args, kwargs, context):
    out = next_fun(*call_args, **kwargs)
    if context.method_name == "__call__" and call_args and hasattr(call_args[0], "shape"):
      module = context.module
      calls.append(ModuleCall(tuple(module.path), type(module).__name__, isinstance(module, nn.Dense),
                              tuple(call_args[0].shape), tuple(getattr(out, "shape", ())),
                              bool(getattr(module, "use_bias", False))))
    return out

  def run(params, *args):
    with nn.intercept_methods(interceptor):
      return loss_fn(params, *args)

  jax.eval_shape(run, params, *args)
  return calls


def _vma(tree) -> tuple[str, ...]:
  axes: set[str] = set()
  for leaf in jax.tree.leaves(tree):
    axes |= varying_axes(leaf) if isinstance(leaf, jax.Array) else set()
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


def factored_value_and_grad(loss_fn: Callable[..., jax.Array], layers, *,
                            axis_name: str | None = None) -> Callable:
  """``(params, *args) -> (loss, grads)`` with SufficientFactors at the selected Dense kernels.

  Args:
    loss_fn: ``(params, *args) -> scalar``; calls ``module.apply(params, ...)`` of a flax model
      whose variables are ``{"params": ...}``. Scale the loss as the mean over this device's rows
      (``scale_by_sfb`` then averages over devices, matching ``pmean`` of local-mean gradients).
    layers: module paths (tuples of names, e.g. ``("Dense_0",)``) of the ``nn.Dense`` layers to
      factor, or an ``sfb.Plan`` (its SFB-chosen layers).
    axis_name: if given, params are first cast to device-varying over it, so this device's
      dense gradients stay local even if the caller passed replicated params.

  Returns:
    A function whose ``grads`` has the params' structure except: each selected kernel is
    ``SufficientFactors(u=δ (rows, J), v=x (rows, D), layout="flax")`` with the rows of all its call
    sites concatenated, and its bias is ``FromFactors()``.
  """
  selected = tuple(getattr(layers, "sfb_layers", layers))
  selected = {tuple(p) for p in selected}

  def fn(params, *args):
    if axis_name is not None and axis_name not in _vma(params):
      params = lax.pcast(params, axis_name, to="varying")
    calls = [c for c in module_calls(loss_fn, params, *args) if c.path in selected]
    found = {c.path for c in calls}
    for path in selected:
      if path not in found:
        raise ValueError(f"sfb: layer {'/'.join(path)} selected for SFB was not called by the loss")
    for c in calls:
      if not c.is_dense:
        raise ValueError(f"sfb: layer {'/'.join(c.path)} is a {c.module_type}, not an nn.Dense; only "
                         "Dense kernels have sufficient factors (convolutions share weights)")
    vma = _vma((params, args))
    dtype = jax.tree.leaves(params)[0].dtype

    def zero_probe(shape):
      z = jnp.zeros(shape, dtype)
      return lax.pcast(z, vma, to="varying") if vma else z

    probes = [zero_probe(c.out_shape) for c in calls]

    def frozen(params):
      for path in selected:
        for name in ("kernel", "bias"):
          try:
            leaf = _get(params, _kernel_path(path, name))
          except (KeyError, TypeError):
            continue
          params = _replace(params, _kernel_path(path, name), lax.stop_gradient(leaf))
      return params

    def probed_loss(params, probes):
      inputs: list[jax.Array] = []

      def interceptor(next_fun, call_args, kwargs, context):
        module = context.module
        if (context.method_name == "__call__" and isinstance(module, nn.Dense)
            and tuple(module.path) in selected):
          i = len(inputs)
          inputs.append(call_args[0])
          return next_fun(*call_args, **kwargs) + probes[i]
        return next_fun(*call_args, **kwargs)

      with nn.intercept_methods(interceptor):
        loss = loss_fn(frozen(params), *args)
      return loss, inputs

    (loss, inputs), (grads, deltas) = jax.value_and_grad(probed_loss, argnums=(0, 1), has_aux=True)(
        params, probes)
    for path in selected:
      rows = [(d, x) for c, d, x in zip(calls, deltas, inputs) if c.path == path]
      u = jnp.concatenate([d.reshape(-1, d.shape[-1]) for d, _ in rows])
      v = jnp.concatenate([x.reshape(-1, x.shape[-1]) for _, x in rows])
      grads = _replace(grads, _kernel_path(path, "kernel"), SufficientFactors(u, v, "flax"))
      try:
        _get(grads, _kernel_path(path, "bias"))
        grads = _replace(grads, _kernel_path(path, "bias"), FromFactors())
      except (KeyError, TypeError):
        pass
    return loss, grads

  return fn


def factored_grad(loss_fn: Callable[..., jax.Array], layers, *, axis_name: str | None = None) -> Callable:
  """Like ``jax.grad``: ``(params, *args) -> grads`` of ``factored_value_and_grad``."""
  value_and_grad = factored_value_and_grad(loss_fn, layers, axis_name=axis_name)
  return lambda params, *args: value_and_grad(params, *args)[1]
