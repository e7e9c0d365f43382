"""``python -m benchmarks.fosi_protocol --quick`` on a tiny budget: the table's structure, and FOSI-GD's
steps to the target on [F]'s quadratic against the closed form that follows from the spectrum.

Closed form (numpy ``eigh`` of the same Hessian, float64): with x0 = sum_i a_i e_i, GD at rate eta gives
f_t = 1/2 sum_i lambda_i a_i^2 (1 - eta lambda_i)^(2t). FOSI-GD (``fosi_sgd``, alpha = 1, c_max = inf, W = 1,
exact top-k pairs) refreshes at call 0 and uses the pairs in that call: the Newton part zeroes the top-k
coordinates in one step and the complement moves with rate c eta, c = lambda_1 / lambda_k ([F] Eq. (2)-(4)), so
f_t = 1/2 sum_{i > k} lambda_i a_i^2 (1 - c eta lambda_i)^(2t) for t >= 1.
"""
import json
import os

import numpy as np
import pytest

from benchmarks import fosi_protocol as fp

STEPS = 120
HEADER = ("| task | base | protocol | target loss | base lr | base steps | base wall s | FOSI lr | FOSI steps | "
          "FOSI wall s | steps base/FOSI | wall base/FOSI | final loss base | final loss FOSI |")


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
  out = tmp_path_factory.mktemp("fosi_protocol")
  fp.main(["--quick", "--tasks", "quadratic", "--bases", "gd", "--steps", str(STEPS), "--curves",
           "--out", str(out)])
  with open(out / "fosi_protocol.md") as f:
    md = f.read()
  with open(out / "fosi_protocol.json") as f:
    js = json.load(f)
  return md, js, out


def _table_rows(md):
  lines = md.splitlines()
  i = lines.index(HEADER)
  rows = []
  for line in lines[i + 2:]:
    if not line.startswith("|"):
      break
    rows.append([c.strip() for c in line.strip("|").split("|")])
  return rows


def _closed_form_curve(vals, a, eta, steps, k=None):
  """Losses f_0..f_steps of GD, or of FOSI-GD with exact top-k pairs when k is given (module docstring)."""
  t = np.arange(steps + 1)[:, None]
  if k is None:
    return 0.5 * np.sum(vals * a ** 2 * (1 - eta * vals) ** (2 * t), axis=1)
  c, rest = vals[-1] / vals[-k], slice(0, len(vals) - k)
  f = 0.5 * np.sum(vals[rest] * a[rest] ** 2 * (1 - c * eta * vals[rest]) ** (2 * t), axis=1)
  f[0] = 0.5 * np.sum(vals * a ** 2)
  return f


def _closed_form_steps(vals, a, eta, target, steps, k=None):
  """First t in 0..steps with the closed-form loss <= target (GD; FOSI-GD when k is given), else None."""
  hit = np.nonzero(_closed_form_curve(vals, a, eta, steps, k) <= target)[0]
  return int(hit[0]) if len(hit) else None


def test_table_structure(quick_run):
  md, js, out = quick_run
  assert md.startswith("### FOSI under the paper's protocol")
  assert "Command: `python -m benchmarks.fosi_protocol --quick --tasks quadratic" in md
  rows = _table_rows(md)
  assert [tuple(r[:3]) for r in rows] == [("quadratic", "GD", "(a) same lr"), ("quadratic", "GD", "(b) each tuned")]
  assert all(len(r) == len(HEADER.strip("|").split("|")) for r in rows)
  a = rows[0]
  assert a[4] == a[7], "protocol (a) runs FOSI at the base's rate"
  assert a[10] == f"{int(a[5]) / int(a[8]):.2f}x"
  assert "Grid for quadratic" in md and (out / "fosi_protocol.png").stat().st_size > 0
  assert js["steps"] == {"quadratic": STEPS} and len(js["rows"]) == 2


def test_fosi_gd_matches_the_spectrum(quick_run):
  """FOSI-GD at the base's rate takes the closed-form number of steps, fewer than GD's."""
  _, js, _ = quick_run
  row = js["rows"][0]
  _, vals, vecs = fp.quadratic_hessian()
  a = vecs.T @ fp.quadratic_x0(vecs)
  eta, target = row["base_lr"], row["target"]
  f_gd_end = 0.5 * np.sum(vals * a ** 2 * (1 - eta * vals) ** (2 * STEPS))
  assert row["target"] == pytest.approx(f_gd_end, rel=1e-3)      # the base run follows its closed form too
  want_fosi = _closed_form_steps(vals, a, eta, target, STEPS, k=fp.K)
  want_gd = _closed_form_steps(vals, a, eta, target * (1 + 1e-3), STEPS)
  assert want_fosi is not None and want_fosi < want_gd
  assert row["fosi_lr"] == eta and abs(row["fosi_steps"] - want_fosi) <= max(2, 0.03 * want_fosi)
  assert row["fosi_steps"] < row["base_steps"]


def test_fosi_gd_curve_matches_the_closed_form(quick_run):
  """Every step of the compared runs: GD and FOSI-GD (Newton part zeroes the top-k at step 1, complement at
  rate c eta) against the float64 closed form."""
  _, js, _ = quick_run
  row = js["rows"][0]
  _, vals, vecs = fp.quadratic_hessian()
  a = vecs.T @ fp.quadratic_x0(vecs)
  for method, k in (("base", None), ("fosi", fp.K)):
    got = np.asarray(js["curves"][f"quadratic/gd/{method}/{row[method + '_lr']!r}"])
    want = _closed_form_curve(vals, a, row[method + "_lr"], STEPS, k)
    np.testing.assert_allclose(got, want, rtol=1e-4, err_msg=method)
