"""The varying-axes probe of every algorithm package, checked on the pinned jax (issue 12 §4).

Each package reads which mesh axes a traced value varies over in one small helper (jax 0.10.2 keeps
them in ``aval.mat`` / ``aval.manual_axis_type``, later releases in ``aval.vma``). Inside
``shard_map`` a sharded input and a ``pcast`` value vary over the axis, a replicated input and a
``psum`` do not; outside ``shard_map`` nothing varies.
"""
import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

AXIS = "data"


def _probe(module: str, name: str):
  try:
    return getattr(importlib.import_module(module), name)
  except (ImportError, AttributeError):
    return None


# (package, probe as "x -> frozenset of axes"); sfb and vr_prox keep theirs where they are today.
_VR = _probe("vr_prox._dap", "_is_varying")
PROBES = {
    "dho": _probe("dho.axis", "varying_axes"),
    "sign1bit": _probe("sign1bit.axis", "varying_axes"),
    "sfb": _probe("sfb.factors", "varying_axes"),
    "vr_prox": _probe("vr_prox.axis", "varying_axes") or (
        (lambda x: frozenset({AXIS}) if _VR(x, AXIS) else frozenset()) if _VR else None),
}


def test_the_packages_of_this_change_have_a_probe():
  assert PROBES["dho"] is not None and PROBES["sign1bit"] is not None


@pytest.mark.parametrize("package", [p for p, f in PROBES.items() if f is not None])
def test_probe_sees_the_varying_axes(package):
  probe = PROBES[package]
  mesh = jax.make_mesh((8,), (AXIS,), axis_types=(jax.sharding.AxisType.Auto,))
  seen = {}

  def body(sharded, replicated):
    seen["sharded"] = probe(sharded)
    seen["replicated"] = probe(replicated)
    seen["pcast"] = probe(lax.pcast(replicated, AXIS, to="varying"))
    seen["psum"] = probe(lax.psum(sharded, AXIS))
    return sharded

  jax.shard_map(body, mesh=mesh, in_specs=(jax.P(AXIS), jax.P()), out_specs=jax.P(AXIS))(
      jnp.arange(8.0), jnp.ones(3))
  assert seen == {"sharded": {AXIS}, "replicated": frozenset(), "pcast": {AXIS}, "psum": frozenset()}
  assert probe(np.ones(3)) == frozenset() and probe(jnp.ones(3)) == frozenset()
