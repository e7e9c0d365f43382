"""Resume: one metrics line per step after kills, config comparison before the workdir is touched,
a final checkpoint even with ``checkpoint_every = 0``, "nothing ran" for a finished run."""
import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from common import train
from common.errors import FlagError
from common.metrics import read_metrics
from configs.common import base_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(**overrides):
  config = base_config("dense")
  config.update(dict(model="softmax", optimizer="adam", lr=1e-2, batch_size=64, num_steps=30,
                     log_every=1000, eval_every=0, checkpoint_every=10))
  config.update(overrides)
  return config


def _steps(workdir):
  return [row["step"] for row in read_metrics(str(workdir))]


def test_metrics_hold_one_line_per_step_after_preemptions(tmp_path):
  config = _config()
  workdir = str(tmp_path / "run")
  train.run(config, workdir, quiet=True, stop_after=25)     # checkpoint at 20, lines up to 25
  assert _steps(workdir) == list(range(1, 26))
  train.run(config, workdir, quiet=True, stop_after=27)     # resumes at 20: lines 21..25 rewritten
  assert _steps(workdir) == list(range(1, 28))
  result = train.run(config, workdir, quiet=True)
  assert _steps(workdir) == list(range(1, 31))
  rows = read_metrics(workdir)
  assert rows[-1]["cum_bytes"] == result.comm.payload * 30   # cumulative bytes continue across resumes


def test_killed_launch_resumes_with_one_line_per_step(tmp_path):
  """A real SIGKILL mid-run (after the checkpoint at step 100), then a rerun to the end."""
  workdir = tmp_path / "run"
  args = [sys.executable, "launch.py", "--config", "configs/baseline_digits.py", "--config.num_steps=300",
          "--config.checkpoint_every=100", "--config.eval_every=0", "--workdir", str(workdir)]
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                          start_new_session=True)
  try:
    deadline = time.monotonic() + 240
    while not (workdir / "metrics.jsonl").exists() or len(_steps(workdir)) <= 110:
      assert proc.poll() is None and time.monotonic() < deadline
      time.sleep(0.05)
  finally:
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
  killed_at = len(_steps(workdir))
  assert killed_at > 100 and (workdir / "checkpoints" / "100").exists()
  done = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr[-3000:]
  assert f"dropped {killed_at - 100} line(s) after step 100" in done.stderr or killed_at >= 200
  assert _steps(workdir) == list(range(1, 301))


def test_changed_shape_is_refused_before_config_json_is_touched(tmp_path):
  workdir = str(tmp_path / "run")
  train.run(_config(num_steps=10), workdir, quiet=True)
  stored = open(os.path.join(workdir, "config.json")).read()
  with pytest.raises(FlagError, match=r"--workdir: .*lr: 0.01 -> 0.1; model: 'softmax' -> 'mlp'") as err:
    train.run(_config(num_steps=20, model="mlp", lr=0.1), workdir, quiet=True)
  assert "num_steps: 10 -> 20" not in str(err.value)   # schedule fields may change
  assert open(os.path.join(workdir, "config.json")).read() == stored
  assert _steps(workdir) == list(range(1, 11))


def test_checkpoint_every_zero_still_resumes_and_reports_nothing_ran(tmp_path):
  config = _config(checkpoint_every=0, num_steps=20)
  workdir = str(tmp_path / "run")
  first = train.run(config, workdir, quiet=True)
  again = train.run(config, workdir, quiet=True)
  assert again.status == "nothing_ran" and again.history == [] and again.step == 20
  for a, b in zip(jax.tree.leaves(first.params), jax.tree.leaves(again.params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  smaller = train.run(_config(checkpoint_every=0, num_steps=5), workdir, quiet=True)
  assert smaller.status == "nothing_ran" and _steps(workdir) == list(range(1, 21))
  longer = train.run(_config(checkpoint_every=0, num_steps=30), workdir, quiet=True)
  assert longer.history[0]["step"] == 21 and _steps(workdir) == list(range(1, 31))
  straight = train.run(_config(checkpoint_every=0, num_steps=30), str(tmp_path / "straight"), quiet=True)
  for a, b in zip(jax.tree.leaves(straight.params), jax.tree.leaves(longer.params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_steps_per_s_excludes_evaluation_and_checkpoints(tmp_path):
  config = _config(num_steps=20, eval_every=1, checkpoint_every=1)
  start = time.perf_counter()
  result = train.run(config, str(tmp_path / "run"), quiet=True)
  wall = time.perf_counter() - start
  final = result.final
  assert final["eval_s"] > 0 and final["checkpoint_s"] > 0
  assert final["step_time_s"] + final["eval_s"] + final["checkpoint_s"] < wall
  # the rate counts step time only: well above the wall-clock rate of this eval/checkpoint-heavy run
  assert final["steps_per_s"] >= (final["steps_run"] - 1) / final["step_time_s"]
  assert final["steps_per_s"] > 2 * final["steps_run"] / wall
  summary = json.load(open(tmp_path / "run" / "summary.json"))
  assert summary["steps_per_s"] == final["steps_per_s"]


def test_a_workdir_stored_before_the_runtime_field_still_resumes(tmp_path):
  from common import fields
  config = _config()
  stored = config.to_dict()
  del stored["runtime"]                       # what config.json held before config.runtime existed
  (tmp_path / "config.json").write_text(json.dumps(stored, default=str))
  assert fields.check_resume(config, str(tmp_path)) == {}
  config.runtime = "ray"                      # a real change is still refused
  with pytest.raises(FlagError, match="runtime"):
    fields.check_resume(config, str(tmp_path))


def test_checkpoints_of_another_state_layout_are_refused(tmp_path, monkeypatch):
  """A Method's ``state_format`` (dho2's coordinate buckets) is stored in the workdir; a resume whose
  code lays the state out differently, or a workdir written before the record existed, is refused
  before config.json or metrics.jsonl are touched (equal shapes would restore silently permuted)."""
  import dataclasses
  workdir = str(tmp_path / "run")
  train.run(_config(num_steps=10), workdir, quiet=True)
  assert json.load(open(os.path.join(workdir, train.STATE_FORMAT_FILE))) == {"state_format": ""}
  build = train.build

  def build_with(fmt):
    def b(config, dataset=None, mesh=None):
      exp = build(config, dataset, mesh)
      return dataclasses.replace(exp, method=dataclasses.replace(exp.method, state_format=fmt))
    return b
  stored = open(os.path.join(workdir, "config.json")).read()
  monkeypatch.setattr(train, "build", build_with("dho2 coordinates: buckets (650,) over 8 shards"))
  with pytest.raises(FlagError, match=r"--workdir: .*laid out as 'plain'.*buckets \(650,\)"):
    train.run(_config(num_steps=20), workdir, quiet=True)
  os.remove(os.path.join(workdir, train.STATE_FORMAT_FILE))          # a workdir from before the record
  with pytest.raises(FlagError, match="before this code recorded it"):
    train.run(_config(num_steps=20), workdir, quiet=True)
  assert open(os.path.join(workdir, "config.json")).read() == stored and _steps(workdir) == list(range(1, 11))
  monkeypatch.setattr(train, "build", build)                         # plain state: an old workdir resumes
  train.run(_config(num_steps=12), workdir, quiet=True)
  assert _steps(workdir) == list(range(1, 13))


def test_dho2_records_its_coordinate_buckets():
  from common import cli
  import dho
  config = cli.load_config(os.path.join(ROOT, "configs", "dho2_mlp.py"))
  exp = train.build(config)
  want = dho.Layout.of_params(exp.params, config.num_devices).sizes
  assert exp.method.state_format == f"dho2 coordinates: buckets {want} over {config.num_devices} shards"
  assert len(want) > 1                     # the harness MLP is bucketed: the old contiguous layout differs
