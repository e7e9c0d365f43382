"""PowerSGD through the harness (``config.algorithm = "powersgd"``, common/algos/powersgd.py).

The shipped config runs through ``train.run``; the compiled step's measured payload equals the
paper's count r(n+m) per kernel plus the dense biases (written out here from the layer shapes,
not from ``powersgd.payload_bytes``) plus the 4-byte loss pmean; the error memories are per
worker; a bad rank is one ``error:`` line from ``launch.py``.
"""
import os

import jax
import numpy as np
import pytest

from common import cli, comm, train
from tests.test_launch_bad_inputs import _assert_one_line, _launch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs", "powersgd_mlp.py")


def _config(**overrides):
  config = cli.load_config(CONFIG)
  config.update(dict(widths=(64, 32), num_steps=100, eval_every=0, log_every=1000, checkpoint_every=0,
                     **overrides))
  return config


def _paper_payload(widths, rank, num_features=64, num_classes=10):
  """4 bytes x (Σ over kernels n x m of min(r, n, m)(n + m) + every bias), Vogels et al. §3."""
  dims = [num_features, *widths, num_classes]
  total = 0
  for n, m in zip(dims[:-1], dims[1:]):
    r = min(rank, n, m)
    total += r * (n + m) if r * (n + m) < n * m else n * m
    total += m                                                   # bias: dense
  return 4 * total


@pytest.mark.parametrize("rank", [1, 4])
def test_runs_and_measured_bytes_equal_the_papers_count(rank):
  config = _config(**{"algo": dict(rank=rank)})
  result = train.run(config, quiet=True)
  assert result.status == "ok"
  losses = [row["loss"] for row in result.history]
  assert np.mean(losses[-10:]) < 0.4 * np.mean(losses[:5]), losses[::10]
  expected = _paper_payload(config.widths, rank)
  assert result.final["analytic_bytes_per_step"] == expected
  assert result.comm.payload == expected + 4                     # + the loss pmean
  assert not comm.dense_allreduce_present(result.comm, 64 * 64)   # no dense kernel all-reduce


def test_error_memories_are_per_worker():
  exp = train.build(_config())
  params, state = exp.params, exp.opt_state
  for step in range(1, 3):
    params, state, metrics = exp.step_fn(params, state, exp.shard, exp.key(step))
    jax.block_until_ready(metrics)
  errors = [np.asarray(e) for e in jax.tree.leaves(state[0].error)]
  assert errors and all(e.shape[0] == 8 for e in errors)
  assert all(np.abs(e[0] - e[1]).max() > 0 for e in errors)      # different rows: own memories


@pytest.mark.parametrize("rank", ["0", "1.5"])
def test_bad_rank_is_one_line(tmp_path, rank):
  proc, _ = _launch(["--config", "configs/powersgd_mlp.py", f"--config.algo.rank={rank}"], str(tmp_path / "w"))
  _assert_one_line(proc, "config.algo.rank")
