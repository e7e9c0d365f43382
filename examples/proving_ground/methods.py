"""The rows of the table: each transformation driven the way its README section says, under
``jax.shard_map`` on the mesh, next to its single-device reference.

A row is ``run(case, mesh, progress) -> Outcome`` plus ``not_applicable(case) -> reason | None``.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import dho
import jax
import jax.numpy as jnp
import numpy as np
import optax
import sfb
import sign1bit
import vr_prox
from jax import P

from proving_ground import models, references, spmd
from proving_ground.cases import CLIP, LR, Case
from proving_ground.spmd import AXIS

F32_TOL = 1e-5
BF16_TOL = 2.0 ** -5      # bf16: 2x the row-order floor (README "Tolerances"; run.py --floor)

FOSI_HP = dict(k=2, l=0, m=8, refresh_every=2, warmup=1, alpha=0.1, momentum="heavy_ball", decay=0.9,
               scale_clip=3.0)
STRAGGLER_PROB, SEED = 0.25, 0
UNEVEN_ROWS = (8, 5, 3, 7, 8, 2, 6, 4)      # valid rows per device (8 padded rows each)
UNEVEN_PARTITIONS = (8, 5, 3, 7)            # valid rows per gradient-coding partition
VR_L1, VR_ROUNDS, VR_EPOCHS, VR_BATCH = 1e-3, 3, 2, 2

MODEL_FREE = "n/a: update sees only the flattened local gradient; the model never enters it"
NO_BASE = "n/a: no base optimizer"
EQUAL_SHARDS = "n/a: a per-device mean gradient over equal local batches (no data shards to weigh)"
CONVEX = "n/a: a convex per-row loss on the method's own prox; no model structure"
VR_CHAIN = ("n/a: the chain would transform g_read but not the snapshot_grads extra arg, breaking "
            "v = w(g - g~) + mu; vr_prox returns the complete prox update (README: no scale_by_*)")


@dataclasses.dataclass
class Outcome:
  sharded: dict
  reference: dict
  initial: dict
  tol: float
  bf16: bool = False   # compare at the parameters' own scale (cells.rel_err)


@dataclasses.dataclass(frozen=True)
class Row:
  name: str
  run: Callable[[Case, jax.sharding.Mesh, dict], Outcome]
  skip: dict                   # case name -> n/a reason

  def not_applicable(self, case: Case) -> str | None:
    return self.skip.get(case.name)


def _tol(case: Case, f32: float = F32_TOL) -> float:
  return BF16_TOL if case.dtype == jnp.bfloat16 else f32


_REFERENCES: dict = {}


def _reference(kind: str, case: Case, compute: Callable):
  """References are shared by cases that do not change the math: ``inject_hyperparams`` with a
  constant learning rate and buffer donation (and DHO2 shares FOSI's)."""
  key = (kind, dataclasses.replace(case, name="", what="", inject=False, donate=False))
  if key not in _REFERENCES:
    _REFERENCES[key] = compute()
  return _REFERENCES[key]


def _host(tree):
  return jax.tree.map(np.asarray, tree)


def _replicated(tree, mesh):
  return jax.tree.map(lambda a: spmd.put(a, mesh, P()), tree)


def _sharded_run(tx, body, params, batches, case, mesh, progress, data_specs=(P(AXIS), P(AXIS)),
                 replicated_state: bool = False):
  """init -> per-device state layout -> jit(shard_map) -> one blocking call per batch.
  ``replicated_state``: every leaf of the state is the same on all devices (no finder needed)."""
  state = tx.init(params)
  marks = jax.tree.map(lambda _: False, state) if replicated_state else spmd.per_device_marks(state)
  step = spmd.sharded_step(mesh, body, marks, data_specs, donate=case.donate)
  placed = [tuple(spmd.put(a, mesh, s) for a, s in zip(b, data_specs)) for b in batches]
  return spmd.run_steps(step, _replicated(params, mesh), spmd.place_state(state, marks, mesh), placed,
                        check_donation=case.donate, progress=progress)


# ----------------------------------------------------------------------------- sfb
def run_sfb(case: Case, mesh, progress) -> Outcome:
  """SFB (Xie et al., arXiv:1511.08486, eq. 4): factored_value_and_grad + scale_by_sfb + SGD."""
  params, loss = models.make_problem(case.variant, case.dtype)
  batches = models.batches(case.steps)
  plan = sfb.plan(loss, params, *batches[0], num_devices=mesh.size, rule="always")
  grad_fn = sfb.factored_value_and_grad(loss, plan)
  sgd = lambda lr: optax.sgd(lr, momentum=0.9)  # noqa: E731
  # Accumulation goes after scale_by_sfb (sfb README): it sums the exchanged (replicated) gradients.
  after = (lambda lr: optax.MultiSteps(sgd(lr), case.accumulate).gradient_transformation()) if case.accumulate \
      else sgd
  tx = case.wrap(lambda lr: optax.chain(sfb.scale_by_sfb(AXIS), after(lr)), multi_steps=lambda t, _: t)

  def body(p, s, x, y):
    _, g = grad_fn(spmd.varying(p), x, y)
    return tx.update(g, s, p)

  sharded = _sharded_run(tx, body, params, batches, case, mesh, progress, replicated_state=True)
  ref = _reference("sgd", case, lambda: references.dense(
      loss, case.wrap(sgd, local_before=False), params, batches,
      before=case.before(), workers=mesh.size))
  return Outcome(sharded, ref, _host(params), _tol(case), bf16=case.dtype == jnp.bfloat16)


# ----------------------------------------------------------------------------- dho
def _fosi_like(dho2: bool):
  def run(case: Case, mesh, progress) -> Outcome:
    """FOSI (Sivan et al., ICLR 2024, Alg. 2) / DHO2 (arXiv:2505.00982); reference: ``dho.fosi``
    with ``axis_name=None`` on the global batch."""
    params, loss = models.make_problem(case.variant, case.dtype)
    batches = models.batches(case.steps)
    batch_loss = lambda p, b: loss(p, *b)  # noqa: E731
    if dho2:
      make = lambda lr: dho.dho2(case.base_optimizer(lr), batch_loss, axis_name=AXIS,  # noqa: E731
                                 num_shards=mesh.size, **FOSI_HP)
    else:
      make = lambda lr: dho.fosi(case.base_optimizer(lr), batch_loss, axis_name=AXIS, **FOSI_HP)  # noqa: E731
    tx = case.wrap(make, multi_steps=lambda t, k: dho.multi_steps(t, k, num_workers=mesh.size))

    def body(p, s, x, y):
      g = jax.grad(loss)(spmd.varying(p), x, y)
      return tx.update(g, s, p, batch=(x, y))

    sharded = _sharded_run(tx, body, params, batches, case, mesh, progress)
    ref_tx = case.wrap(lambda lr: dho.fosi(case.base_optimizer(lr), batch_loss, axis_name=None, **FOSI_HP),
                       local_before=False)
    ref = _reference("fosi", case, lambda: references.dense(
        loss, ref_tx, params, batches, extras=lambda x, y: {"batch": (x, y)}, before=case.before(),
        workers=mesh.size))
    return Outcome(sharded, ref, _host(params), _tol(case), bf16=case.dtype == jnp.bfloat16)
  return run


# ----------------------------------------------------------------------------- sign1bit
def _weights(valid: int, rows: int, scale: float):
  w = np.zeros(rows, np.float32)
  w[:valid] = scale
  return w


def _sign1bit_multi_steps(mesh):
  return lambda tx, k: sign1bit.multi_steps(tx, k, num_workers=mesh.size)


def run_one_bit_gc(case: Case, mesh, progress) -> Outcome:
  """1-bit GC-DL (Li, Skoglund, arXiv:2403.14716) on frc(W, d=2) partitions, p = 0.25, B = linf;
  reference: ``sign1bit.reference_decode`` of the local gradients computed on one device."""
  params, loss = models.make_problem("plain", case.dtype)
  alloc = sign1bit.allocation("frc", mesh.size, 2)
  n_parts = alloc.num_partitions
  sizes = UNEVEN_PARTITIONS[:n_parts] if case.uneven else (8,) * n_parts
  n = sum(sizes)
  steps = []   # per step: padded partitions [N, 8, ...] and the row weights n_k N / n per valid row
  for x, y in models.batches(case.steps, rows=8 * n_parts):
    x, y = x.reshape(n_parts, 8, -1), y.reshape(n_parts, 8)
    w = np.stack([_weights(s, 8, 8 * n_parts / n) for s in sizes])
    steps.append((x, y, w))

  def local_loss(p, px, py, pw):   # Σ over this worker's partitions of its weighted partition loss
    return sum(loss(p, px[j], py[j], pw[j]) for j in range(px.shape[0]))

  tx = case.wrap(lambda lr: sign1bit.one_bit_gc(lr, alloc, STRAGGLER_PROB, "linf", axis_name=AXIS, seed=SEED),
                 multi_steps=_sign1bit_multi_steps(mesh))

  def body(p, s, px, py, pw):
    g = jax.grad(local_loss)(spmd.varying(p), px[0], py[0], pw[0])
    return tx.update(g, s, p)

  state = tx.init(params)
  marks = spmd.per_device_marks(state)
  step = spmd.sharded_step(mesh, body, marks, (P(AXIS),) * 3, donate=case.donate)
  placed = [sign1bit.shard_partitions(d, alloc, mesh) for d in steps]
  sharded = spmd.run_steps(step, _replicated(params, mesh), spmd.place_state(state, marks, mesh), placed,
                           check_donation=case.donate, progress=progress)

  part_grad = jax.jit(jax.grad(lambda p, x, y, scale: loss(p, x, y) * scale))

  def local_grads(p, t):           # unpadded partitions, weight n_k N / n
    x, y, _ = steps[t]
    per_part = [part_grad(p, x[k, :s], y[k, :s], s * n_parts / n) for k, s in enumerate(sizes)]
    return [jax.tree.map(lambda *g: sum(g), *[per_part[k] for k in idx]) for idx in alloc.index]

  ref = _reference("one_bit_gc", case, lambda: references.per_worker_loop(
      params, local_grads, references.one_bit_gc_decoder(alloc, STRAGGLER_PROB, "linf", SEED), case,
      learning_rate=LR, clip=CLIP))
  return Outcome(sharded, ref, _host(params), _tol(case), bf16=case.dtype == jnp.bfloat16)


def run_ef_signsgd(case: Case, mesh, progress) -> Outcome:
  """EF-signSGD (Karimireddy et al., ICML 2019) over row shards, p = 0.25; reference in NumPy."""
  params, loss = models.make_problem("plain", case.dtype)
  w_count = mesh.size
  sizes = UNEVEN_ROWS[:w_count] if case.uneven else (8,) * w_count
  n = sum(sizes)
  steps = []
  for x, y in models.batches(case.steps, rows=8 * w_count):
    steps.append((x, y, np.concatenate([_weights(s, 8, 8 * w_count / n) for s in sizes])))

  tx = case.wrap(lambda lr: sign1bit.ef_signsgd(lr, STRAGGLER_PROB, axis_name=AXIS, num_workers=w_count, seed=SEED),
                 multi_steps=_sign1bit_multi_steps(mesh))

  def body(p, s, x, y, w):
    g = jax.grad(loss)(spmd.varying(p), x, y, w)
    return tx.update(g, s, p)

  sharded = _sharded_run(tx, body, params, steps, case, mesh, progress, data_specs=(P(AXIS),) * 3)
  shard_grad = jax.jit(jax.grad(lambda p, x, y, scale: loss(p, x, y) * scale))

  def local_grads(p, t):
    x, y, _ = steps[t]
    return [shard_grad(p, x[8 * k:8 * k + s], y[8 * k:8 * k + s], s * w_count / n) for k, s in enumerate(sizes)]

  ref = _reference("ef_signsgd", case, lambda: references.per_worker_loop(
      params, local_grads, references.ef_signsgd_decoder(w_count, STRAGGLER_PROB, SEED), case,
      learning_rate=LR, clip=CLIP))
  return Outcome(sharded, ref, _host(params), _tol(case), bf16=case.dtype == jnp.bfloat16)


# ----------------------------------------------------------------------------- vr_prox
def _dap_state_access(state):
  """get/set of the DapSvrgState inside the user's wrapped state (plain, chain, inject)."""
  if isinstance(state, vr_prox.DapSvrgState):
    return None, None
  if hasattr(state, "inner_state") and isinstance(state.inner_state, vr_prox.DapSvrgState):  # inject
    return (lambda s: s.inner_state), (lambda s, inner: s._replace(inner_state=inner))
  if isinstance(state, tuple) and isinstance(state[0], vr_prox.DapSvrgState):
    return (lambda s: s[0]), (lambda s, inner: (inner,) + tuple(s[1:]))
  raise TypeError(f"no DapSvrgState found in {type(state).__name__}")


def _vr(kind: str):
  server = "prox" if kind == "tap_svrg" else "add"
  variance_reduced = kind != "dap_sgd"

  def make(lr):
    prox = vr_prox.prox_l1(VR_L1)
    if kind == "dap_svrg":
      return vr_prox.dap_svrg(lr, prox, axis_name=AXIS, relaxation="auto")
    if kind == "dap_sgd":
      return vr_prox.dap_sgd(lr, prox, axis_name=AXIS, relaxation="auto")
    return vr_prox.tap_svrg(lr, prox, axis_name=AXIS, tap_prox="per_round")

  def run(case: Case, mesh, progress) -> Outcome:
    """DAP-SVRG / DAP-SGD / TAP-SVRG (round model, delay 0) through ``vr_prox.epoch_fn``;
    reference: ``references.vr_round`` on the unpadded shards."""
    params, example_loss = models.make_linear(case.variant == "l2", case.dtype)
    k_workers = mesh.size
    sizes = UNEVEN_ROWS[:k_workers] if case.uneven else (8,) * k_workers
    (x, y), = models.batches(1, rows=8 * k_workers, seed=3)
    mask = np.concatenate([_weights(s, 8, 1.0) for s in sizes])
    key = jax.random.PRNGKey(7)
    tx = case.wrap(make)
    state = tx.init(params)
    get_state, set_state = _dap_state_access(state)
    epoch = vr_prox.epoch_fn(example_loss, tx, rounds=VR_ROUNDS, batch_size=VR_BATCH, axis_name=AXIS,
                             variance_reduced=variance_reduced, get_state=get_state, set_state=set_state)
    step = spmd.fast_jit(jax.shard_map(epoch, mesh=mesh, in_specs=(P(), P(), P(AXIS), P(AXIS), P()),
                                       out_specs=(P(), P())), donate_argnums=(0, 1) if case.donate else ())
    data = (spmd.put(x, mesh, P(AXIS)), spmd.put(y, mesh, P(AXIS)))
    calls = [(data, spmd.put(mask, mesh, P(AXIS)), spmd.put(key, mesh, P()))] * VR_EPOCHS
    sharded = spmd.run_steps(step, _replicated(params, mesh), _replicated(state, mesh), calls,
                             check_donation=case.donate, progress=progress)
    shards = [(x[8 * k:8 * k + s], y[8 * k:8 * k + s]) for k, s in enumerate(sizes)]
    ref = _reference(kind, case, lambda: references.vr_round(
        example_loss, params, shards, l1=VR_L1, learning_rate=LR, rounds=VR_ROUNDS, epochs=VR_EPOCHS,
        batch_size=VR_BATCH, key=key, server=server, variance_reduced=variance_reduced,
        clip_after=CLIP if case.clip == "after" else None))
    return Outcome(sharded, ref, _host(params), _tol(case), bf16=case.dtype == jnp.bfloat16)
  return run


_DHO_SKIP = {"uneven": EQUAL_SHARDS}
_SIGN_SKIP = {"l2": MODEL_FREE, "tied": MODEL_FREE, "remat": MODEL_FREE, "scan": MODEL_FREE,
              "base_params": NO_BASE, "base_global": NO_BASE}
_VR_SKIP = {"tied": CONVEX, "remat": CONVEX, "scan": CONVEX, "clip_before": VR_CHAIN, "multisteps": VR_CHAIN,
            "base_params": NO_BASE, "base_global": NO_BASE}

ROWS = (
    Row("sfb", run_sfb, {"uneven": EQUAL_SHARDS, "base_params": NO_BASE, "base_global": NO_BASE}),
    Row("dho.fosi", _fosi_like(False), _DHO_SKIP),
    Row("dho.dho2", _fosi_like(True), _DHO_SKIP),
    Row("sign1bit.one_bit_gc", run_one_bit_gc, _SIGN_SKIP),
    Row("sign1bit.ef_signsgd", run_ef_signsgd, _SIGN_SKIP),
    Row("vr_prox.dap_svrg", _vr("dap_svrg"), _VR_SKIP),
    Row("vr_prox.dap_sgd", _vr("dap_sgd"), _VR_SKIP),
    Row("vr_prox.tap_svrg(per_round)", _vr("tap_svrg"), _VR_SKIP),
)
BY_NAME = {r.name: r for r in ROWS}
