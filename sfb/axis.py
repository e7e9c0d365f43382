"""Everything sfb does with the mesh axis, in one place (the same small module is in ``dho`` and
``sign1bit``).

* The varying-axes probe: ``varying_axes`` reads which mesh axes a traced value varies over (jax
  0.10.2 keeps them in ``aval.mat`` / ``aval.manual_axis_type``, later releases in ``aval.vma``);
  ``to_varying`` marks a value device-varying before a collective.
* Axis queries that also mean something without an axis (``axis_name=None``: one worker):
  ``axis_size`` and ``axis_index``.
"""
from __future__ import annotations

import jax
from jax import lax

AXIS = "data"


def varying_axes(x) -> frozenset:
  """Mesh axes over which ``x`` is device-varying (empty outside ``shard_map``)."""
  aval = jax.typeof(x)
  mat = getattr(aval, "mat", None) or getattr(aval, "manual_axis_type", None)
  return frozenset(getattr(mat, "varying", None) or getattr(aval, "vma", None) or ())


def to_varying(x, axis_name):
  """``x`` (a tree) marked device-varying over ``axis_name``; unchanged when it already is or when
  ``axis_name`` is None."""
  if axis_name is None:
    return x
  return jax.tree.map(lambda a: a if axis_name in varying_axes(a) else lax.pcast(a, axis_name, to="varying"), x)


def axis_size(axis_name) -> int:
  """Number of workers on ``axis_name`` (1 when None)."""
  return 1 if axis_name is None else lax.axis_size(axis_name)


def axis_index(axis_name):
  """This worker's index on ``axis_name`` (0 when None)."""
  return 0 if axis_name is None else lax.axis_index(axis_name)
