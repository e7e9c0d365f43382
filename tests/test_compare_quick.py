"""``python -m benchmarks.compare --quick`` end to end on a subset of methods (CI-sized).

Checks what the comparison computes against independent arithmetic: cumulative bytes are the
compiled step's payload times the step (no refresh branches in these methods), the modeled time
is steps x step time + wire / bandwidth, the dense baseline's payload is 4 B per parameter + the
loss scalar, PowerSGD sends less than dense, and the table and plots are written.
"""
import os

import numpy as np
import pytest

from benchmarks import compare

METHODS = "dense_adam,powersgd"


@pytest.mark.slow  # ~3 min on 2 cores: every method compiles its own program
def test_quick_comparison_writes_table_and_plots(tmp_path):
  runs = {r.method: r for r in compare.main(["--quick", "--methods", METHODS, "--out", str(tmp_path)])}
  assert set(runs) == set(METHODS.split(","))
  n_params = (64 + 1) * 16 + (16 + 1) * 10                          # quick MLP 64-16-10
  dense, low_rank = runs["dense_adam"], runs["powersgd"]
  assert dense.payload_per_step == 4 * n_params + 4
  assert low_rank.payload_per_step < dense.payload_per_step
  steps = np.arange(1, compare.QUICK_STEPS + 1)
  for r in runs.values():
    assert len(r.losses) == compare.QUICK_STEPS and np.all(np.isfinite(r.losses))
    np.testing.assert_allclose(r.cum_bytes, steps * r.payload_per_step)
    np.testing.assert_allclose(r.modeled_s(10), steps * r.step_s + r.cum_wire * 8 / 10e9)
    assert r.peak_bytes > 4 * n_params                               # at least the params are resident
  text = open(tmp_path / "compare.md").read()
  assert all(f"| {m} |" in text for m in runs)
  for tag in ("steps", "bytes", "time_1gbit", "time_10gbit", "time_100gbit"):
    assert os.path.getsize(tmp_path / f"compare_{tag}.png") > 1000


def test_smoothed_loss_and_target_step():
  losses = np.array([3.0] * 10 + [0.1] * 20)
  run = compare.Run("x", 0.1, losses, np.arange(1, 31) * 8.0, np.arange(1, 31) * 14.0, 0.01, 1, 1, 0, 8.0)
  smoothed = run.smoothed()
  np.testing.assert_allclose(smoothed[:10], 3.0)                     # mean of the steps so far
  np.testing.assert_allclose(smoothed[12], (7 * 3.0 + 3 * 0.1) / 10)
  first = run.first_at_target()
  assert smoothed[first] <= compare.TARGET < smoothed[first - 1]


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
