"""The Ray parameter server (common/async_ray) against independent NumPy references.

In-process (no Ray): a worker's DAP payload and the TAP server step equal the NumPy formulas of
spec vr_prox.md §2.2/§2.4/§4.3; shard gradients combine to the full-data mean gradient; the
server refuses reads older than tau and records true delays. On Ray (a private local node on
loopback that the run starts and stops): DAP-SVRG with K = 2 reaches sklearn's optimum of spec
problem B to 1e-9 relative (fast tier, ~40 s); TAP-SVRG and a killed worker are slow tests.
"""
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from common.async_ray import actors, ps, problems as problems_lib, runtime

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
L1, L2 = 3e-3, 1e-2


@pytest.fixture(autouse=True)
def _x64():
  """float64 for these tests only: the in-process actors set the global flag (as they do in their
  own Ray processes), and a session-wide flag would change every later test's programs."""
  before = jax.config.jax_enable_x64
  with jax.enable_x64(True):
    yield
  jax.config.update("jax_enable_x64", before)


@pytest.fixture(scope="module")
def problem():
  return problems_lib.load("elastic_net", l1=L1, l2=L2)


def _grad_np(x, y, w):
  """Mean logistic-loss gradient (1/b) sum -y_i a_i sigmoid(-y_i a_i.w), NumPy."""
  return (x * (-y / (1 + np.exp(y * (x @ w))))[:, None]).mean(0)


def _prox_np(z, step):
  return np.sign(z) * np.maximum(np.abs(z) - step * L1, 0) / (1 + step * L2)


def _keep_env(monkeypatch):
  for name in ("XLA_FLAGS", "JAX_PLATFORMS"):   # actors set them for their own process
    if name in os.environ:
      monkeypatch.setenv(name, os.environ[name])
    else:
      monkeypatch.delenv(name, raising=False)


def test_shard_gradients_combine_to_the_full_mean(problem):
  rng = np.random.default_rng(0)
  w = rng.normal(size=30) * 0.3
  parts = [(_grad_np(problem.x[r], problem.y[r], w), len(r)) for r in (np.arange(0, 49), np.arange(49, 569))]
  mu, n = ps.combine_shard_gradients(parts)
  full = _grad_np(problem.x, problem.y, w)
  assert n == 569
  np.testing.assert_allclose(mu, full, rtol=1e-13, atol=1e-16)
  mean_of_means = (parts[0][0] + parts[1][0]) / 2   # the wrong combination moves the optimum
  assert np.linalg.norm(mean_of_means - full) > 1e-3 * np.linalg.norm(full)


@pytest.mark.parametrize("relaxation", [1.0, 0.5])
def test_worker_dap_payload_matches_numpy(problem, monkeypatch, relaxation):
  _keep_env(monkeypatch)
  rows = np.arange(100, 300)
  gamma, k_workers, n = 0.7, 3, 569
  worker = actors.Worker(1, problem, rows, variant="dap", lr=gamma, relaxation=relaxation, batch_size=4,
                         seed=0, x64=True)
  rng = np.random.default_rng(1)
  x_tilde, x_hat, mu = rng.normal(size=30), rng.normal(size=30), rng.normal(size=30) * 0.1
  worker.set_epoch(x_tilde, mu, n, k_workers)
  idx = np.array([0, 5, 5, 199])
  xb, yb = problem.x[rows][idx], problem.y[rows][idx]
  got = np.asarray(worker.step(x_hat, worker.state, (xb, yb), worker.count))
  v = k_workers * len(rows) / n * (_grad_np(xb, yb, x_hat) - _grad_np(xb, yb, x_tilde)) + mu
  want = relaxation * (_prox_np(x_hat - gamma * v, gamma) - x_hat)
  np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-15)
  mu_k, n_k = worker.shard_gradient(x_tilde)
  assert n_k == 200
  np.testing.assert_allclose(mu_k, _grad_np(problem.x[rows], problem.y[rows], x_tilde), rtol=1e-12)


def test_tap_server_step_and_bounded_delay(problem, monkeypatch):
  _keep_env(monkeypatch)
  gamma = 0.7
  rng = np.random.default_rng(2)
  x0, x_tilde, mu, d = (rng.normal(size=30) for _ in range(4))
  server = actors.Server(problem, x0, variant="tap", lr=gamma, tau=1, x64=True)
  server.start_epoch(3, x_tilde, mu, 569, {0: 2 * 300.0, 1: 2 * 269.0})
  status, x1, version = server.push(0, d, 0)
  want = _prox_np(x0 - gamma * (2 * 300 / 569 * d + mu), gamma)
  assert status == "ok" and version == 1
  np.testing.assert_allclose(x1, want, rtol=1e-12, atol=1e-15)
  assert server.push(1, d, 1)[0] == "ok"                      # read the current version: delay 0
  status, x_now, v_now = server.push(1, d, 0)                  # read 2 updates ago > tau = 1
  assert status == "refused" and v_now == 2                   # re-read: the current x and version
  assert server.push(0, d, 1)[0] == "ok"                      # delay 1 <= tau
  assert server.push(0, d, 3)[0] == "stop"                    # the epoch's 3 updates are used up
  log = server.pop_log()
  assert log["delay"] == [0, 0, 1] and log["worker"] == [0, 1, 0] and log["refused"] == 1


def test_dap_server_only_adds(problem):
  rng = np.random.default_rng(3)
  x0, delta = rng.normal(size=30), rng.normal(size=30)
  server = actors.Server(problem, x0, variant="dap", lr=1.0, tau=0, x64=True)
  server.start_epoch(1, None, None, 569, {0: 569.0})
  status, x1, _ = server.push(0, delta, 0)
  np.testing.assert_array_equal(x1, x0 + delta)


def _config(**overrides):
  from configs.async_dap_svrg import get_config
  config = get_config()
  for k, v in overrides.items():
    config[k] = v
  return config


def _ray_run(tmp_path, **overrides):
  from common.metrics import read_metrics
  config = _config(**overrides)
  result = runtime.run(config, str(tmp_path), quiet=True)
  return result, read_metrics(str(tmp_path))


def _check_delays(rows, config_tau):
  for row in rows:
    assert sum(row["delay_hist"]) == row["updates"] and row["delay_max"] <= config_tau
  assert any(row["delay_max"] > 0 for row in rows)   # asynchrony really happened


@pytest.mark.slow  # starts a local Ray node: ~25 s before the first update, ~1-3 min on 2 cores
def test_ray_dap_svrg_reaches_sklearn_optimum(tmp_path):
  """K = 2 workers, tau = 4, theta = 1, gamma = 1, m = n: relative gap <= 1e-9 after 8 epochs."""
  result, rows = _ray_run(tmp_path, num_steps=8)
  assert result.status == "ok" and [r["step"] for r in rows] == list(range(1, 9))
  assert rows[-1]["gap"] <= 1e-9, [r["gap"] for r in rows]
  _check_delays(rows, 4)
  assert rows[-1]["version"] == 8 * 569 and rows[-1]["bytes_up"] >= 569 * 30 * 8
  assert os.path.exists(tmp_path / "checkpoints" / "8" / "params.npz")


@pytest.mark.slow
def test_ray_tap_svrg_reaches_sklearn_optimum(tmp_path):
  result, rows = _ray_run(tmp_path, variant="tap", num_steps=9)
  assert rows[-1]["gap"] <= 1e-9, [r["gap"] for r in rows]
  _check_delays(rows, 4)


@pytest.mark.slow
def test_ray_killed_worker_run_continues_on_the_survivors_problem(tmp_path, capsys):
  """K = 3; worker 1's process exits at version 700 (epoch 2). The log names it, the run goes on
  with workers 0 and 2, and converges to sklearn's optimum of the surviving rows' problem."""
  from sklearn.linear_model import LogisticRegression
  config = _config(num_workers=3, kill_worker=1, kill_at_version=700, num_steps=10)
  result = runtime.run(config, str(tmp_path))
  out = capsys.readouterr().out
  assert "worker 1 lost at server version" in out and "(epoch 2," in out and "[0, 2]" in out
  assert [d["worker"] for d in result.final["lost_workers"]] == [1]
  problem = problems_lib.load("elastic_net", l1=L1, l2=L2)
  keep = np.concatenate([r for k, r in enumerate(problems_lib.shard_rows(569, 3)) if k != 1])
  sub = problem._replace(x=problem.x[keep], y=problem.y[keep])
  clf = LogisticRegression(C=1 / (len(keep) * (L1 + L2)), l1_ratio=L1 / (L1 + L2), solver="saga",
                           fit_intercept=False, tol=1e-12, max_iter=200000).fit(sub.x, sub.y)
  p_sub = problems_lib.objective(sub, clf.coef_.ravel())
  w = np.load(tmp_path / "final_params.npz")["w"]
  assert (problems_lib.objective(sub, w) - p_sub) / p_sub <= 1e-8


@pytest.mark.parametrize("override,message", [
    ("--config.num_workers=0", "config.num_workers: must be an integer >= 1"),
    ("--config.max_delay=-1", "config.max_delay: must be an integer >= 0"),
    ("--config.epoch_timeout_s=0", "config.epoch_timeout_s: must be a finite number > 0"),
    ("--config.kill_worker=5", "config.kill_worker: must be -1 (none) or a worker id in 0..1"),
])
def test_bad_ray_config_is_one_line(tmp_path, override, message):
  proc = subprocess.run([sys.executable, "launch.py", "--config", "configs/async_dap_svrg.py", override,
                         "--workdir", str(tmp_path / "w")], cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines()[-1] == f"error: {message}" or message in proc.stderr
  assert "Traceback" not in proc.stderr and len([l for l in proc.stderr.splitlines() if l.startswith("error")]) == 1


@pytest.mark.slow
def test_ray_dap_resume_continues_from_the_last_epoch_checkpoint(tmp_path, capsys):
  """Run 2 epochs, lose the epoch-2 checkpoint as a kill before it was written would, rerun with
  num_steps=3: it resumes after epoch 1 (its metrics line kept as written), the server version
  continues (epoch e ends at version e m), one metrics line per epoch, and the gap keeps falling."""
  import shutil
  from common.metrics import read_metrics
  _, first = _ray_run(tmp_path, num_steps=2)
  shutil.rmtree(tmp_path / "checkpoints" / "2")
  runtime.run(_config(num_steps=3), str(tmp_path))
  assert "resumed from checkpoint at step 1" in capsys.readouterr().out
  rows = read_metrics(str(tmp_path))
  assert [r["step"] for r in rows] == [1, 2, 3] and rows[0] == first[0] and rows[1] != first[1]
  assert [r["version"] for r in rows] == [569, 2 * 569, 3 * 569]
  assert rows[1]["wall_time"] > rows[0]["wall_time"] and rows[2]["gap"] < rows[1]["gap"] < rows[0]["gap"]
  assert rows[2]["cum_bytes"] > rows[1]["cum_bytes"] > rows[0]["cum_bytes"]
