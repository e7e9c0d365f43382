"""Communication accounting from the compiled program.

`collective_bytes(compiled)` parses the post-optimisation HLO text of a compiled
XLA program (one device's view) and adds up every collective it will execute:
all-reduce, all-gather, reduce-scatter, all-to-all and collective-permute,
including the ones XLA inserts on its own (the implicit all-reduce of a gradient
w.r.t. replicated parameters, partitioner collectives under `jit`).

Two numbers are reported per device and step:
  * ``payload``: bytes of the operand each device contributes (what the
    algorithm "sends"): all-reduce -> its size, all-gather -> result / n,
    reduce-scatter -> result * n, all-to-all / permute -> its size;
  * ``wire``: bytes each device puts on the wire under a ring model:
    all-reduce 2(n-1)/n s, all-gather (n-1)/n s, reduce-scatter (n-1) s,
    all-to-all (n-1)/n s, permute s.

Collectives inside `while` loops are multiplied by XLA's ``known_trip_count``
(a loop without one is counted once and flagged in ``notes``). A `conditional`
counts its dearest branch and is flagged when branch costs differ, because its
cost depends on runtime data.
"""
from __future__ import annotations

import dataclasses
import math
import re
from typing import Any

DTYPE_BYTES = {
    "pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2,
    "s32": 4, "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8,
    "c128": 16, "s4": 0.5, "u4": 0.5, "f8e4m3fn": 1, "f8e5m2": 1,
}
KINDS = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")

_INSTRUCTION = re.compile(r"^\s+(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(.+?)\s+([\w\-]+)\((.*)$")
_ARRAY = re.compile(r"\b([a-z][0-9a-z]*)\[([0-9,]*)\]")


@dataclasses.dataclass(frozen=True)
class Collective:
  """One collective instruction as executed per step (multiplicity applied)."""
  kind: str
  shape: str           # HLO result type, e.g. "f32[8,16]{1,0}"
  group_size: int      # devices taking part in one replica group
  payload: float       # bytes per device per execution
  wire: float          # ring-model bytes per device per execution
  count: int           # executions per step (loop trip counts)
  computation: str

  @property
  def dtypes(self) -> tuple[str, ...]:
    return tuple(dt for dt, _ in _ARRAY.findall(self.shape) if dt in DTYPE_BYTES)

  @property
  def elements(self) -> int:
    return sum(math.prod(int(d) for d in dims.split(",") if d)
               for dt, dims in _ARRAY.findall(self.shape) if dt in DTYPE_BYTES)


@dataclasses.dataclass(frozen=True)
class CommReport:
  payload: float                     # bytes per device per step
  wire: float                        # ring-model bytes per device per step
  collectives: tuple[Collective, ...]
  notes: tuple[str, ...]
  num_devices: int

  def of_kind(self, kind: str) -> tuple[Collective, ...]:
    return tuple(c for c in self.collectives if c.kind == kind)

  def summary(self) -> str:
    lines = [f"payload {self.payload:,.0f} B/device/step, wire {self.wire:,.0f} B (ring model)"]
    for c in self.collectives:
      lines.append(f"  {c.kind:18s} {c.shape:28s} n={c.group_size} x{c.count} "
                   f"payload={c.payload * c.count:,.0f} B")
    lines += [f"  note: {n}" for n in self.notes]
    return "\n".join(lines)


def _array_sizes(shape: str) -> list[float]:
  sizes = []
  for dtype, dims in _ARRAY.findall(shape):
    if dtype in DTYPE_BYTES:
      sizes.append(math.prod(int(d) for d in dims.split(",") if d) * DTYPE_BYTES[dtype])
  return sizes


def _group_size(attrs: str, default: int) -> int:
  iota = re.search(r"replica_groups=\[([0-9,]+)\]<=", attrs)
  if iota:
    return int(iota.group(1).split(",")[-1])
  explicit = re.search(r"replica_groups=\{\{([0-9,]*)\}", attrs)
  if explicit and explicit.group(1):
    return len(explicit.group(1).split(","))
  return default


def _per_device(kind: str, size: float, n: int) -> tuple[float, float]:
  if kind == "all-reduce":
    return size, 2 * (n - 1) / n * size
  if kind == "all-gather":
    return size / n, (n - 1) / n * size
  if kind == "reduce-scatter":
    return size * n, (n - 1) * size
  if kind == "all-to-all":
    return size, (n - 1) / n * size
  return size, size  # collective-permute


def _hlo_text(compiled: Any) -> str:
  if isinstance(compiled, str):
    return compiled
  if hasattr(compiled, "as_text"):
    return compiled.as_text()
  raise TypeError(f"expected compiled program or HLO text, got {type(compiled).__name__}")


def collective_bytes(compiled: Any) -> CommReport:
  """Counts the collective bytes of a compiled program (see module docstring).

  Args:
    compiled: a `jax.stages.Compiled` (``jax.jit(f).lower(...).compile()``) or its
      ``as_text()``.
  """
  text = _hlo_text(compiled)
  m = re.search(r"num_partitions=(\d+)", text)
  num_devices = int(m.group(1)) if m else 1
  ops: dict[str, list[tuple]] = {}
  calls: dict[str, list[tuple]] = {}
  entry, current = None, None
  for line in text.splitlines():
    if line and not line[0].isspace() and line.rstrip().endswith("{") and not line.startswith("HloModule"):
      current = re.match(r"(?:ENTRY\s+)?%?([\w.\-]+)", line).group(1)
      ops[current], calls[current] = [], []
      if line.startswith("ENTRY"):
        entry = current
      continue
    match = _INSTRUCTION.match(line) if current else None
    if not match:
      continue
    _, shape, op, rest = match.groups()
    kind = op.removesuffix("-start")
    if kind in KINDS and not op.endswith("-done"):
      sizes = _array_sizes(shape)
      if op.endswith("-start") and kind != "all-reduce" and len(sizes) > 1:
        sizes = sizes[len(sizes) // 2:]  # async tuple is (operands..., results...)
      n = _group_size(rest, num_devices)
      per = [_per_device(kind, s, n) for s in sizes]
      ops[current].append((kind, shape, n, sum(p for p, _ in per), sum(w for _, w in per)))
    elif op == "while":
      trip = re.search(r'"known_trip_count":\{"n":"(\d+)"', rest)
      body = re.search(r"body=%?([\w.\-]+)", rest).group(1)
      calls[current].append(("loop", [body], int(trip.group(1)) if trip else None))
    elif op == "conditional":
      branches = re.search(r"branch_computations=\{([^}]*)\}", rest)
      names = (re.findall(r"%?([\w.\-]+)", branches.group(1)) if branches
               else re.findall(r"(?:true|false)_computation=%?([\w.\-]+)", rest))
      calls[current].append(("cond", names, 1))
    else:
      for callee in re.findall(r"(?:calls|to_apply)=%?([\w.\-]+)", rest):
        calls[current].append(("call", [callee], 1))

  notes: list[str] = []

  def visit(comp: str, mult: int) -> list[Collective]:
    found = [Collective(k, s, n, p, w, mult, comp) for k, s, n, p, w in ops.get(comp, [])]
    for how, targets, k in calls.get(comp, []):
      if how == "loop":
        if k is None:
          notes.append(f"{comp}: while loop with unknown trip count, counted once")
        found += visit(targets[0], mult * (k or 1))
      elif how == "cond":
        branches = [visit(t, mult) for t in targets if t in ops]
        costs = [sum(c.payload * c.count for c in b) for b in branches]
        if len(set(costs)) > 1:
          notes.append(f"{comp}: conditional with branch payloads {costs}; the largest is counted")
        if branches:
          found += max(branches, key=lambda b: sum(c.payload * c.count for c in b))
      elif targets[0] in ops:
        found += visit(targets[0], mult)
    return found

  collectives = tuple(visit(entry, 1)) if entry else ()
  return CommReport(
      payload=sum(c.payload * c.count for c in collectives),
      wire=sum(c.wire * c.count for c in collectives),
      collectives=collectives, notes=tuple(notes), num_devices=num_devices)


def step_bytes(fn, *args, **kwargs) -> CommReport:
  """Lowers and compiles ``fn`` (a jitted function) on ``args`` and counts its collectives."""
  return collective_bytes(fn.lower(*args, **kwargs).compile())


def dense_allreduce_present(report: CommReport, num_elements: int, dtype: str = "f32") -> bool:
  """True if the program all-reduces a tensor of at least ``num_elements`` of ``dtype``.

  Used by tests to prove that a compressing algorithm does not also ship the dense
  gradient (the hidden all-reduce from differentiating replicated parameters).
  """
  return any(c.kind == "all-reduce" and dtype in c.dtypes and c.elements >= num_elements
             for c in report.collectives)
