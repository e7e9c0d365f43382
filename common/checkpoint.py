"""Orbax checkpoints of the training state ``{"params", "opt_state", "step"}``.

Restores go through abstract arrays carrying the run's shardings, so per-worker state
(``P("data")``) and optax NamedTuples round-trip exactly. PRNG keys are stored as key data.
"""
from __future__ import annotations

import os

import jax
import orbax.checkpoint as ocp


class Checkpointer:
  def __init__(self, workdir: str, max_to_keep: int = 2):
    self.dir = os.path.abspath(os.path.join(workdir, "checkpoints"))
    self.manager = ocp.CheckpointManager(
        self.dir, options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True))

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state) -> None:
    self.manager.save(step, args=ocp.args.StandardSave(state))
    self.manager.wait_until_finished()

  def restore(self, step: int, like):
    """Restores ``step`` into arrays with the shapes, dtypes and shardings of ``like``."""
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), like)
    return self.manager.restore(step, args=ocp.args.StandardRestore(abstract))

  def close(self) -> None:
    self.manager.close()
