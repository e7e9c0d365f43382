"""JSON-lines metrics, a chronometer for steps/s and ETA, and human-readable byte sizes."""
from __future__ import annotations

import json
import math
import os
import time


class MetricWriter:
  """Appends one JSON object per line to ``<workdir>/metrics.jsonl`` (process 0 only)."""

  def __init__(self, workdir: str | None, enabled: bool = True):
    self.path = os.path.join(workdir, "metrics.jsonl") if workdir and enabled else None

  def write(self, step: int, **values) -> None:
    if self.path is None:
      return
    record = {"step": int(step)}
    for k, v in values.items():
      v = float(v) if hasattr(v, "__float__") and not isinstance(v, (int, str)) else v
      record[k] = None if isinstance(v, float) and not math.isfinite(v) else v
    with open(self.path, "a") as f:
      f.write(json.dumps(record) + "\n")


def read_metrics(workdir: str) -> list[dict]:
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f if line.strip()]


class Chronometer:
  """Steps/s and ETA that exclude compile time: timing starts at the first completed step."""

  def __init__(self, total_steps: int, first_step: int = 0):
    self.total = total_steps
    self.start_step = None
    self.start_time = None
    self.first_step = first_step

  def tick(self, step: int) -> None:
    """Call after step ``step`` (1-based count of finished steps) has completed."""
    if self.start_step is None:
      self.start_step, self.start_time = step, time.perf_counter()

  def rate(self, step: int) -> float:
    if self.start_step is None or step <= self.start_step:
      return float("nan")
    return (step - self.start_step) / (time.perf_counter() - self.start_time)

  def eta_s(self, step: int) -> float:
    r = self.rate(step)
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
