"""Everything dho does with the mesh axis, in one place (the same small module is in ``sign1bit``).

* The varying-axes probe: ``varying_axes`` reads which mesh axes a traced value varies over (jax
  0.10.2 keeps them in ``aval.mat`` / ``aval.manual_axis_type``, later releases in ``aval.vma``);
  ``to_varying`` marks a value device-varying before a collective.
* Axis queries that also mean something without an axis (``axis_name=None``: one worker):
  ``axis_size`` and ``axis_index``.
* Per-worker state. A state type whose leaves differ per worker has a method
  ``per_worker_fields()`` naming those fields (dotted for nested fields). ``init`` stores each
  such leaf with a leading axis of size P (``stack``: the global layout, P = 1 with
  ``axis_name=None``); ``state_specs`` gives those leaves ``P(axis_name)``, so inside
  ``shard_map`` every device sees its own row with a leading axis of 1 (the local view, which
  ``update`` takes and returns). ``multi_steps`` is ``optax.MultiSteps`` whose accumulated
  (local) gradients are per-worker leaves of that kind.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
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


# ----------------------------------------------------------------------------- per-worker leaves


def _typed(node) -> bool:
  return hasattr(node, "per_worker_fields") and hasattr(node, "_replace")


def _field(node, dotted: str):
  for name in dotted.split("."):
    node = getattr(node, name)
  return node


def _with_field(node, dotted: str, value):
  head, _, rest = dotted.partition(".")
  return node._replace(**{head: _with_field(getattr(node, head), rest, value) if rest else value})


def _plain_multi_steps(node) -> bool:
  return type(node) is optax.MultiStepsState   # noqa: E721 (multi_steps' subclass is fine)


def per_worker(tree):
  """bool tree like ``tree``: True on the leaves that differ per worker, found by type anywhere
  (inside ``optax.chain``, ``inject_hyperparams``, ``multi_steps``). A plain
  ``optax.MultiStepsState`` is refused: its accumulated local gradients differ per worker."""
  def visit(node):
    if _plain_multi_steps(node):
      raise ValueError("optax.MultiSteps accumulates this worker's local gradients, which differ per worker: "
                       "use multi_steps(tx, every_k_schedule, num_workers=P) from this package instead "
                       "(the same MultiSteps with acc_grads stored per worker)")
    if not _typed(node):
      return jax.tree.map(lambda _: False, node)
    out = node._replace(**{f: marks(getattr(node, f)) for f in node._fields})
    for f in node.per_worker_fields():
      out = _with_field(out, f, jax.tree.map(lambda _: True, _field(node, f)))
    return out

  def marks(subtree):
    return jax.tree.map(visit, subtree, is_leaf=lambda n: _typed(n) or _plain_multi_steps(n))

  return marks(tree)


def stack(node, num_workers: int):
  """The global layout of a state built for one worker: ``node``'s per-worker leaves get a leading
  axis of size ``num_workers`` (every row the same initial value)."""
  return _own_fields(lambda x: jnp.broadcast_to(jnp.asarray(x)[None], (num_workers,) + jnp.shape(x)), node)


def _own_fields(fn, node):
  """``fn`` on the leaves of ``node``'s own per-worker fields (nested states keep theirs)."""
  for f in node.per_worker_fields():
    node = _with_field(node, f, jax.tree.map(fn, _field(node, f)))
  return node


def local(node, who: str):
  """Inside ``update``: the worker's own row of each of ``node``'s per-worker leaves (drops the
  leading axis of 1). Another leading axis means the state was not placed with ``state_specs``."""
  def own(x):
    if jnp.ndim(x) == 0 or jnp.shape(x)[0] != 1:
      raise ValueError(f"{who}: a per-worker state leaf of shape {jnp.shape(x)} reached update; inside "
                       f"shard_map pass state_specs(state, axis_name) of its package as the state's "
                       "in_specs and out_specs, so each device sees its own row (leading axis 1)")
    return x[0]
  return _own_fields(own, node)


def unlocal(node):
  """Inverse of ``local``: restores the leading axis of 1 before ``update`` returns."""
  return _own_fields(lambda x: x[None], node)


def state_specs(state, axis_name: str = AXIS):
  """PartitionSpecs of ``state`` for ``shard_map``: ``P(axis_name)`` on per-worker leaves (leading
  axis P: device p holds row p), ``P()`` elsewhere."""
  return jax.tree.map(lambda m: jax.P(axis_name) if m else jax.P(), per_worker(state))


class MultiStepsState(optax.MultiStepsState):
  """``optax.MultiStepsState`` whose ``acc_grads`` are per worker (leading axis P)."""
  __slots__ = ()

  def per_worker_fields(self):
    return ("acc_grads",)


def multi_steps(tx, every_k_schedule, *, num_workers: int, **kwargs) -> optax.GradientTransformationExtraArgs:
  """``optax.MultiSteps(tx, every_k_schedule, **kwargs)`` over local gradients: it accumulates each
  worker's own gradient, so ``acc_grads`` is stored per worker (leading axis ``num_workers``;
  ``state_specs`` gives it ``P(axis)``). ``tx`` sees the mean of the k local gradients."""
  inner = optax.MultiSteps(tx, every_k_schedule, **kwargs)

  def init_fn(params):
    return stack(MultiStepsState(*inner.init(params)), num_workers)

  def update_fn(updates, state, params=None, **extra_args):
    mine = local(state, "multi_steps")
    new_updates, new_state = inner.update(updates, optax.MultiStepsState(*mine), params, **extra_args)
    return new_updates, unlocal(MultiStepsState(*new_state))

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
