"""Is a base optimizer coordinate-wise? A static check on its traced update (jaxpr dataflow).

``dho2`` ([P1] "partial curvature" update) runs the FOSI base optimizer on each device's
slice of ``ceil(n/P)`` coordinates. That equals the reference ([F] Alg. 2, base on the full
flattened vector) only when every output coordinate of the base update depends on the same
coordinate of its inputs alone: SGD, heavy ball, Nesterov, Adam, schedule-free SGD. A global norm
(``clip_by_global_norm``), a trust ratio (LAMB, LARS), an RMS clip (Adafactor), an all-finite test
(``apply_if_finite``) or noise drawn for the whole vector (``noisy_sgd``) mixes coordinates, and on
slices it silently computes something else.

The check traces ``base.update`` on a probe vector and labels every value of the jaxpr:

* ``CLEAN``: independent of the vector's data and of the coordinate position (counts, schedules);
* ``VEC``:   a vector aligned with the coordinates, each entry from the same entry of the inputs;
* ``MIXED``: anything else (a reduction over coordinates, a gather, noise or ``iota`` of the
  vector's shape, a closed-over constant of the vector's shape, an unknown primitive on a vector).

Only an allow-list of elementwise primitives keeps ``VEC``; every other primitive that touches a
vector, or produces a value of the vector's shape from clean inputs, yields ``MIXED``. The base is
coordinate-wise iff no output (update or new state) is ``MIXED``. The allow-list makes the check
conservative: an unknown primitive is refused, never passed.

References:
  [F]  H. Sivan, M. Gabel, A. Schuster. "FOSI: Hybrid First and Second Order Optimization",
       ICLR 2024 (arXiv:2302.08484), Alg. 2: the base optimizer on the full flattened vector.
  [P1] "Accelerating Deep Neural Network Training via Distributed Hybrid Order Optimization"
       (DHO2 v1, arXiv:2505.00982): the model updated "with partial curvature information",
       each device on its own slice of the coordinates.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.extend import core as jax_core

CLEAN, VEC, MIXED = 0, 1, 2
PROBE = 1031        # probe vector length: a prime, so no incidental dimension matches it

ELEMENTWISE = frozenset("""
abs acos acosh add add_any and asin asinh atan atan2 atanh cbrt ceil clamp clz complex conj convert_element_type
copy copy_p cos cosh digamma div eq erf erf_inv erfc exp exp2 expm1 floor ge gt imag integer_pow is_finite le lgamma
log log1p logistic lt max min mul ne neg nextafter not or population_count pow real reduce_precision rem round rsqrt
select_n shift_left shift_right_arithmetic shift_right_logical sign sin sinh sqrt square sub tan tanh xor
""".split())
SAME_SHAPE = frozenset({"broadcast_in_dim", "reshape", "squeeze", "expand_dims"})


def _shape_label(aval) -> int:
  """Label of an input/constant by its shape: of the probe's shape -> VEC, else CLEAN."""
  return VEC if PROBE in getattr(aval, "shape", ()) else CLEAN


def _sub_jaxpr(eqn):
  """The single sub-jaxpr of a call-like primitive (jit, custom_jvp/vjp, remat) taking the eqn's inputs."""
  for value in eqn.params.values():
    closed = value if isinstance(value, jax_core.ClosedJaxpr) else None
    if closed is not None and len(closed.jaxpr.invars) == len(eqn.invars):
      return closed
  return None


def _eqn_labels(eqn, ins, origin):
  name = eqn.primitive.name
  outs = eqn.outvars
  top = max(ins, default=CLEAN)
  if name in ELEMENTWISE:
    return [top] * len(outs)
  if name in SAME_SHAPE:
    same = all(getattr(o.aval, "shape", None) == getattr(eqn.invars[0].aval, "shape", None) for o in outs)
    return [top if (same or top == CLEAN) else MIXED] * len(outs)
  if name == "cond":
    branches = [_labels(b, ins[1:], origin) for b in eqn.params["branches"]]
    merged = [max(col) for col in zip(*branches)]
    return [MIXED if ins[0] != CLEAN else lab for lab in merged]
  sub = _sub_jaxpr(eqn)
  if sub is not None:
    return _labels(sub, ins, origin)
  if top != CLEAN or any(PROBE in getattr(o.aval, "shape", ()) for o in outs):
    origin.setdefault("primitive", name)
    return [MIXED] * len(outs)
  return [CLEAN] * len(outs)


def _labels(closed, in_labels, origin):
  """Dataflow labels of ``closed``'s outputs given its inputs' labels (records the first MIXED origin)."""
  jaxpr = closed.jaxpr
  env = {}
  for var, const in zip(jaxpr.constvars, closed.consts):
    env[var] = MIXED if _shape_label(jax.typeof(const)) == VEC else CLEAN
    if env[var] == MIXED:
      origin.setdefault("primitive", "a closed-over constant of the vector's shape")
  env.update(zip(jaxpr.invars, in_labels))
  read = lambda v: CLEAN if isinstance(v, jax_core.Literal) else env[v]
  for eqn in jaxpr.eqns:
    env.update(zip(eqn.outvars, _eqn_labels(eqn, [read(v) for v in eqn.invars], origin)))
  return [read(v) for v in jaxpr.outvars]


def violation(base, dtype=jnp.float32) -> str | None:
  """None if ``base.update(g, state, params)`` on a flat vector is coordinate-wise, else the name of
  the first primitive that mixes coordinates (e.g. ``reduce_sum`` of a global norm)."""
  vec = jax.ShapeDtypeStruct((PROBE,), dtype)
  state = jax.eval_shape(base.init, vec)
  closed = jax.make_jaxpr(lambda g, s, p: base.update(g, s, p))(vec, state, vec)
  in_labels = [_shape_label(v.aval) for v in closed.jaxpr.invars]
  origin = {}
  if any(lab == MIXED for lab in _labels(closed, in_labels, origin)):
    return origin.get("primitive", "an unknown operation")
  return None
