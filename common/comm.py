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

Per-branch accounting (``collective_bytes(compiled, taken=...)``): XLA keeps each
instruction's Python stack (the ``StackFrames`` table of the HLO text), so a branch
computation is known by the functions its instructions were traced in. ``taken`` maps
a function name (the last component of its qualified name, e.g. ``"refresh"``) to
whether the branch traced in that function runs this step; a two-branch conditional
with exactly one branch traced in such a function counts that branch or the other.
This is how the harness logs the bytes of the branch a step took (e.g. a FOSI/DHO2
refresh step vs a plain step) from the one compiled program.
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
  unattributed: tuple[str, ...] = ()  # conditionals with differing branch costs that ``taken`` did not decide

  def of_kind(self, kind: str) -> tuple[Collective, ...]:
    return tuple(c for c in self.collectives if c.kind == kind)

  @property
  def count(self) -> int:
    """Collective instructions executed per step (loop trip counts applied)."""
    return sum(c.count for c in self.collectives)

  @property
  def arrays(self) -> int:
    """Arrays those instructions carry per step: a tuple all-reduce of k leaves counts k
    (XLA:CPU reduces a tuple operand by operand; one bucketed gradient counts 1)."""
    return sum(len(c.dtypes) * c.count for c in self.collectives)

  def summary(self) -> str:
    lines = [f"payload {self.payload:,.0f} B/device/step, wire {self.wire:,.0f} B (ring model), "
             f"{self.count} collective(s) carrying {self.arrays} array(s)"]
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


_TABLE_ROW = re.compile(r"^(\d+) (.*)$")


def _frame_functions(text: str) -> dict[int, frozenset[str]]:
  """stack_frame_id -> short names of every function on that frame's stack (HLO text tables)."""
  tables: dict[str, dict[int, str]] = {}
  section = None
  for line in text.splitlines():
    if line in ("FileNames", "FunctionNames", "FileLocations", "StackFrames"):
      section = line
      tables[section] = {}
      continue
    row = _TABLE_ROW.match(line) if section else None
    if row is None:
      section = None if line.startswith(("HloModule", "ENTRY", "%")) else section
      continue
    tables[section][int(row.group(1))] = row.group(2)
  names = {i: v.strip('"').split(".")[-1] for i, v in tables.get("FunctionNames", {}).items()}
  location = {i: int(re.search(r"function_name_id=(\d+)", v).group(1))
              for i, v in tables.get("FileLocations", {}).items()}
  frames = {}
  for i, v in tables.get("StackFrames", {}).items():
    loc = int(re.search(r"file_location_id=(\d+)", v).group(1))
    parent = int(re.search(r"parent_frame_id=(\d+)", v).group(1)) - 1   # stored 1-based, 0 = root
    frames[i] = (names.get(location.get(loc)), parent)
  result: dict[int, frozenset[str]] = {}
  for i in frames:
    found, j = set(), i
    while j in frames and j not in found:
      found.add(j)
      j = frames[j][1]
    result[i] = frozenset(frames[f][0] for f in found if frames[f][0])
  return result


def collective_bytes(compiled: Any, taken: dict[str, bool] | None = None) -> CommReport:
  """Counts the collective bytes of a compiled program (see module docstring).

  Args:
    compiled: a `jax.stages.Compiled` (``jax.jit(f).lower(...).compile()``) or its
      ``as_text()``.
    taken: optional ``{function name: runs this step}``; conditionals whose branches it
      identifies count the branch the step takes instead of the dearest.
  """
  text = _hlo_text(compiled)
  m = re.search(r"num_partitions=(\d+)", text)
  num_devices = int(m.group(1)) if m else 1
  ops: dict[str, list[tuple]] = {}
  calls: dict[str, list[tuple]] = {}
  frames_of: dict[str, set[int]] = {}     # computation -> stack frames of its instructions
  entry, current = None, None
  for line in text.splitlines():
    if line and not line[0].isspace() and line.rstrip().endswith("{") and not line.startswith("HloModule"):
      current = re.match(r"(?:ENTRY\s+)?%?([\w.\-]+)", line).group(1)
      ops[current], calls[current], frames_of[current] = [], [], set()
      if line.startswith("ENTRY"):
        entry = current
      continue
    match = _INSTRUCTION.match(line) if current else None
    if not match:
      continue
    _, shape, op, rest = match.groups()
    frame = re.search(r"stack_frame_id=(\d+)", rest)
    if frame:
      frames_of[current].add(int(frame.group(1)))
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
    for callee in re.findall(r"(?:calls|to_apply)=%?([\w.\-]+)", rest):
      calls[current].append(("call", [callee], 1))

  notes: list[str] = []
  unattributed: list[str] = []
  frame_functions = _frame_functions(text) if taken is not None else {}
  function_cache: dict[str, frozenset[str]] = {}

  def functions(comp: str) -> frozenset[str]:
    """Functions the instructions of ``comp`` (and of everything it calls) were traced in."""
    if comp not in function_cache:
      function_cache[comp] = frozenset()
      names = set()
      for f in frames_of.get(comp, ()):
        names |= frame_functions.get(f, frozenset())
      for _, targets, _ in calls.get(comp, []):
        for t in targets:
          names |= functions(t)
      function_cache[comp] = frozenset(names)
    return function_cache[comp]

  def chosen_branch(targets: list[str]) -> int | None:
    """Index of the branch ``taken`` selects, or None when it does not identify one."""
    if not taken or len(targets) != 2:
      return None
    owned = [functions(t) for t in targets]
    for name, runs in taken.items():
      hits = [i for i, fs in enumerate(owned) if name in fs]
      if len(hits) == 1:
        return hits[0] if runs else 1 - hits[0]
    return None

  def visit(comp: str, mult: int) -> list[Collective]:
    found = [Collective(k, s, n, p, w, mult, comp) for k, s, n, p, w in ops.get(comp, [])]
    for how, targets, k in calls.get(comp, []):
      if how == "loop":
        if k is None:
          notes.append(f"{comp}: while loop with unknown trip count, counted once")
        found += visit(targets[0], mult * (k or 1))
      elif how == "cond":
        targets = [t for t in targets if t in ops]
        branches = [visit(t, mult) for t in targets]
        costs = [sum(c.payload * c.count for c in b) for b in branches]
        pick = chosen_branch(targets)
        if pick is not None:
          found += branches[pick]
          continue
        if len(set(costs)) > 1:
          notes.append(f"{comp}: conditional with branch payloads {costs}; the largest is counted")
          if taken is not None:
            unattributed.append(f"{comp}: branches {costs} traced in "
                                f"{[sorted(functions(t) - functions(comp)) for t in targets]}")
        if branches:
          found += max(branches, key=lambda b: sum(c.payload * c.count for c in b))
      elif targets[0] in ops:
        found += visit(targets[0], mult)
    return found

  collectives = tuple(visit(entry, 1)) if entry else ()
  return CommReport(
      payload=sum(c.payload * c.count for c in collectives),
      wire=sum(c.wire * c.count for c in collectives),
      collectives=collectives, notes=tuple(notes), num_devices=num_devices,
      unattributed=tuple(unattributed))


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
