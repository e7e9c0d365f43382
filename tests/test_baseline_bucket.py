"""The dense baseline's gradient all-reduce is ONE bucket per dtype (common/baseline.py), as DDP.

``bucketed_pmean`` must give exactly the leaf-wise ``lax.pmean`` (the same elementwise sums)
and the compiled step of ``configs/baseline_digits.py:mlp`` must all-reduce one f32 array for
the whole gradient (plus the scalar loss), where the leaf-wise baseline carried one array per
leaf in a tuple all-reduce (5 arrays for the 64-64-10 MLP: 4 leaves + loss; measured before the change).
"""
import os

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from common import baseline, cli, comm, train
from common.algos.base import AXIS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _tree(seed):
  rng = np.random.default_rng(seed)
  return {"w": rng.normal(size=(8, 5, 3)).astype(np.float32), "b": rng.normal(size=(8, 3)).astype(np.float32),
          "s": rng.normal(size=(8,)).astype(np.float32),
          "h": jnp.asarray(rng.normal(size=(8, 4, 2)), jnp.bfloat16)}


def _sharded(fn):
  mesh = jax.make_mesh((8,), (AXIS,), axis_types=(jax.sharding.AxisType.Auto,))
  return jax.jit(jax.shard_map(lambda t: fn(jax.tree.map(lambda x: x[0], t)), mesh=mesh,
                               in_specs=jax.P(AXIS), out_specs=jax.P()))


def test_bucketed_equals_leafwise_pmean_bitwise_and_numpy():
  tree = _tree(0)
  bucketed = _sharded(lambda t: baseline.bucketed_pmean(t, AXIS))(tree)
  leafwise = _sharded(lambda t: lax.pmean(t, AXIS))(tree)
  for key in tree:
    assert bucketed[key].dtype == tree[key].dtype and bucketed[key].shape == tree[key].shape[1:]
    np.testing.assert_array_equal(np.asarray(bucketed[key]), np.asarray(leafwise[key]))
    np.testing.assert_allclose(np.asarray(bucketed[key], np.float64),
                               np.asarray(tree[key], np.float64).mean(0), rtol=1e-2 if key == "h" else 1e-6)


def test_one_array_per_dtype_in_the_compiled_program():
  report = comm.step_bytes(_sharded(lambda t: baseline.bucketed_pmean(t, AXIS)), _tree(1))
  assert report.arrays == 2, report.summary()                        # one f32 bucket, one bf16 bucket
  assert [c.elements for c in report.collectives] == [5 * 3 + 3 + 1 + 4 * 2], report.summary()  # CPU: bf16 sent as f32


def test_dense_baseline_step_all_reduces_one_flat_gradient():
  config = cli.load_config(os.path.join(ROOT, "configs", "baseline_digits.py") + ":mlp")
  exp = train.build(config)
  report = comm.collective_bytes(exp.compile())
  n = sum(x.size for x in jax.tree.leaves(exp.params))
  assert report.count == 1 and report.arrays == 2, report.summary()  # gradient bucket + loss scalar
  assert report.payload == 4 * n + 4 == exp.method.analytic_payload + 4, report.summary()


def test_run_summary_reports_the_collectives_next_to_the_bytes():
  config = cli.load_config(os.path.join(ROOT, "configs", "baseline_digits.py") + ":mlp")
  config.update(dict(num_steps=3, eval_every=0, log_every=1000, checkpoint_every=0))
  result = train.run(config, quiet=True)
  assert result.final["collectives_per_step"] == result.comm.count == 1
  assert result.final["arrays_per_step"] == result.comm.arrays == 2
  assert result.final["bytes_per_step"] == result.comm.payload
