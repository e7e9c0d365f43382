"""``python -m common.plots``: a loss-vs-wall-time panel for runs whose metrics.jsonl has wall_time
(the Ray runtimes of issue 16), none for SPMD runs (which log no wall_time)."""
import json
import os
import subprocess
import sys

import matplotlib.image
import pytest

from common import plots

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(path, rows):
  path.mkdir()
  (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  return str(path)


def _ray_rows():   # as common/async_ray/runtime.py writes them (GC: one line per step)
  return [{"step": t, "loss": 2.3 / t, "wall_time": 0.12 * t, "cum_bytes": 258 * t, "active": 3} for t in range(1, 6)]


def _spmd_rows():
  return [{"step": t, "loss": 2.0 / t, "bytes": 100, "cum_bytes": 100 * t} for t in range(1, 6)]


@pytest.mark.parametrize("kind,want", [("ray", ["step", "cum_bytes", "wall_time"]), ("spmd", ["step", "cum_bytes"])])
def test_cli_writes_the_png_with_a_wall_time_panel_only_when_logged(tmp_path, kind, want):
  run = _run(tmp_path / kind, _ray_rows() if kind == "ray" else _spmd_rows())
  out = tmp_path / "p.png"
  proc = subprocess.run([sys.executable, "-m", "common.plots", run, "--out", str(out)], cwd=ROOT,
                        capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert out.exists() and proc.stdout.strip() == str(out)
  assert plots.panels([_ray_rows() if kind == "ray" else _spmd_rows()]) == want
  width = matplotlib.image.imread(str(out)).shape[1]
  assert width == round(5.5 * len(want) * 110)   # one 5.5-inch panel per x axis at 110 dpi


def test_mixed_runs_get_the_wall_time_panel(tmp_path):
  a, b = _run(tmp_path / "a", _ray_rows()), _run(tmp_path / "b", _spmd_rows())
  out = plots.plot_runs([a, b], str(tmp_path / "m.png"), labels=["ray", "spmd"])
  assert os.path.getsize(out) > 0
  assert matplotlib.image.imread(out).shape[1] == round(5.5 * 3 * 110)
