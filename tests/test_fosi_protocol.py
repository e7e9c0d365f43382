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

import jax
import jax.numpy as jnp
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


def test_kfac_merge_keeps_the_fosi_table(quick_run, tmp_path):
  """``--methods kfac`` takes the targets from the JSON and replaces only the K-FAC section (twice = once);
  the quadratic is refused with its reason (no kfac-jax program is built)."""
  import shutil
  md, js, out = quick_run
  shutil.copytree(out, tmp_path, dirs_exist_ok=True)
  argv = ["--quick", "--tasks", "quadratic", "--bases", "gd", "--steps", str(STEPS), "--methods", "kfac",
          "--out", str(tmp_path)]
  fp.main(argv)
  fp.main(argv)
  merged = (tmp_path / "fosi_protocol.md").read_text()
  assert merged.split(fp.KFAC_HEADING)[0] == md.split(fp.KFAC_HEADING)[0]
  assert merged.count(fp.KFAC_HEADING) == 1 and "--methods kfac" in merged.split(fp.KFAC_HEADING)[1]
  assert "| quadratic | - |" in merged and "No registered losses" in merged
  merged_js = json.loads((tmp_path / "fosi_protocol.json").read_text())
  assert merged_js["rows"] == js["rows"] and "quadratic" in merged_js["kfac"]["refused"]


def test_methods_flag_refusals(tmp_path, capsys):
  with pytest.raises(SystemExit):
    fp.main(["--methods", "base", "--out", str(tmp_path)])             # base without fosi
  assert "give both or neither" in capsys.readouterr().err
  with pytest.raises(SystemExit):
    fp.main(["--methods", "kfac", "--tasks", "lr", "--out", str(tmp_path)])   # no JSON to take targets from
  assert "does not exist" in capsys.readouterr().err


def test_kfac_rows_pick_fewest_steps_then_wall():
  task = fp.Task("lr", "", None, None, None, 4, {"hb": (1.0,)}, {})
  runs = {(0.1, 1e-3): fp.Run([3.0, 2.0, 1.0, 0.5], [1.0, 1.0, 1.0]),     # reaches 1.0 at step 2 in 2 s
          (0.3, 1e-3): fp.Run([3.0, 0.9, 0.8], [5.0, 1.0]),              # at step 1 but slower (5 s)
          (1.0, 1e-3): fp.Run([3.0, 0.95, 0.1], [0.5, 1.0]),             # at step 1 in 0.5 s: chosen
          (1.0, 1e-1): fp.Run(None, [0.1])}                              # diverged
  rows = [dict(task="lr", base="hb", protocol="(b) each tuned", target=1.0, base_lr=1.0, base_steps=10,
               base_wall=2.0, fosi_lr=1.0, fosi_steps=5, fosi_wall=1.0),
          dict(task="lr", base="hb", protocol="(a) same lr", target=1.0, base_lr=1.0, base_steps=10,
               base_wall=2.0, fosi_lr=1.0, fosi_steps=6, fosi_wall=1.0)]
  (row,) = fp.kfac_rows(task, runs, rows)
  assert (row["kfac_lr"], row["kfac_damping"], row["kfac_steps"], row["kfac_wall"]) == (1.0, 1e-3, 1, 0.5)
  assert row["fosi_steps"] == 5                                          # protocol (b)'s FOSI
  (none,) = fp.kfac_rows(task, runs, [dict(rows[0], target=0.01)])
  assert none["kfac_steps"] is None and none["kfac_lr"] is None


@pytest.mark.slow   # ~15 CPU-s (kfac-jax's ggn_exact program), over the default tier's 10 s per test
def test_kfac_curvature_of_the_ae_loss_is_its_gauss_newton_matrix():
  """The squared-error registration (weight 1/d) gives K-FAC the curvature of the loss the table minimises: for
  a one-layer linear autoencoder (widths 64-64, no tanh) the GGN of mean((x W + b - x)^2) is exactly
  2/(N d) X1^T X1 (x) I_d with X1 = [x, 1] (a Kronecker product, so K-FAC's block is exact); kfac-jax's
  ``ggn_exact`` block times a random V must equal that closed form (numpy, float64). Weight 2/d would be 2x."""
  from common.algos import kfac as kfac_lib
  task = fp.ae_task(1, widths=(64, 64))
  batch = jax.tree.map(lambda a: a[:32], task.kfac_batch)     # 32 rows keep ggn_exact's 64 output directions cheap
  x = np.asarray(batch.x, np.float64)
  n, d = x.shape
  estimator = kfac_lib.make_estimator(task.kfac_loss, "ggn_exact")
  kfac_lib.finalize(estimator, task.params, batch)
  state = kfac_lib.init(estimator, task.params, batch, jax.random.key(0)).curvature
  v = jax.tree.map(lambda p: jax.random.normal(jax.random.key(1), p.shape, p.dtype), task.params)

  @jax.jit
  def curvature_times(state, v):
    state = estimator.update_curvature_matrix_estimate(state, ema_old=0.0, ema_new=1.0, identity_weight=0.0,
                                                       batch_size=n, rng=jax.random.key(2),
                                                       func_args=(task.params, batch))
    return estimator.multiply(state, v, identity_weight=0.0, exact_power=True, use_cached=False, pmap_axis_name=None)
  got = curvature_times(state, v)
  x1 = np.concatenate([x, np.ones((n, 1))], axis=1)
  stacked = np.concatenate([np.asarray(v[0]["w"], np.float64), np.asarray(v[0]["b"], np.float64)[None]], axis=0)
  want = 2.0 / (n * d) * x1.T @ (x1 @ stacked)
  np.testing.assert_allclose(np.asarray(got[0]["w"]), want[:d], rtol=1e-4, atol=1e-6 * np.abs(want).max())
  np.testing.assert_allclose(np.asarray(got[0]["b"]), want[d], rtol=1e-4, atol=1e-6 * np.abs(want).max())


def test_kfac_loss_is_the_task_loss():
  """The loss K-FAC differentiates (softmax cross-entropy registered for kfac-jax) is the lr task's loss,
  weight decay included, at a point away from the initial one."""
  task = fp.lr_task(1)
  params = jax.tree.map(lambda p: p + 0.01 * jnp.arange(p.size, dtype=p.dtype).reshape(p.shape) / p.size, task.params)
  both = jax.jit(lambda p: (task.loss_fn(p, task.batch), task.kfac_loss(p, task.kfac_batch)))(params)
  np.testing.assert_allclose(both[1], both[0], rtol=1e-6)


@pytest.mark.slow   # imports kfac-jax (tfp) and compiles its step: 76 s at load ~30
def test_kfac_grid_learns_and_stops_at_the_first_loss_below_stop_at():
  """K-FAC through kfac_grid on the lr task (one grid point): the loss falls, and the run ends at the
  first step whose loss is <= stop_at (every earlier one above it), well before the step budget."""
  task = fp.lr_task(30)
  runs = fp.kfac_grid(task, 1.0, lrs=(1.0,), dampings=(1e-3,), log=lambda s: None)
  r = runs[(1.0, 1e-3)]
  step_losses, final = r.losses[:-1], r.losses[-1]
  assert len(r.times) == len(step_losses) < task.steps
  assert step_losses[-1] <= 1.0 < min(step_losses[:-1]) and step_losses[0] > 2.0     # ln 10 = 2.30 at zero init
  assert final < step_losses[-1]
