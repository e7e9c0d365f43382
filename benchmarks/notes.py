"""Splices every ``benchmarks/results/*.md`` into BUILD_NOTES.md between the benchmark markers.

    python -m benchmarks.notes          # after running any benchmark

Each benchmark writes its own ``benchmarks/results/<name>.md`` (numbers plus the command that
produced them); this keeps BUILD_NOTES.md's "Measured" section equal to those files.
"""
from __future__ import annotations

import glob
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "benchmarks", "results")
START, END = "<!-- benchmarks:start -->", "<!-- benchmarks:end -->"
ORDER = ("baseline", "sfb", "sign1bit", "vr_prox", "dho", "dho_memory", "gpu")


def write_result(name: str, markdown: str) -> str:
  os.makedirs(RESULTS, exist_ok=True)
  path = os.path.join(RESULTS, f"{name}.md")
  with open(path, "w") as f:
    f.write(markdown.rstrip() + "\n")
  return path


def collect(notes_path: str = os.path.join(ROOT, "BUILD_NOTES.md")) -> None:
  files = sorted(glob.glob(os.path.join(RESULTS, "*.md")),
                 key=lambda p: (ORDER.index(n) if (n := os.path.basename(p)[:-3]) in ORDER else 99, p))
  body = "\n\n".join(open(p).read().strip() for p in files)
  with open(notes_path) as f:
    text = f.read()
  if START not in text or END not in text:
    raise SystemExit(f"{notes_path} lacks the markers {START} ... {END}")
  head, rest = text.split(START, 1)
  tail = rest.split(END, 1)[1]
  with open(notes_path, "w") as f:
    f.write(f"{head}{START}\n{body}\n{END}{tail}")
  print(f"BUILD_NOTES.md: {len(files)} result section(s) spliced in")


if __name__ == "__main__":
  collect()
