"""The mesh-axis module of every algorithm package, checked on the pinned jax (issue 12 §4).

Each package touches the mesh axis through one small module ``<package>.axis`` with the same four
functions. ``varying_axes`` reads which mesh axes a traced value varies over (jax 0.10.2 keeps them
in ``aval.mat`` / ``aval.manual_axis_type``, later releases in ``aval.vma``): inside ``shard_map``
a sharded input and a ``pcast`` value vary over the axis, a replicated input and a ``psum`` do not;
outside ``shard_map`` nothing varies. ``to_varying`` makes replicated leaves varying and leaves
varying ones alone (a second ``pcast`` would raise); ``axis_size`` / ``axis_index`` are the
mesh's. With ``axis_name=None`` (one worker) all three mean one worker and touch no axis.
"""
import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

AXIS = "data"
PACKAGES = ("dho", "sign1bit", "sfb", "vr_prox")


@pytest.mark.parametrize("package", PACKAGES)
def test_axis_module(package):
  axis = importlib.import_module(f"{package}.axis")
  mesh = jax.make_mesh((8,), (AXIS,), axis_types=(jax.sharding.AxisType.Auto,))
  seen = {}

  def body(sharded, replicated):
    seen["sharded"] = axis.varying_axes(sharded)
    seen["replicated"] = axis.varying_axes(replicated)
    seen["pcast"] = axis.varying_axes(lax.pcast(replicated, AXIS, to="varying"))
    seen["psum"] = axis.varying_axes(lax.psum(sharded, AXIS))
    mixed = axis.to_varying({"s": sharded, "r": replicated}, AXIS)
    seen["to_varying"] = {k: axis.varying_axes(v) for k, v in mixed.items()}
    seen["size"] = axis.axis_size(AXIS)
    return sharded + axis.axis_index(AXIS)

  out = jax.shard_map(body, mesh=mesh, in_specs=(jax.P(AXIS), jax.P()), out_specs=jax.P(AXIS))(
      jnp.zeros(8), jnp.ones(3))
  assert seen == {"sharded": {AXIS}, "replicated": frozenset(), "pcast": {AXIS}, "psum": frozenset(),
                  "to_varying": {"s": {AXIS}, "r": {AXIS}}, "size": 8}
  np.testing.assert_array_equal(out, np.arange(8))
  x = jnp.ones(3)
  assert axis.varying_axes(np.ones(3)) == frozenset() and axis.varying_axes(x) == frozenset()
  assert axis.to_varying(x, None) is x
  assert axis.axis_size(None) == 1 and axis.axis_index(None) == 0
