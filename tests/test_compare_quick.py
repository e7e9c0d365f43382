"""``python -m benchmarks.compare --quick`` end to end on a subset of methods (CI-sized, default tier).

Checks what the comparison computes against independent arithmetic: cumulative bytes are the
compiled step's payload times the step (no refresh branches in these methods), the modeled time
is steps x step time + wire / bandwidth, the dense baseline's payload is 4 B per parameter + the
loss scalar (the parameters counted from the built model; the MLP's also in closed form),
PowerSGD sends less than dense, a method the workload's adapter refuses (kfac on the cnn) is a
"refused: <reason>" row, and the tables and plots are written under their workload's names
(the MLP's keep their names ``compare.md`` / ``compare_*.png``); the saved curves
(``compare*.json``) give back the runs, merge like the table rows, and ``--plots-only`` redraws
from them; fosi's curvature is refreshed inside the real models' step budget.
"""
import dataclasses
import os

import jax
import numpy as np

from benchmarks import compare
from common import train
from common.algos import dho

METHODS = "dense_adam,powersgd"
PANELS = ("steps", "bytes", "time_1gbit", "time_10gbit", "time_100gbit")


def _check_runs(runs, n_params):
  assert runs["dense_adam"].payload_per_step == 4 * n_params + 4
  steps = np.arange(1, compare.QUICK_STEPS + 1)
  for r in runs.values():
    assert len(r.losses) == compare.QUICK_STEPS and np.all(np.isfinite(r.losses))
    np.testing.assert_allclose(r.cum_bytes, steps * r.payload_per_step)
    np.testing.assert_allclose(r.modeled_s(10), steps * r.step_s + r.cum_wire * 8 / 10e9)
    assert r.peak_bytes > 4 * n_params                               # at least the params are resident


def _n_params(workload):
  exp = train.build(compare.WORKLOADS[workload].make("dense_adam", 1e-3, 1, True))
  return sum(int(np.size(x)) for x in jax.tree.leaves(exp.params))


def _spy_plots(monkeypatch):
  """Replaces ``compare.plots`` (drawing costs ~0.5 s a panel) by a recorder of what it is given."""
  drawn = {}
  monkeypatch.setattr(compare, "plots", lambda runs, out, workload, lacking=(): drawn.update(
      runs=runs, lacking=list(lacking)) or [])
  return drawn


def test_quick_comparison_writes_tables_and_plots(tmp_path, monkeypatch):
  out = ["--quick", "--out", str(tmp_path)]
  mlp = {r.method: r for r in compare.main(out + ["--methods", METHODS])["mlp"]}
  assert set(mlp) == set(METHODS.split(","))
  assert _n_params("mlp") == (64 + 1) * 16 + (16 + 1) * 10          # quick MLP 64-16-10
  _check_runs(mlp, _n_params("mlp"))
  assert mlp["powersgd"].payload_per_step < mlp["dense_adam"].payload_per_step
  # one real model (the cheapest of the two to compile), one method, and the adapter's refusal
  cnn = {r.method: r for r in compare.main(out + ["--workload", "cnn", "--methods", "dense_adam,kfac"])["cnn"]}
  assert isinstance(cnn["kfac"], compare.Refused) and "config.model" in cnn["kfac"].reason
  _check_runs({"dense_adam": cnn["dense_adam"]}, _n_params("cnn"))
  assert cnn["dense_adam"].target == compare.WORKLOADS["cnn"].target
  for md, prefix, runs in (("compare.md", "compare_", mlp), ("compare_cnn.md", "compare_cnn_", cnn)):
    text = open(tmp_path / md).read()
    assert all(f"| {m} |" in text for m in runs)
    for tag in PANELS:
      assert os.path.getsize(tmp_path / f"{prefix}{tag}.png") > 1000
  assert "| kfac | refused: config.model: kfac runs" in open(tmp_path / "compare_cnn.md").read()
  # the saved curves are the runs, and --plots-only redraws every panel from them alone
  for w, runs in (("mlp", mlp), ("cnn", cnn)):
    saved = compare.load_curves(compare.curves_path(str(tmp_path), compare.WORKLOADS[w]))
    assert saved.keys() == runs.keys() and isinstance(saved.get("kfac", compare.Refused("", "")), compare.Refused)
    for m, r in runs.items():
      if isinstance(r, compare.Run):
        for field in ("losses", "cum_bytes", "cum_wire"):
          np.testing.assert_array_equal(getattr(saved[m], field), getattr(r, field))
        assert (saved[m].step_s, saved[m].lr, saved[m].target) == (r.step_s, r.lr, r.target)
  drawn = _spy_plots(monkeypatch)                    # --plots-only: the saved curves, nothing run
  compare.main(["--plots-only", "--workload", "cnn", "--out", str(tmp_path)])
  assert [r.method for r in drawn["runs"]] == ["dense_adam"] and drawn["lacking"] == []
  np.testing.assert_array_equal(drawn["runs"][0].losses, cnn["dense_adam"].losses)


def test_smoothed_loss_and_target_step():
  losses = np.array([3.0] * 10 + [0.1] * 20)
  run = compare.Run("x", 0.1, losses, np.arange(1, 31) * 8.0, np.arange(1, 31) * 14.0, 0.01, 1, 1, 0, 8.0)
  smoothed = run.smoothed()
  np.testing.assert_allclose(smoothed[:10], 3.0)                     # mean of the steps so far
  np.testing.assert_allclose(smoothed[12], (7 * 3.0 + 3 * 0.1) / 10)
  first = run.first_at_target()
  assert smoothed[first] <= compare.TARGET < smoothed[first - 1]


def test_table_names_the_branched_methods_and_the_refused_ones():
  def fake(method, branched):
    return compare.Run(method, 0.1, np.ones(3), np.arange(1, 4.0), np.arange(1, 4.0), 0.01, 1, 1, 0, 1.0,
                       branched=branched)
  runs = [fake("dense_adam", False), fake("fosi", True), compare.Refused("kfac", "config.model: no"),
          fake("kfac_mlp", True)]
  text = compare.table(runs, {r.method: (0.1,) for r in runs}, "cmd", compare.WORKLOADS["cnn"])
  assert "from the compiled step (per branch for fosi/kfac_mlp)." in text
  rows = [line for line in text.splitlines() if line.startswith("| ")]
  assert rows[3] == "| kfac | refused: config.model: no |" + " - |" * (len(compare.COLUMNS) - 2)
  assert {line.count("|") for line in rows} == {len(compare.COLUMNS) + 1}
  assert "Target: smoothed training loss <= 0.5" in text


def _row(method, loss):
  return f"| {method} | 0.1 | 0.1 | {loss} | 1 | 8 | 1 / 1 | 1 | - | - | - / - / - |"


def test_merge_replaces_and_appends_rows_and_keeps_the_rest():
  head = ["### title", "", "text", "", "| method | lr grid |", "|---|---|"]
  old = "\n".join(head + [_row("dense_adam", "0.1"), _row("powersgd", "0.2")]) + "\n"
  new = "\n".join(head + [_row("powersgd", "0.3"), _row("kfac", "0.4")])
  merged = compare.merge(old, new, "python -m benchmarks.compare --methods powersgd,kfac --merge").splitlines()
  assert merged[:len(head)] == head
  assert merged[len(head):len(head) + 3] == [_row("dense_adam", "0.1"), _row("powersgd", "0.3"), _row("kfac", "0.4")]
  assert merged[-1].startswith("Rows powersgd, kfac: `python -m benchmarks.compare --methods powersgd,kfac --merge`")


def test_curves_merge_like_rows_and_rows_without_curves_are_named(tmp_path, monkeypatch):
  def fake(method, loss):
    return compare.Run(method, 0.1, np.full(3, loss), np.arange(1, 4.0), np.arange(1, 4.0), 0.01, 1, 1, 0, 1.0)
  path = str(tmp_path / "c.json")
  compare.save_curves(path, [fake("dense_adam", 1.0), fake("fosi", 2.0)], merge_rows=False)
  compare.save_curves(path, [fake("fosi", 3.0), compare.Refused("kfac", "no")], merge_rows=True)
  saved = compare.load_curves(path)
  assert list(saved) == ["dense_adam", "fosi", "kfac"] and isinstance(saved["kfac"], compare.Refused)
  assert saved["dense_adam"].losses[0] == 1.0 and saved["fosi"].losses[0] == 3.0
  compare.save_curves(path, [fake("sfb_adam", 4.0)], merge_rows=False)     # a full run starts afresh
  assert list(compare.load_curves(path)) == ["sfb_adam"]
  head = ["### t", "", "| method | lr grid |", "|---|---|"]
  text = "\n".join(head + [_row("dense_adam", "0.1"), "| kfac | refused: no |" + " - |" * 9,
                           "| x | failed: E |" + " - |" * 9, _row("fosi", "0.2")])
  assert compare.table_methods(text) == ["dense_adam", "fosi"]
  # a measured row without saved curves is named for the plots, the others are drawn in row order
  workload = dataclasses.replace(compare.WORKLOADS["cnn"], md="t.md")
  (tmp_path / "t.md").write_text(text)
  compare.save_curves(compare.curves_path(str(tmp_path), workload), [fake("dense_adam", 1.0), fake("y", 2.0)], False)
  drawn = _spy_plots(monkeypatch)
  compare.redraw(workload, str(tmp_path))
  assert [r.method for r in drawn["runs"]] == ["dense_adam", "y"] and drawn["lacking"] == ["fosi"]


def test_fosi_refreshes_curvature_inside_the_real_models_budget():
  """The config files' fosi (W unset = T = 50) would first refresh at call 49, past the 40-step
  budget, and run as its base Adam; the comparison sets W so it refreshes early."""
  for w in ("cnn", "transformer"):
    workload = compare.WORKLOADS[w]
    for method in ("fosi", "dho2"):
      flags = dho.schedule(workload.make(method, workload.grids[method][0], workload.steps, False))
      refreshes = [s for s in range(1, workload.steps + 1) if flags(s)["refresh"]]
      assert refreshes and refreshes[0] <= workload.steps // 2, (w, method, refreshes)
      assert flags(workload.steps)["hybrid"]
