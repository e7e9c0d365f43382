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

Which text (``CommReport.source``): the compiled text is what XLA runs, with XLA's
dtypes. XLA:CPU sends bf16 collectives (all-reduce, reduce-scatter, all-gather,
all-to-all, collective-permute) as f32 (convert, f32 collective, convert), so there a bf16 payload counts twice its bytes.
``lowered_collective_bytes(jax.jit(f).lower(...))`` counts the lowered program
(StableHLO) instead: the program's own collectives in the dtypes it sends, loops by the
counter pattern jax emits, conditionals and ``taken`` as above (function names from the
ops' debug-info locations). It does not see collectives the partitioner inserts under
``jit`` shardings, nor XLA's combining (its ``count`` is of the collectives as written).
Report the lowered figure for a bf16 payload and say which one a figure is
(``CommReport.summary()`` does).
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

COMPILED, LOWERED = "compiled", "lowered"
SOURCES = {COMPILED: "from the compiled program (XLA's dtypes: XLA:CPU sends bf16 collectives as f32)",
           LOWERED: "from the lowered program (StableHLO, the program's own dtypes)"}

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
  source: str = "compiled"            # which text the figures come from: COMPILED or LOWERED

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
             f"{self.count} collective(s) carrying {self.arrays} array(s); {SOURCES[self.source]}"]
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


@dataclasses.dataclass
class _Program:
  """A program as a call graph: per computation (HLO computation, or a StableHLO function/region) its
  collectives ``(kind, shape, n, payload, wire)`` and its calls ``(how, targets, trip count)``;
  ``names(comp)`` = the functions its own instructions were traced in (for ``taken``)."""
  ops: dict
  calls: dict
  entry: str | None
  num_devices: int
  names: Any


def _parse_hlo(text: str, with_names: bool) -> _Program:
  """The compiled (post-optimisation) HLO text: computations, collectives, while/conditional/call edges."""
  m = re.search(r"num_partitions=(\d+)", text)
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
      n = _group_size(rest, int(m.group(1)) if m else 1)
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
  frame_functions = _frame_functions(text) if with_names else {}

  def names(comp: str) -> frozenset[str]:
    return frozenset().union(*(frame_functions.get(f, frozenset()) for f in frames_of.get(comp, ())))
  return _Program(ops, calls, entry, int(m.group(1)) if m else 1, names)


def _count(program: _Program, taken: dict[str, bool] | None, source: str) -> CommReport:
  """Adds up the collectives reachable from the entry (trip counts, dearest or ``taken`` branch)."""
  ops, calls = program.ops, program.calls
  notes: list[str] = []
  unattributed: list[str] = []
  function_cache: dict[str, frozenset[str]] = {}

  def functions(comp: str) -> frozenset[str]:
    """Functions the instructions of ``comp`` (and of everything it calls) were traced in."""
    if comp not in function_cache:
      function_cache[comp] = frozenset()
      names = set(program.names(comp))
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

  collectives = tuple(visit(program.entry, 1)) if program.entry else ()
  return CommReport(
      payload=sum(c.payload * c.count for c in collectives),
      wire=sum(c.wire * c.count for c in collectives),
      collectives=collectives, notes=tuple(notes), num_devices=program.num_devices,
      unattributed=tuple(unattributed), source=source)


# ----------------------------------------------------------------------------- the lowered program (StableHLO)
_MLIR_DTYPES = {"i1": "pred", "i4": "s4", "ui4": "u4", "i8": "s8", "ui8": "u8", "i16": "s16", "ui16": "u16",
                "i32": "s32", "ui32": "u32", "i64": "s64", "ui64": "u64", "f16": "f16", "bf16": "bf16",
                "f32": "f32", "f64": "f64", "complex<f32>": "c64", "complex<f64>": "c128",
                "f8E4M3FN": "f8e4m3fn", "f8E5M2": "f8e5m2"}
_STABLEHLO_KINDS = {"stablehlo." + k.replace("-", "_"): k for k in KINDS}
_COLLECTIVE_OP = re.compile(r'"(stablehlo\.(?:all_reduce|all_gather|reduce_scatter|all_to_all|collective_permute))"')
_SIGNATURE = re.compile(r"[>)}]\s*:\s*\((.*?)\)\s*->\s*(.+)$")
_TENSOR = re.compile(r"tensor<((?:[^<>]|<[^<>]*>)*)>")
_LOC_SUFFIX = re.compile(r"\s+loc\((?:[^()]|\((?:[^()]|\([^()]*\))*\))*\)\s*$")
_CONSTANT = re.compile(r"^\s*(%[\w#]+) = stablehlo\.constant dense<(-?\d+)> : tensor<[a-z]*\d+>")


def _hlo_type(mlir: str) -> str:
  """``tensor<8x16xbf16>`` body -> HLO spelling ``bf16[8,16]`` (so ``Collective.dtypes`` reads both texts)."""
  parts = re.split(r"x(?![^<]*>)", mlir)
  dtype, dims = parts[-1], parts[:-1]
  if any(not d.isdigit() for d in dims):
    raise ValueError(f"collective on a dynamically shaped tensor<{mlir}>: its bytes are not static")
  if dtype not in _MLIR_DTYPES:
    raise ValueError(f"collective on tensor<{mlir}>: element type {dtype!r} has no byte size in common.comm")
  return f"{_MLIR_DTYPES[dtype]}[{','.join(dims)}]"


def _code(line: str) -> str:
  """``line`` without its trailing ``loc(...)`` and with string literals emptied (for brace counting)."""
  return re.sub(r'"[^"]*"', '""', _LOC_SUFFIX.sub("", line))


def _loc_names(text: str, lines: list[str]) -> dict[int, frozenset[str]]:
  """Line index -> short names of the functions/ops in that line's location (``as_text(debug_info=True)``):
  every ``"name"(...)`` in the ``#loc`` chain, last component after ``.`` (as the HLO ``FunctionNames``)."""
  table = dict(re.findall(r"^(#loc\d*) = (.*)$", text, re.M))
  cache: dict[str, frozenset[str]] = {}

  def resolve(body: str, seen: frozenset = frozenset()) -> frozenset[str]:
    names = {n.split(".")[-1] for n in re.findall(r'"([^"]*)"\(', body)}
    for ref in re.findall(r"#loc\d*", body):
      if ref not in seen and ref in table:
        if ref not in cache:
          cache[ref] = resolve(table[ref], seen | {ref})
        names |= cache[ref]
    return frozenset(names)

  out = {}
  for i, line in enumerate(lines):
    loc = _LOC_SUFFIX.search(line)
    if loc:
      out[i] = resolve(loc.group(0))
  return out


class _StableHLO:
  """Builds a ``_Program`` from StableHLO text: every function and region becomes a computation;
  ``stablehlo.while`` a loop (trip count from the ``compare LT, counter, constant`` pattern jax emits for
  ``fori_loop``/``scan``), ``stablehlo.case``/``if`` a conditional, ``func.call`` a call."""

  def __init__(self, text: str):
    self.lines = [l for l in text.splitlines() if not l.startswith("#loc")]
    self.text = text
    m = re.search(r"mhlo\.num_partitions = (\d+)", text)
    self.num_devices = int(m.group(1)) if m else 1
    self.ops, self.calls, self.spans, self.functions, self.context = {}, {}, {}, {}, {}
    self.block("module", 0, {})
    self.loc_names = _loc_names(text, self.lines)

  def names(self, comp: str) -> frozenset[str]:
    """Functions in the locations of ``comp``'s lines, less those lines that carry the location of the
    conditional ``comp`` is a branch of (its terminator, hoisted constants): that location is the call
    stack around the ``cond``, shared by both branches."""
    loc = lambda i: (m.group(0) if (m := _LOC_SUFFIX.search(self.lines[i])) else None)
    lines = [i for i in self.spans.get(comp, ()) if comp not in self.context or loc(i) != self.context[comp]]
    return frozenset().union(*(self.loc_names.get(i, frozenset()) for i in lines))

  def program(self) -> _Program:
    calls = {c: [(how, [self.functions.get(t, t) for t in targets], k) for how, targets, k in edges]
             for c, edges in self.calls.items()}
    return _Program(self.ops, calls, self.functions.get("main"), self.num_devices, self.names)

  def block(self, comp: str, i: int, consts: dict) -> int:
    """Reads the lines of region ``comp`` from ``i`` up to its closing ``}`` line; returns that line's index."""
    self.ops.setdefault(comp, []), self.calls.setdefault(comp, []), self.spans.setdefault(comp, [])
    consts = dict(consts)
    while i < len(self.lines):
      code = _code(self.lines[i]).strip()
      if code.startswith("}"):
        return i
      self.spans[comp].append(i)
      const = _CONSTANT.match(self.lines[i])
      if const:
        consts[const.group(1)] = int(const.group(2))
      if code.endswith("{"):
        i = self.region_op(comp, i, consts)
      else:
        self.leaf(comp, self.lines[i], self.lines[i])
      i += 1
    return i

  def region_op(self, comp: str, i: int, consts: dict) -> int:
    """An op with regions (its first line is ``lines[i]``); returns the index of its last line."""
    head, regions, j = self.lines[i], [], i
    if _code(head).strip() == "cond {" and i and "stablehlo.while" in self.lines[i - 1]:
      head = self.lines[i - 1]      # "%r = stablehlo.while(...) : types" then "cond {" ... "} do {" ... "}"
    func = re.match(r"\s*func\.func\s+(?:\w+\s+)?@([\w.$\-]+)", head)
    while True:
      name = func.group(1) if func else f"{comp}/{len(self.ops)}"
      regions.append(name)
      j = self.block(name, j + 1, {} if func else consts)
      if not _code(self.lines[j]).strip().endswith("{"):   # "}, {" and "} do {" open the next region
        break
    if func:
      self.functions[func.group(1)] = func.group(1)
    elif "stablehlo.while" in head:
      self.calls[comp].append(("loop", [regions[1]], self.trip_count(head, regions, consts)))
    elif re.search(r'"?stablehlo\.(case|if)"?', head):
      self.calls[comp].append(("cond", regions, 1))
      loc = _LOC_SUFFIX.search(self.lines[j])
      self.context.update({r: loc.group(0) for r in regions} if loc else {})
    else:
      self.leaf(comp, head, self.lines[j])      # a collective with a reducer region, or an inlined region
      self.calls[comp] += [("call", [r], 1) for r in regions if not _COLLECTIVE_OP.search(head)]
    self.spans[comp].append(j)
    return j

  def leaf(self, comp: str, head: str, last: str) -> None:
    op = _COLLECTIVE_OP.search(head)
    call = re.search(r"(?:func\.)?call @([\w.$\-]+)\(", head)
    if call:
      self.calls[comp].append(("call", [call.group(1)], 1))
    if not op:
      return
    kind = _STABLEHLO_KINDS[op.group(1)]
    sig = _SIGNATURE.search(_LOC_SUFFIX.sub("", last))
    if sig is None:
      raise ValueError(f"cannot read the operand/result types of {op.group(1)}: {last.strip()[:200]}")
    shape = ", ".join(_hlo_type(t) for t in _TENSOR.findall(sig.group(2)))
    shape = f"({shape})" if shape.count("[") > 1 else shape
    groups = re.search(r"replica_groups = dense<.*?> : tensor<(\d+)x(\d+)xi64>", head)
    n = int(groups.group(2)) if groups and int(groups.group(2)) else self.num_devices
    per = [_per_device(kind, size, n) for size in _array_sizes(shape)]
    self.ops[comp].append((kind, shape, n, sum(p for p, _ in per), sum(w for _, w in per)))

  def trip_count(self, head: str, regions: list[str], consts: dict) -> int | None:
    """``(limit - start) / step`` for a counter compared ``LT`` with a constant in the condition and
    incremented by a constant in the body; None when the loop does not have that form."""
    inits = dict(re.findall(r"(%iterArg\w*) = (%[\w#]+)", head))
    cond, body = ("\n".join(self.lines[k] for k in self.spans[r]) for r in regions[:2])
    scope = dict(consts)
    scope.update({c.group(1): int(c.group(2)) for c in map(_CONSTANT.match, cond.splitlines()) if c})
    for counter, limit in re.findall(r"stablehlo\.compare\s+LT, (%iterArg\w*), (%[\w#]+)", cond):
      start, stop = consts.get(inits.get(counter)), scope.get(limit)
      body_consts = {c.group(1): int(c.group(2)) for c in map(_CONSTANT.match, body.splitlines()) if c}
      steps = [body_consts.get(k, consts.get(k)) for k in
               re.findall(rf"stablehlo\.add {re.escape(counter)}, (%[\w#]+)", body)]
      if start is not None and stop is not None and len(steps) == 1 and steps[0]:
        return max(0, -(-(stop - start) // steps[0]))
    return None


def lowered_collective_bytes(lowered: Any, taken: dict[str, bool] | None = None) -> CommReport:
  """Counts the collectives of the lowered program (StableHLO) in the dtypes the program sends.

  XLA:CPU rewrites a bf16 collective (any of the five kinds) into convert -> f32 collective -> convert,
  so the compiled text (``collective_bytes``) shows twice the bytes of a bf16 payload; the lowered text
  keeps the program's dtype.
  What the lowered text lacks: collectives the partitioner inserts under ``jit`` shardings and XLA's
  combining of collectives (it shows the program's own ``psum``/``all_gather``/... as written, including
  the all-reduce of a gradient w.r.t. replicated ``shard_map`` inputs, which jax's transpose emits).

  Args:
    lowered: a `jax.stages.Lowered` (``jax.jit(f).lower(...)``; read with ``debug_info=True`` so that
      ``taken`` can name functions) or StableHLO text.
    taken: as for ``collective_bytes``; names are matched against the functions in each op's location.
  """
  if isinstance(lowered, str):
    text = lowered
  elif hasattr(lowered, "as_text") and hasattr(lowered, "compile"):
    text = lowered.as_text(debug_info=taken is not None)
  else:
    raise TypeError(f"expected a jax.stages.Lowered or StableHLO text, got {type(lowered).__name__}")
  return _count(_StableHLO(text).program(), taken, LOWERED)


def collective_bytes(compiled: Any, taken: dict[str, bool] | None = None) -> CommReport:
  """Counts the collective bytes of a compiled program (see module docstring).

  Args:
    compiled: a `jax.stages.Compiled` (``jax.jit(f).lower(...).compile()``) or its
      ``as_text()``.
    taken: optional ``{function name: runs this step}``; conditionals whose branches it
      identifies count the branch the step takes instead of the dearest.
  """
  return _count(_parse_hlo(_hlo_text(compiled), taken is not None), taken, COMPILED)


def step_bytes(fn, *args, **kwargs) -> CommReport:
  """Lowers and compiles ``fn`` (a jitted function) on ``args`` and counts its collectives."""
  return collective_bytes(fn.lower(*args, **kwargs).compile())


def lowered_step_bytes(fn, *args, **kwargs) -> CommReport:
  """Lowers ``fn`` (a jitted function) on ``args`` and counts its collectives in the lowered dtypes."""
  return lowered_collective_bytes(fn.lower(*args, **kwargs))


def dense_allreduce_present(report: CommReport, num_elements: int, dtype: str = "f32") -> bool:
  """True if the program all-reduces a tensor of at least ``num_elements`` of ``dtype``.

  Used by tests to prove that a compressing algorithm does not also ship the dense
  gradient (the hidden all-reduce from differentiating replicated parameters).
  """
  return any(c.kind == "all-reduce" and dtype in c.dtypes and c.elements >= num_elements
             for c in report.collectives)
