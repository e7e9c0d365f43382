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
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import jax
import numpy as np

from sfb.capture import module_calls

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

  @property
  def name(self) -> str:
    return "/".join(self.path) or "<root>"

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
    return self.rows * (self.out_features + self.in_features) if self.use_sfb else self.dense_floats


@dataclasses.dataclass(frozen=True)
class Plan:
  """The static SFB/dense decision for every Dense layer of a model."""
  layers: tuple[LayerPlan, ...]
  other_floats: int        # params outside Dense layers: always all-reduced densely
  num_devices: int
  rule: str
  itemsize: int = 4

  @property
  def sfb_layers(self) -> tuple[tuple[str, ...], ...]:
    return tuple(l.path for l in self.layers if l.use_sfb)

  def table(self) -> str:
    head = f"{'layer':<14}{'shape (D×J)':>14}{'rows':>7}{'SFB floats':>13}{'dense floats':>14}  choice"
    lines = [f"SFB plan: P={self.num_devices}, rule={self.rule}", head, "-" * len(head)]
    for l in self.layers:
      lines.append(f"{l.name:<14}{f'{l.in_features}×{l.out_features}':>14}{l.rows:>7}"
                   f"{l.sfb_floats:>13,}{l.dense_floats:>14,}  {'SFB' if l.use_sfb else 'dense'}")
    if self.other_floats:
      lines.append(f"{'other params':<14}{'':>14}{'':>7}{'':>13}{self.other_floats:>14,}  dense")
    lines.append(f"payload per device per step: {payload_bytes(self):,} B sent "
                 f"({gathered_bytes(self):,} B materialised; all-dense {dense_bytes(self):,} B)")
    return "\n".join(lines)

  def __str__(self) -> str:
    return self.table()


def choose_sfb(in_features: int, out_features: int, rows: int, num_devices: int,
               rule: str = "payload", use_bias: bool = True, cost: CostModel | None = None) -> bool:
  """The per-layer rule of the module docstring (``cost`` is required by, and only used by, "time")."""
  if rule not in RULES:
    raise ValueError(f"sfb rule must be one of {RULES}, got {rule!r}")
  if rule == "time":
    if cost is None:
      raise ValueError("sfb rule 'time' needs cost=sfb.CostModel(flops_per_s=..., link_bytes_per_s=...)")
    return (cost.sfb_seconds(in_features, out_features, rows, num_devices)
            < cost.dense_seconds(in_features, out_features, num_devices, use_bias))
  sfb_floats = num_devices * rows * (in_features + out_features)
  dense = out_features * (in_features + int(use_bias))
  return {"payload": sfb_floats < dense, "wire": sfb_floats < 2 * dense,
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
      not an ``nn.Dense``.
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
  out = []
  for path, cs in by_path.items():
    if not cs[0].is_dense:
      continue
    d, j = cs[0].in_shape[-1], cs[0].out_shape[-1]
    rows = sum(int(np.prod(c.in_shape[:-1])) for c in cs)
    use = (path in wanted) if layers is not None else choose_sfb(d, j, rows, num_devices, rule,
                                                                 cs[0].use_bias, cost)
    out.append(LayerPlan(path, d, j, rows, cs[0].use_bias, use, num_devices))
  dense_param_floats = sum(l.dense_floats for l in out)
  total = sum(int(np.prod(np.shape(x))) for x in jax.tree.leaves(params))
  itemsize = int(np.dtype(jax.tree.leaves(params)[0].dtype).itemsize)
  return Plan(tuple(out), total - dense_param_floats, num_devices,
              "explicit" if layers is not None else rule, itemsize)


def payload_bytes(p: Plan) -> int:
  """Bytes each device sends per step: Σ_SFB rows·(J+D) + Σ_dense (J·D + J) + other params.

  This is what ``common.comm.collective_bytes`` reports as ``payload`` (an all-gather counts the
  device's own contribution, an all-reduce its whole operand).
  """
  return p.itemsize * (sum(l.sent_floats for l in p.layers) + p.other_floats)


def gathered_bytes(p: Plan) -> int:
  """Bytes each device materialises per step: Σ_SFB P·rows·(J+D) + dense operands."""
  return p.itemsize * (sum(l.sfb_floats if l.use_sfb else l.dense_floats for l in p.layers)
                       + p.other_floats)


def dense_bytes(p: Plan) -> int:
  """Bytes of the all-dense alternative (every parameter all-reduced)."""
  return p.itemsize * (sum(l.dense_floats for l in p.layers) + p.other_floats)


def wire_bytes(p: Plan) -> float:
  """Ring-model bytes each device puts on the wire: all-gather (P−1)·rows·(J+D), all-reduce
  2(P−1)/P of the operand."""
  n = p.num_devices
  ring_ar = 2 * (n - 1) / n
  total = sum((n - 1) * l.rows * (l.in_features + l.out_features) if l.use_sfb
              else ring_ar * l.dense_floats for l in p.layers) + ring_ar * p.other_floats
  return p.itemsize * total
