"""JSON-lines metrics (one line per step, cut back on resume), a steady-rate chronometer, readable sizes."""
from __future__ import annotations

import json
import math
import os


class MetricWriter:
  """Appends one JSON object per line to ``<workdir>/metrics.jsonl`` (process 0 only)."""

  def __init__(self, workdir: str | None, enabled: bool = True):
    self.path = os.path.join(workdir, "metrics.jsonl") if workdir and enabled else None

  def truncate(self, step: int) -> int:
    """Keeps only the lines of steps <= ``step`` (the restored checkpoint); returns how many were dropped.

    Rewritten through a temporary file and an atomic rename, so a kill during the rewrite leaves
    either the old or the new file.
    """
    if self.path is None or not os.path.exists(self.path):
      return 0
    with open(self.path) as f:
      lines = [line for line in f if line.strip()]
    kept = [line for line in lines if _step_of(line) is not None and _step_of(line) <= step]
    if len(kept) != len(lines):
      tmp = self.path + ".tmp"
      with open(tmp, "w") as f:
        f.writelines(kept)
      os.replace(tmp, self.path)
    return len(lines) - len(kept)

  def write(self, step: int, **values) -> None:
    if self.path is None:
      return
    record = {"step": int(step)}
    for k, v in values.items():
      v = float(v) if hasattr(v, "__float__") and not isinstance(v, (int, str)) else v
      record[k] = None if isinstance(v, float) and not math.isfinite(v) else v
    with open(self.path, "a") as f:
      f.write(json.dumps(record) + "\n")


def _step_of(line: str) -> int | None:
  try:
    return int(json.loads(line)["step"])
  except (ValueError, KeyError, TypeError):
    return None   # a line cut by a kill mid-write


def read_metrics(workdir: str) -> list[dict]:
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f if line.strip()]


class Chronometer:
  """Steady steps/s and ETA from the steps' own durations.

  Only the time inside ``compiled(...)`` and the metric fetch counts (``add``): compile,
  evaluation and checkpoint time are reported separately. The first step of a run is left
  out once there are others (it pays one-off allocation).
  """

  def __init__(self, total_steps: int):
    self.total = total_steps
    self.durations: list[float] = []

  def add(self, seconds: float) -> None:
    self.durations.append(seconds)

  @property
  def total_s(self) -> float:
    return float(sum(self.durations))

  def rate(self) -> float:
    steady = self.durations[1:] or self.durations
    return len(steady) / sum(steady) if steady and sum(steady) > 0 else float("nan")

  def eta_s(self, step: int) -> float:
    r = self.rate()
    return (self.total - step) / r if r == r and r > 0 else float("nan")


def human_bytes(n: float) -> str:
  if n is None or n != n:
    return "n/a"
  for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
    if abs(n) < 1024 or unit == "TiB":
      return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
    n /= 1024


def human_time(s: float) -> str:
  if s != s:
    return "?"
  s = int(round(s))
  return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"
