"""Per-layer choice between SFB and a dense all-reduce, and the bytes each choice sends.

Poseidon's hybrid communication (Zhang et al., ATC'17, Sec. 3.3, Table 1) picks per FC layer the
cheaper of sending sufficient factors and all-reducing the gradient. For a (D → J) Dense layer
with ``rows`` local rows per step on P devices the floats compared are:

    rule "payload":  SFB iff  P·rows·(J + D)  <  J·D + J     (gathered factors vs psum operand)
    rule "wire":     SFB iff  P·rows·(J + D)  <  2(J·D + J)  (ring all-gather vs ring all-reduce)
    rule "time":     SFB iff  2(P−1)·rows·J·D / F + (P−1)·rows·(J + D)·s / BW
                              <  2(P−1)/P·(J·D + J)·s / BW
    rule "always" / "never": force the choice.

The "time" rule adds what the byte rules leave out: every device rebuilds the gradient from all
P·rows factors (2·P·rows·J·D flops instead of its own 2·rows·J·D), so SFB pays 2(P−1)·rows·J·D
extra flops to save bytes. F (flop/s per device) and BW (link bytes/s) come from a ``CostModel``;
s is the bytes per float. With a fast accelerator F is so large that it equals the "wire" rule; on
slow devices it picks dense earlier.

The bias (+J) of an SFB layer is rebuilt from the gathered U and costs nothing. SFB layers called
once on the very same input array (the q/k/v projections of self-attention) send that v once: the
later ones cost rows·J (the rules decide each layer as if alone; the bytes count v once).

Layers: ``nn.Dense``, and ``nn.DenseGeneral`` / ``nn.Einsum`` read as ``y[rows, J] = x[rows, D] @
K[D, J]`` (``sfb.contraction``; e.g. an attention q/k/v projection with kernel (D, H, Dh) is D × H·Dh,
its output projection (H, Dh, D) is H·Dh × D). ``rows`` counts every position of the call's
non-contracted input axes: b·T for a (b, T, D) sequence batch, so the rules see the true row count.
A DenseGeneral / Einsum form that is not one such contraction is planned dense and named.

Extra uses: if the loss also uses a layer's kernel (or bias) outside its Dense call (an L2 term
written in the loss, tied weights), that use's gradient is all-reduced densely next to the factors
(J·D, resp. J, more floats), so SFB is charged ``P·rows·(J+D) + extra`` on the left of every rule.
Bytes: factors have the layer's output dtype (bf16 layers send bf16 factors), dense gradients the
parameter's dtype; the rules compare bytes, which is the floats above when both are the same.

References:
  Zhang et al., `Poseidon: An Efficient Communication Architecture for Distributed Deep Learning
  on GPU Clusters <https://arxiv.org/abs/1706.03292>`_, USENIX ATC 2017

  Xie, Kim, Zhou, Ho, Kumar, Yu, Xing, `Distributed Machine Learning via Sufficient Factor
  Broadcasting <https://arxiv.org/abs/1511.08486>`_, 2015
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import jax
import numpy as np

from sfb.capture import extra_uses, layer_contraction, module_calls, shared_inputs

RULES = ("payload", "wire", "time", "always", "never")


@dataclasses.dataclass(frozen=True)
class CostModel:
  """Device and link speeds for the "time" rule: flop/s per device and link bytes/s (ring model)."""
  flops_per_s: float
  link_bytes_per_s: float
  itemsize: int = 4

  def __post_init__(self):
    if not (self.flops_per_s > 0 and self.link_bytes_per_s > 0):
      raise ValueError(f"CostModel needs flops_per_s > 0 and link_bytes_per_s > 0, got {self}")

  def sfb_seconds(self, in_features: int, out_features: int, rows: int, num_devices: int) -> float:
    """Extra reconstruction time plus the ring all-gather of the factors."""
    extra = 2 * (num_devices - 1) * rows * out_features * in_features / self.flops_per_s
    return extra + (num_devices - 1) * rows * (out_features + in_features) * self.itemsize / self.link_bytes_per_s

  def dense_seconds(self, in_features: int, out_features: int, num_devices: int, use_bias: bool = True) -> float:
    """The ring all-reduce of the J·D (+ J) gradient."""
    floats = out_features * (in_features + int(use_bias))
    return 2 * (num_devices - 1) / num_devices * floats * self.itemsize / self.link_bytes_per_s


@dataclasses.dataclass(frozen=True)
class LayerPlan:
  """One matrix layer (Dense, DenseGeneral, Einsum): its D × J shape, rows per device, the choice."""
  path: tuple[str, ...]
  in_features: int       # D
  out_features: int      # J
  rows: int              # local rows per step (all call sites)
  use_bias: bool
  use_sfb: bool
  num_devices: int
  extra_kernel: bool = False   # the loss uses the kernel outside its Dense call too
  extra_bias: bool = False     # ... the bias
  factor_itemsize: int = 4     # bytes per factor element: the layer's output dtype
  param_itemsize: int = 4      # bytes per dense gradient element: the kernel's dtype
  lifted: str = ""             # path of the enclosing flax lifted transformation: never factored
  kernel_shape: tuple[int, ...] = ()   # the kernel's own shape (D×J for nn.Dense); () if unknown
  shares_input: str = ""       # an earlier SFB layer with the very same input: v is gathered once

  @property
  def name(self) -> str:
    return "/".join(self.path) or "<root>"

  @property
  def extra_floats(self) -> int:
    """The dense gradient of the parameters' uses outside the Dense call, sent next to the factors."""
    return self.out_features * (self.in_features * self.extra_kernel + (self.use_bias and self.extra_bias))

  @property
  def factor_width(self) -> int:
    """Factor floats per row: J + D, or J when v is another layer's (``shares_input``)."""
    return self.out_features + (0 if self.shares_input else self.in_features)

  @property
  def sfb_floats(self) -> int:
    """Factors every device materialises per step: P·rows·(J + D) (P·rows·J if v is shared)."""
    return self.num_devices * self.rows * self.factor_width

  @property
  def dense_floats(self) -> int:
    """The psum operand: J·D (+ J for the bias)."""
    return self.out_features * (self.in_features + int(self.use_bias))

  @property
  def sent_floats(self) -> int:
    """Floats this device contributes to its collectives (what ``common.comm`` calls payload)."""
    if self.use_sfb:
      return self.rows * self.factor_width + self.extra_floats
    return self.dense_floats

  @property
  def sent_bytes(self) -> int:
    """``sent_floats`` in bytes: factors in the layer's dtype, dense terms in the parameter's."""
    if self.use_sfb:
      return self.rows * self.factor_width * self.factor_itemsize + self.extra_floats * self.param_itemsize
    return self.dense_floats * self.param_itemsize

  @property
  def gathered_bytes(self) -> int:
    """Bytes every device materialises for this layer: all P devices' factors, or the operand."""
    if self.use_sfb:
      return self.sfb_floats * self.factor_itemsize + self.extra_floats * self.param_itemsize
    return self.dense_floats * self.param_itemsize

  @property
  def choice(self) -> str:
    if self.lifted:
      return f"dense (in {self.lifted})"
    if not self.use_sfb:
      return "dense"
    choice = f"SFB + dense {self.extra_floats:,}" if self.extra_floats else "SFB"
    return f"{choice} (v of {self.shares_input})" if self.shares_input else choice


@dataclasses.dataclass(frozen=True)
class Plan:
  """The static SFB/dense decision for every matrix layer of a model."""
  layers: tuple[LayerPlan, ...]
  other_floats: int        # params outside the planned layers: always all-reduced densely
  num_devices: int
  rule: str
  other_bytes: int = 0     # other_floats in bytes (each parameter's own dtype)
  refused: tuple[tuple[str, str], ...] = ()   # (layer, reason): matrix layers that are not x_flat @ K

  @property
  def sfb_layers(self) -> tuple[tuple[str, ...], ...]:
    return tuple(l.path for l in self.layers if l.use_sfb)

  def table(self) -> str:
    w = max([14] + [len(l.name) + 2 for l in self.layers])
    head = (f"{'layer':<{w}}{'kernel':>12}{'shape (D×J)':>14}{'rows':>7}{'SFB floats':>13}{'dense floats':>14}"
            "  choice")
    lines = [f"SFB plan: P={self.num_devices}, rule={self.rule}", head, "-" * len(head)]
    for l in self.layers:
      kernel = "×".join(map(str, l.kernel_shape))
      lines.append(f"{l.name:<{w}}{kernel:>12}{f'{l.in_features}×{l.out_features}':>14}{l.rows:>7}"
                   f"{l.sfb_floats:>13,}{l.dense_floats:>14,}  {l.choice}")
    if self.other_floats:
      lines.append(f"{'other params':<{w}}{'':>12}{'':>14}{'':>7}{'':>13}{self.other_floats:>14,}  dense")
    lines += [f"{name}: dense (in other params), {reason}" for name, reason in self.refused]
    lines.append(f"payload per device per step: {payload_bytes(self):,} B sent "
                 f"({gathered_bytes(self):,} B materialised; all-dense {dense_bytes(self):,} B)")
    return "\n".join(lines)

  def __str__(self) -> str:
    return self.table()


def choose_sfb(in_features: int, out_features: int, rows: int, num_devices: int,
               rule: str = "payload", use_bias: bool = True, cost: CostModel | None = None,
               extra_floats: int = 0, factor_itemsize: int = 4, param_itemsize: int = 4) -> bool:
  """The per-layer rule of the module docstring (``cost`` is required by, and only used by, "time").

  ``extra_floats``: dense gradient floats that SFB must all-reduce anyway (uses of the kernel or
  bias outside the Dense call); ``*_itemsize``: bytes per factor / dense gradient element.
  """
  if rule not in RULES:
    raise ValueError(f"sfb rule must be one of {RULES}, got {rule!r}")
  if rule == "time":
    if cost is None:
      raise ValueError("sfb rule 'time' needs cost=sfb.CostModel(flops_per_s=..., link_bytes_per_s=...)")
    extra = 2 * (num_devices - 1) / num_devices * extra_floats * cost.itemsize / cost.link_bytes_per_s
    return (cost.sfb_seconds(in_features, out_features, rows, num_devices) + extra
            < cost.dense_seconds(in_features, out_features, num_devices, use_bias))
  dense = out_features * (in_features + int(use_bias)) * param_itemsize
  gathered = num_devices * rows * (in_features + out_features) * factor_itemsize
  extra = extra_floats * param_itemsize
  return {"payload": gathered + extra < dense, "wire": gathered + 2 * extra < 2 * dense,
          "always": True, "never": False}[rule]


def plan(loss_fn: Callable, params, *global_args, num_devices: int, rule: str = "payload",
         layers: Sequence[Sequence[str]] | None = None, cost: CostModel | None = None) -> Plan:
  """Decides SFB vs dense for every ``nn.Dense`` / ``nn.DenseGeneral`` / ``nn.Einsum`` that
  ``loss_fn(params, *args)`` calls.

  Args:
    loss_fn: ``(params, *args) -> scalar`` (a flax model's loss).
    params: the model's variables ``{"params": ...}`` (arrays or ShapeDtypeStructs).
    *global_args: the GLOBAL batch (arrays or ShapeDtypeStructs); every array's leading dimension
      must divide by ``num_devices``. Each device sees ``rows / num_devices`` of them.
    num_devices: P, the size of the data axis.
    rule: ``payload`` | ``wire`` | ``time`` | ``always`` | ``never`` (see the module docstring).
    layers: instead of ``rule``, the exact module paths to factor (e.g. ``[("Dense_0",)]``); every
      one must be a matrix layer the loss calls, and one ``x_flat @ K`` contraction.
    cost: the ``CostModel`` of rule ``time``.

  Raises:
    ValueError: unknown rule, rows not divisible by ``num_devices``, or a selected layer that is
      not a matrix layer, not one contraction (``batch_dims``, a batched einsum, a custom
      ``dot_general``) or called inside a flax lifted transformation (``nn.remat``, ``nn.scan``,
      ...); the rules leave all of those dense.
  """
  if rule not in RULES:
    raise ValueError(f"sfb rule must be one of {RULES}, got {rule!r}")
  if not isinstance(num_devices, int) or num_devices < 1:
    raise ValueError(f"num_devices must be a positive integer, got {num_devices!r}")
  if rule == "time" and cost is None and layers is None:
    raise ValueError("sfb rule 'time' needs cost=sfb.CostModel(flops_per_s=..., link_bytes_per_s=...)")

  def local(x):
    shape = tuple(np.shape(x))
    if shape and shape[0] % num_devices:
      raise ValueError(f"sfb.plan: batch rows {shape[0]} do not divide by num_devices={num_devices}; "
                       f"use a batch size that is a multiple of {num_devices}")
    dtype = getattr(x, "dtype", np.asarray(x).dtype)
    return jax.ShapeDtypeStruct(((shape[0] // num_devices),) + shape[1:] if shape else shape, dtype)

  local_args = jax.tree.map(local, global_args)
  calls = module_calls(loss_fn, params, *local_args)
  by_path: dict[tuple[str, ...], list] = {}
  for c in calls:
    by_path.setdefault(c.path, []).append(c)
  if layers is not None:
    wanted = [tuple(p) for p in layers]
    for path in wanted:
      if path not in by_path:
        raise ValueError(f"sfb.plan: layer {'/'.join(path)!r} is not called by the loss; matrix layers: "
                         f"{['/'.join(p) for p, cs in by_path.items() if cs[0].is_matrix]}")
      for c in by_path[path]:
        c.check_factorable()
      layer_contraction(by_path[path])
  matrix = {p: cs for p, cs in by_path.items() if cs[0].is_matrix}
  refused = {p: r for p, r in ((p, _refusal(cs)) for p, cs in matrix.items()) if r}
  planned = {p: cs for p, cs in matrix.items() if p not in refused}
  used = extra_uses(loss_fn, params, *local_args, layers=[p for p, cs in planned.items() if not cs[0].lifted])
  out = [_layer_plan(path, cs, params, used, num_devices, rule, cost,
                     wanted=None if layers is None else path in wanted)
         for path, cs in planned.items()]
  shared = shared_inputs(calls, {l.path for l in out if l.use_sfb})
  out = [dataclasses.replace(l, shares_input="/".join(shared.get(l.path, ()))) for l in out]
  dense_param_floats = sum(l.dense_floats for l in out)
  dense_param_bytes = sum(l.dense_floats * l.param_itemsize for l in out)
  leaves = jax.tree.leaves(params)
  total = sum(int(np.prod(np.shape(x))) for x in leaves)
  total_bytes = sum(int(np.prod(np.shape(x))) * np.dtype(x.dtype).itemsize for x in leaves)
  return Plan(tuple(out), total - dense_param_floats, num_devices,
              "explicit" if layers is not None else rule, total_bytes - dense_param_bytes,
              tuple(("/".join(p), r) for p, r in refused.items()))


def _refusal(calls) -> str:
  """Why a matrix layer's calls cannot be factored ("" if they can), without raising."""
  for c in calls:
    if isinstance(c.form, str):
      return c.form
  try:
    layer_contraction(calls)
  except ValueError as e:
    return str(e)
  return ""


def _layer_plan(path, calls, params, used, num_devices, rule, cost, wanted) -> LayerPlan:
  """One matrix layer's LayerPlan: D × J and rows from its calls' contraction, the choice from the
  rule (or ``wanted`` for explicit layers); a layer inside a lifted transformation stays dense."""
  c = calls[0]
  d, j = c.form.in_features, c.form.out_features
  rows = sum(call.form.rows for call in calls)
  try:
    kernel = params["params"]
    for key in path + ("kernel",):
      kernel = kernel[key]
    param_dtype = kernel.dtype
  except (KeyError, TypeError):
    param_dtype = c.out_dtype   # variables not laid out as {"params": {...}}
  sizes = dict(extra_kernel=(path, "kernel") in used, extra_bias=(path, "bias") in used,
               factor_itemsize=int(np.dtype(c.out_dtype).itemsize),
               param_itemsize=int(np.dtype(param_dtype).itemsize))
  extra = LayerPlan(path, d, j, rows, c.use_bias, True, num_devices, **sizes).extra_floats
  if c.lifted:
    use = False
  elif wanted is not None:
    use = wanted
  else:
    use = choose_sfb(d, j, rows, num_devices, rule, c.use_bias, cost, extra, sizes["factor_itemsize"],
                     sizes["param_itemsize"])
  return LayerPlan(path, d, j, rows, c.use_bias, use, num_devices, **sizes, lifted="/".join(c.lifted),
                   kernel_shape=c.form.kernel_shape)


def payload_bytes(p: Plan) -> int:
  """Bytes each device sends per step: Σ_SFB rows·(J+D) (+ extra) + Σ_dense (J·D + J) + other
  params, each in its own dtype.

  This is what ``common.comm.collective_bytes`` reports as ``payload`` (an all-gather counts the
  device's own contribution, an all-reduce its whole operand).
  """
  return sum(l.sent_bytes for l in p.layers) + p.other_bytes


def gathered_bytes(p: Plan) -> int:
  """Bytes each device materialises per step: Σ_SFB P·rows·(J+D) (+ extra) + dense operands."""
  return sum(l.gathered_bytes for l in p.layers) + p.other_bytes


def dense_bytes(p: Plan) -> int:
  """Bytes of the all-dense alternative (every parameter all-reduced)."""
  return sum(l.dense_floats * l.param_itemsize for l in p.layers) + p.other_bytes


def wire_bytes(p: Plan) -> float:
  """Ring-model bytes each device puts on the wire: all-gather (P−1)·rows·(J+D), all-reduce
  2(P−1)/P of the operand (and of an SFB layer's extra dense term)."""
  n = p.num_devices
  ring_ar = 2 * (n - 1) / n

  def layer(l):
    if l.use_sfb:
      return ((n - 1) * l.rows * l.factor_width * l.factor_itemsize
              + ring_ar * l.extra_floats * l.param_itemsize)
    return ring_ar * l.dense_floats * l.param_itemsize

  return sum(layer(l) for l in p.layers) + ring_ar * p.other_bytes
