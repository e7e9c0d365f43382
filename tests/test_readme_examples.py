"""The README's step examples run verbatim (issue 12 §1).

The blocks are read from README.md: the one in "Using a transformation in your own `shard_map`
step" and the `dho` and `sign1bit` ones. Each runs after a small prelude that supplies only
imports, data and losses (nothing that touches the optimizer state):

  * imports: ``jax``, ``jnp``, ``lax``, ``optax``, ``P = jax.P``, ``dho``, ``sign1bit``,
    ``dense_data_parallel`` (``common.baseline``);
  * a softmax regression on 32 rows of 12 features and 5 classes: ``w`` / ``params`` (its
    parameters), ``x``, ``y`` (the global batch, split over 8 devices), ``loss_fn(params, x, y)``
    and ``batch_loss(params, (x, y))`` (mean losses), ``mesh`` (8 devices, axis ``"data"``);
  * sign1bit: ``partitions`` [4, 8, 13] (8 rows per partition, features then the label as a float)
    and ``local_loss(params, parts)``, the sum over this worker's partitions of each mean loss.

Then two steps run (blocking each) and must move the parameters and keep them finite and replicated.
"""
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")

PRELUDE = '''
import jax, jax.numpy as jnp, numpy as np, optax
from jax import lax
import dho, sign1bit
from common.baseline import dense_data_parallel
P = jax.P
rng = np.random.default_rng(0)
x = rng.normal(size=(32, 12)).astype(np.float32)
y = rng.integers(0, 5, 32).astype(np.int32)
w = params = {"w": 0.1 * jnp.asarray(rng.normal(size=(12, 5)), jnp.float32), "b": jnp.zeros(5)}
def loss_fn(params, x, y):
  return optax.softmax_cross_entropy_with_integer_labels(x @ params["w"] + params["b"], y).mean()
def batch_loss(params, batch):
  return loss_fn(params, *batch)
partitions = np.concatenate([x, y[:, None].astype(np.float32)], axis=1).reshape(4, 8, 13)
def local_loss(params, parts):
  return sum(loss_fn(params, p[:, :12], p[:, 12].astype(jnp.int32)) for p in parts)
mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
'''

# (README section heading, the call of its train_step)
BLOCKS = {
    "## Using a transformation in your own `shard_map` step": "train_step(w, opt_state, x, y)",
    "### `dho`: FOSI and DHO2": "train_step(params, state, x, y)",
    "### `sign1bit`: 1-bit gradient coding with stragglers": "train_step(params, state, data)",
}


def readme_block(heading: str) -> str:
  """The first python block of the section under ``heading`` that defines ``train_step``."""
  text = open(README, encoding="utf-8").read()
  start = text.index(heading + "\n")
  end = text.find("\n## ", start + len(heading))
  end = text.find("\n### ", start + len(heading)) if heading.startswith("###") else end
  section = text[start:end if end > 0 else len(text)]
  blocks = [b for b in re.findall(r"```python\n(.*?)```", section, re.S) if "def train_step" in b]
  assert blocks, f"no train_step block under {heading!r}"
  return blocks[0]


@pytest.mark.parametrize("heading", list(BLOCKS))
def test_readme_block_runs_verbatim(heading):
  scope = {}
  exec(compile(PRELUDE, "<prelude>", "exec"), scope)
  exec(compile(readme_block(heading), f"<README {heading}>", "exec"), scope)
  first = scope["w"] if "opt_state" in scope else scope["params"]
  params = first
  for _ in range(2):
    out = eval(BLOCKS[heading], scope | {"w": params, "params": params})
    params, state = jax.block_until_ready(out)
    scope["opt_state" if "opt_state" in scope else "state"] = state
  moved = [not np.allclose(a, b) for a, b in zip(jax.tree.leaves(first), jax.tree.leaves(params))]
  assert any(moved)
  for leaf in jax.tree.leaves(params):
    assert leaf.sharding.is_fully_replicated and bool(jnp.all(jnp.isfinite(leaf)))


def test_readme_separate_refresh_block_equals_train_step():
  """The dho section's second block (the refresh as its own program) gives train_step's iterates: two
  steps from the same start, the first a scheduled refresh (dho2's W = 1)."""
  heading = "### `dho`: FOSI and DHO2"
  text = open(README, encoding="utf-8").read()
  section = text[text.index(heading + "\n"):]
  section = section[:section.find("\n### ", len(heading))]
  split = [b for b in re.findall(r"```python\n(.*?)```", section, re.S) if "def split_step" in b]
  assert split, "no split_step block in the dho section"
  scope = {}
  exec(compile(PRELUDE, "<prelude>", "exec"), scope)
  exec(compile(readme_block(heading) + split[0], f"<README {heading}>", "exec"), scope)
  assert scope["refresh"].due(scope["state"])
  one = two = (scope["params"], scope["state"])
  for _ in range(2):
    one = jax.block_until_ready(scope["train_step"](*one, scope["x"], scope["y"]))
    two = jax.block_until_ready(scope["split_step"](*two, scope["x"], scope["y"]))
  assert float(jnp.abs(two[1].fosi.eigvals).max()) > 0            # the refresh program ran
  for a, b in zip(jax.tree.leaves(one), jax.tree.leaves(two)):
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-5, atol=1e-6)


def test_readme_steps_do_not_stack_state_by_hand():
  for heading in BLOCKS:
    block = readme_block(heading)
    assert "broadcast_to" not in block and "[None]" not in block and "marks" not in block
