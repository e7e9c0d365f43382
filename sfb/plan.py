"""Per-layer choice between SFB and a dense all-reduce, and the bytes each choice sends.

Poseidon's hybrid communication (Zhang et al., ATC'17, Sec. 3.3, Table 1) picks per FC layer the
cheaper of sending sufficient factors and all-reducing the gradient. For a (D → J) Dense layer
with ``rows`` local rows per step on P devices the floats compared are (sfb.md §2.3):

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

The bias (+J) of an SFB layer is rebuilt from the gathered U and costs nothing.

Extra uses: if the loss also uses a layer's kernel (or bias) outside its Dense call (an L2 term
written in the loss, tied weights), that use's gradient is all-reduced densely next to the factors
(J·D, resp. J, more floats), so SFB is charged ``P·rows·(J+D) + extra`` on the left of every rule.
Bytes: factors have the layer's output dtype (bf16 layers send bf16 factors), dense gradients the
parameter's dtype; the rules compare bytes, which is the floats above when both are the same.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import jax
import numpy as np

from sfb.capture import extra_uses, module_calls

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
  """One Dense layer: its shape, rows per device and the choice."""
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

  @property
  def name(self) -> str:
    return "/".join(self.path) or "<root>"

  @property
  def extra_floats(self) -> int:
    """The dense gradient of the parameters' uses outside the Dense call, sent next to the factors."""
    return self.out_features * (self.in_features * self.extra_kernel + (self.use_bias and self.extra_bias))

  @property
  def sfb_floats(self) -> int:
    """Factors every device materialises per step: P·rows·(J + D)."""
    return self.num_devices * self.rows * (self.out_features + self.in_features)

  @property
  def dense_floats(self) -> int:
    """The psum operand: J·D (+ J for the bias)."""
    return self.out_features * (self.in_features + int(self.use_bias))

  @property
  def sent_floats(self) -> int:
    """Floats this device contributes to its collectives (what ``common.comm`` calls payload)."""
    if self.use_sfb:
      return self.rows * (self.out_features + self.in_features) + self.extra_floats
    return self.dense_floats

  @property
  def sent_bytes(self) -> int:
    """``sent_floats`` in bytes: factors in the layer's dtype, dense terms in the parameter's."""
    if self.use_sfb:
      return (self.rows * (self.out_features + self.in_features) * self.factor_itemsize
              + self.extra_floats * self.param_itemsize)
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
    return f"SFB + dense {self.extra_floats:,}" if self.extra_floats else "SFB"


@dataclasses.dataclass(frozen=True)
class Plan:
  """The static SFB/dense decision for every Dense layer of a model."""
  layers: tuple[LayerPlan, ...]
  other_floats: int        # params outside Dense layers: always all-reduced densely
  num_devices: int
  rule: str
  other_bytes: int = 0     # other_floats in bytes (each parameter's own dtype)

  @property
  def sfb_layers(self) -> tuple[tuple[str, ...], ...]:
    return tuple(l.path for l in self.layers if l.use_sfb)

  def table(self) -> str:
    w = max([14] + [len(l.name) + 2 for l in self.layers])
    head = f"{'layer':<{w}}{'shape (D×J)':>14}{'rows':>7}{'SFB floats':>13}{'dense floats':>14}  choice"
    lines = [f"SFB plan: P={self.num_devices}, rule={self.rule}", head, "-" * len(head)]
    for l in self.layers:
      lines.append(f"{l.name:<{w}}{f'{l.in_features}×{l.out_features}':>14}{l.rows:>7}"
                   f"{l.sfb_floats:>13,}{l.dense_floats:>14,}  {l.choice}")
    if self.other_floats:
      lines.append(f"{'other params':<{w}}{'':>14}{'':>7}{'':>13}{self.other_floats:>14,}  dense")
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
  """Decides SFB vs dense for every ``nn.Dense`` that ``loss_fn(params, *args)`` calls.

  Args:
    loss_fn: ``(params, *args) -> scalar`` (a flax model's loss).
    params: the model's variables ``{"params": ...}`` (arrays or ShapeDtypeStructs).
    *global_args: the GLOBAL batch (arrays or ShapeDtypeStructs); every array's leading dimension
      must divide by ``num_devices``. Each device sees ``rows / num_devices`` of them.
    num_devices: P, the size of the data axis.
    rule: ``payload`` | ``wire`` | ``time`` | ``always`` | ``never`` (see the module docstring).
    layers: instead of ``rule``, the exact module paths to factor (e.g. ``[("Dense_0",)]``); every
      one must be an ``nn.Dense`` the loss calls.
    cost: the ``CostModel`` of rule ``time``.

  Raises:
    ValueError: unknown rule, rows not divisible by ``num_devices``, or a selected layer that is
      not an ``nn.Dense`` or is called inside a flax lifted transformation (``nn.remat``,
      ``nn.scan``, ...; the rules leave those dense).
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
        raise ValueError(f"sfb.plan: layer {'/'.join(path)!r} is not called by the loss; Dense layers: "
                         f"{['/'.join(p) for p, cs in by_path.items() if cs[0].is_dense]}")
      if not by_path[path][0].is_dense:
        raise ValueError(f"sfb.plan: layer {'/'.join(path)!r} is a {by_path[path][0].module_type}, not "
                         "an nn.Dense; only Dense kernels have sufficient factors")
      by_path[path][0].refuse_if_lifted()
  dense_layers = {p: cs for p, cs in by_path.items() if cs[0].is_dense}
  used = extra_uses(loss_fn, params, *local_args, layers=[p for p, cs in dense_layers.items() if not cs[0].lifted])
  out = [_layer_plan(path, cs, params, used, num_devices, rule, cost,
                     wanted=None if layers is None else path in wanted)
         for path, cs in dense_layers.items()]
  dense_param_floats = sum(l.dense_floats for l in out)
  dense_param_bytes = sum(l.dense_floats * l.param_itemsize for l in out)
  leaves = jax.tree.leaves(params)
  total = sum(int(np.prod(np.shape(x))) for x in leaves)
  total_bytes = sum(int(np.prod(np.shape(x))) * np.dtype(x.dtype).itemsize for x in leaves)
  return Plan(tuple(out), total - dense_param_floats, num_devices,
              "explicit" if layers is not None else rule, total_bytes - dense_param_bytes)


def _layer_plan(path, calls, params, used, num_devices, rule, cost, wanted) -> LayerPlan:
  """One Dense layer's LayerPlan: shape and rows from its calls, the choice from the rule (or
  ``wanted`` for explicit layers); a layer inside a lifted transformation stays dense."""
  c = calls[0]
  d, j = c.in_shape[-1], c.out_shape[-1]
  rows = sum(int(np.prod(call.in_shape[:-1])) for call in calls)
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
  return LayerPlan(path, d, j, rows, c.use_bias, use, num_devices, **sizes, lifted="/".join(c.lifted))


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
      return ((n - 1) * l.rows * (l.in_features + l.out_features) * l.factor_itemsize
              + ring_ar * l.extra_floats * l.param_itemsize)
    return ring_ar * l.dense_floats * l.param_itemsize

  return sum(layer(l) for l in p.layers) + ring_ar * p.other_bytes
