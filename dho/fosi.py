"""FOSI and DHO2 as optax transformations.

The update, per step on the flattened (and, for DHO2, coordinate-sharded) gradient ``g``
([F] Alg. 2; ``V`` = rows of the r extreme eigenvectors, ``lr_i = 1/|lambda_i|``)::

    g1 = V^T V g;  g2 = g - g1
    vel = M(g1, vel)                       # momentum rule of the preset
    newt = V^T (lr * (V vel))              # Newton step in span V, |lambda| (saddle-free)
    d = base.update(g2) ;  d -= V^T V d    # base step kept out of span V
    u = c * d - alpha * newt               # c = clip(|lambda_max| / |lambda_k|, 1, c_max)

The curvature (``dho.curvature``: the Lanczos-pairs estimator, the refresh predicate and the one
``lax.cond`` that runs it) is refreshed inside ``update`` at 0-based calls ``W-1, W-1+T, ...``,
so there is one compiled step; the measured bytes of that step count the refresh branch (the
dearest) and XLA keeps both branches' buffers. The curvature batch is the optax extra argument
``batch`` of the same call. A caller may instead run the refresh by itself (``separate_refresh(tx)``):
on a scheduled call it runs ``refresh(state, params, batch)`` (or the same refresh one Lanczos
iteration per call: ``start``, ``iterate``, ``finish``) and then ``update(..., refresh=False)``, the
same arithmetic as the in-step refresh in smaller programs, which XLA compiles in less time each
(the harness's split; BUILD_NOTES "Compile time per program"). ``dho2(admm="consensus")`` is
consensus ADMM with its own constructor and state (``consensus_admm``, ``ConsensusState``).

State layout. ``init`` returns the global layout: the leaves that differ per device (DHO2's
coordinate slices, consensus ADMM's per-replica iterate, dual, velocity and base state) carry a
leading axis of size P (``num_shards``; 1 with ``axis_name=None``). ``state_specs`` finds them by
type anywhere in a chain and gives them ``P(axis_name)``; inside ``shard_map`` ``update`` takes and
returns each device's row.

References:
  [F]  H. Sivan, M. Gabel, A. Schuster. "FOSI: Hybrid First and Second Order Optimization",
       ICLR 2024 (arXiv:2302.08484). Alg. 1 (ESE), Alg. 2 / Eq. (2)-(4) (the update).
  [P1] "Accelerating Deep Neural Network Training via Distributed Hybrid Order Optimization"
       (DHO2 v1, arXiv:2505.00982): curvature partitioned over devices, MR-DHO2 (curvature
       computed concurrently and applied with a delay).
  [P2] "DHO2: Accelerating Distributed Hybrid Order Optimization via Model Parallelism and ADMM"
       (DHO2 v2) and its released code (github ShunxianGu/DHO2, ``DHO2_ADMM_v2.py``): the
       ADMM-like period rule and the v2 hyperparameters.
  [B]  S. Boyd et al. "Distributed Optimization and Statistical Learning via the Alternating
       Direction Method of Multipliers", Found. Trends ML 3(1), 2011, Sec. 7.1 (consensus ADMM,
       scaled form), used by ``admm="consensus"`` (our extension of [P2]).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax
from jax.flatten_util import ravel_pytree

from dho import axis, coordinatewise
from dho.curvature import LanczosPairs, Pairs, curvature_basis, empty_pairs, match_vma, maybe_refresh, refresh_due
from dho.lanczos import LanczosState, Layout, lanczos_dtype

MOMENTUM = ("heavy_ball", "ema", "nesterov", "none")
ADMM = (None, "reference", "consensus")
_NEVER = np.iinfo(np.int32).max


class FosiState(NamedTuple):
  """State of ``fosi`` / the inner state of ``dho2``.

  Attributes:
    count: number of previous ``update`` calls (int32).
    base_state: the base optimizer's state on the flattened parameter vector (its slice, DHO2).
    velocity: Newton-part momentum, (s,) (s = n unsharded, ceil(n/P) sharded).
    eigvecs: (r, s) extreme eigenvectors (rows), zero before the first refresh.
    inv_abs_eig: (r,) ``1/|lambda + shift|`` (0 for missing/dropped pairs).
    eigvals: (r,) Ritz values, order ``[l smallest asc, k largest asc]``.
    scale: () the base-step scale ``c``.
  """
  count: jax.Array
  base_state: Any
  velocity: jax.Array
  eigvecs: jax.Array
  inv_abs_eig: jax.Array
  eigvals: jax.Array
  scale: jax.Array

  @property
  def pairs(self) -> Pairs:
    return Pairs(self.eigvecs, self.inv_abs_eig, self.eigvals, self.scale)


class FullBaseState(NamedTuple):
  """``dho2(replicated_base=True)``: the base state on all n coordinates, the same on every device."""
  inner: Any


class Dho2State(NamedTuple):
  """State of ``dho2`` (coordinate-sharded curvature).

  Attributes:
    count: number of previous ``update`` calls.
    fosi: the FOSI state; per device (leading axis P): base_state (unless ``replicated_base``),
      velocity and the eigenvector slices.
    admm_disp: (s,) per device, ``admm="reference"``: sum of completed period displacements
      ``sum_j delta_j`` (= pi / sigma), else None.
    admm_anchor: (s,) per device, ``admm="reference"``: the period's anchor ``a``, else None.
    pending: ``Pairs`` computed but not yet active (``curvature_delay > 0``; eigvecs per device), or None.
    pending_at: call index from which ``pending`` becomes active (int32 max: none), or None.
  """
  count: jax.Array
  fosi: FosiState
  admm_disp: Any = None
  admm_anchor: Any = None
  pending: Any = None
  pending_at: Any = None

  def per_worker_fields(self):
    # With k = l = 0 the eigenvectors are empty (r = 0) and stay replicated: jit returns an empty
    # array replicated whatever its out_specs say, so a P(axis) spec would not survive a step.
    rows = ("fosi.eigvecs",) if jnp.size(self.fosi.eigvecs) else ()
    fields = ("fosi.velocity",) + rows
    if not isinstance(self.fosi.base_state, FullBaseState):
      fields += ("fosi.base_state",)
    if self.admm_disp is not None:
      fields += ("admm_disp", "admm_anchor")
    return fields + (("pending.eigvecs",) if self.pending is not None and rows else ())


class ConsensusState(NamedTuple):
  """State of ``consensus_admm`` (``dho2(admm="consensus")``).

  Attributes:
    count: number of previous ``update`` calls.
    fosi: FOSI state; ``velocity`` (n,) and ``base_state`` (on n) per replica (leading axis P),
      ``eigvecs`` the full (r, n) rows, identical on every device.
    admm_x: (n,) per replica: this replica's local iterate ``x_p`` (reset to params ``z`` at a
      period start).
    admm_dual: (n,) per replica: this replica's dual ``pi_p``.
  """
  count: jax.Array
  fosi: FosiState
  admm_x: jax.Array
  admm_dual: jax.Array

  def per_worker_fields(self):
    return ("fosi.velocity", "fosi.base_state", "admm_x", "admm_dual")


def _check_int(name, value, lo):
  if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < lo:
    raise ValueError(f"{name} must be an integer >= {lo}, got {value!r}")
  return int(value)


def _fosi_direction(g, pairs, velocity, base_state, theta, proj, base, vel_rule, alpha, dt):
  """FOSI's step ([F] Alg. 2, Eq. (2)-(4)): with U = ``pairs.eigvecs`` and ``proj(x) = U x`` (a psum when U is
  sharded), the Newton part −α · U^T diag(1/|λ|) U v on the momentum v of g1 = U^T U g, plus
  c · (base step on g − g1, projected out of span U). Returns (update, velocity, base_state)."""
  u_mat = pairs.eigvecs
  g1 = proj(g) @ u_mat
  velocity = vel_rule(g1, velocity)
  newton = (pairs.inv_abs_eig * proj(velocity)) @ u_mat
  d, base_state = base.update(g - g1, base_state, theta)
  d = d - proj(d) @ u_mat
  return (pairs.scale * d - alpha * newton).astype(dt), velocity, base_state


def _on_full_vector(base, layout, flat_params):
  """``replicated_base``: ``base`` as a transformation of this device's slice that runs the base on
  the full vector (all-gather of the slice, base on all n coordinates with the full params, as the
  reference [F] does) and returns its own slice of the step. Exact for any base."""
  def update(g_loc, state, theta_loc):
    del theta_loc
    d, inner = base.update(layout.gather(g_loc), state.inner, flat_params)
    return layout.own(d), FullBaseState(inner)
  return optax.GradientTransformation(lambda p: FullBaseState(base.init(p)), update)


def _check_coordinatewise(base, dtype):
  """Refuses a base that mixes coordinates when dho2 would run it on slices (issue 11, 2.6)."""
  culprit = coordinatewise.violation(base, dtype)
  if culprit is not None:
    raise ValueError(
        f"dho2: the base optimizer is not coordinate-wise (its update uses `{culprit}` across coordinates, "
        "e.g. a global norm as in clip_by_global_norm, a trust ratio, an RMS clip or noise). dho2 runs the base "
        "on each device's slice of ceil(n/P) coordinates, which would silently differ from FOSI. Pass "
        "dho2(..., replicated_base=True) to run the base on the full gathered vector (exact; n floats "
        "all-gathered per step and the full base state on every device), or use a coordinate-wise base "
        "(sgd, momentum, nesterov, adam, schedule-free, ...).")


def _check_rho(admm, admm_rho):
  """``admm_rho`` (the consensus penalty): required finite > 0 for ``admm="consensus"``, else None."""
  if admm != "consensus":
    if admm_rho is not None:
      raise ValueError(f"admm_rho is the penalty of admm='consensus' only (admm={admm!r}); "
                       "the reference rule uses admm_sigma")
    return None
  if admm_rho is None:
    raise ValueError("admm='consensus' needs admm_rho > 0 (the ADMM penalty; no default: it sets how "
                     "strongly the local steps are tied to the consensus point, on the loss's curvature scale)")
  if isinstance(admm_rho, bool) or not isinstance(admm_rho, (int, float, np.integer, np.floating)):
    raise ValueError(f"admm_rho must be a real number > 0, got {admm_rho!r}")
  if not (np.isfinite(admm_rho) and admm_rho > 0):
    raise ValueError(f"admm_rho must be a finite number > 0, got {admm_rho!r}")
  return float(admm_rho)


@dataclasses.dataclass(frozen=True)
class _Setup:
  """The validated, static part of a FOSI / DHO2 transformation."""
  base: optax.GradientTransformation
  loss_fn: Callable
  curvature: LanczosPairs
  warmup: int
  refresh_every: int
  alpha: Any
  momentum: str
  decay: Any
  axis_name: str | None
  num_shards: int
  dho2: bool = False
  replicated_base: bool = False
  admm: str | None = None
  admm_period: int | None = None
  admm_sigma: Any = 5e-9
  curvature_delay: int = 0

  @property
  def r(self) -> int:
    return self.curvature.k + self.curvature.l

  @property
  def sharded(self) -> bool:
    return self.axis_name is not None and self.dho2

  @property
  def sliced_base(self) -> bool:
    return self.sharded and not self.replicated_base

  def layout(self, params) -> Layout:
    return Layout.of_params(params, self.num_shards, self.axis_name, partitioned=self.dho2)

  def velocity_rule(self):
    beta = self.decay
    return {"ema": lambda g1, vel: (1.0 - beta) * g1 + beta * vel,
            "heavy_ball": lambda g1, vel: g1 + beta * vel,
            "nesterov": lambda g1, vel: (1.0 + beta) * g1 + beta * beta * vel,
            "none": lambda g1, vel: g1}[self.momentum]

  def due(self, count, refresh=None):
    """This call's refresh: the schedule (traced) when ``refresh`` is None, else the caller's bool."""
    return refresh_due(count, self.warmup, self.refresh_every) if refresh is None else refresh

  def refresh(self, count, params, batch, pairs, dt, extra_shift=0.0, refresh=None, estimate=None) -> Pairs:
    """``pairs`` after this call's refresh; ``estimate``: a thunk of the new pairs (default: the
    Lanczos ESE at ``params`` on ``batch``)."""
    estimate = estimate or (lambda: self.curvature.estimate(params, batch, dt, extra_shift))
    return maybe_refresh(self.due(count, refresh), estimate, pairs)


def _setup(base, loss_fn, *, k, l, m, refresh_every, warmup, alpha, scale_clip, momentum, decay, seed,
           eig_floor, eig_shift, axis_name, num_shards, dho2, lanczos_dtype_, **dho2_args) -> _Setup:
  """Validates the arguments shared by ``fosi``, ``dho2`` and ``consensus_admm``."""
  if not isinstance(base, optax.GradientTransformation):
    raise ValueError(f"base must be an optax.GradientTransformation, got {type(base).__name__}")
  if not callable(loss_fn):
    raise ValueError("loss_fn must be callable as loss_fn(params, batch)")
  k, l = _check_int("k", k, 0), _check_int("l", l, 0)
  m = 4 * (k + l) if m is None else _check_int("m", m, 1)
  if k + l > 0 and m < k + l:
    raise ValueError(f"m (Lanczos iterations) must be >= k + l = {k + l}, got m={m}")
  refresh_every = _check_int("refresh_every", refresh_every, 1)
  warmup = refresh_every if warmup is None else _check_int("warmup", warmup, 0)
  if momentum not in MOMENTUM:
    raise ValueError(f"momentum must be one of {MOMENTUM}, got {momentum!r}")
  for name, value, ok, rule in (("decay", decay, lambda v: 0.0 <= v < 1.0, "in [0, 1)"),
                                ("scale_clip", scale_clip, lambda v: v >= 1.0, ">= 1"),
                                ("eig_floor", eig_floor, lambda v: v >= 0, ">= 0"),
                                ("alpha", alpha, lambda v: v >= 0, ">= 0")):
    if isinstance(value, (int, float)) and not ok(value):
      raise ValueError(f"{name} must be {rule}, got {value}")
  num_shards = _check_int("num_shards", num_shards, 1)
  if axis_name is None and num_shards != 1:
    raise ValueError(f"num_shards={num_shards} needs an axis_name (None means one device)")
  curvature = LanczosPairs(loss_fn, k, l, m, seed, eig_floor, eig_shift, scale_clip, axis_name, num_shards,
                           partitioned=dho2, dtype=lanczos_dtype_)
  return _Setup(base, loss_fn, curvature, warmup, refresh_every, alpha, momentum, decay, axis_name, num_shards,
                dho2=dho2, **dho2_args)


def _init(setup: _Setup, params):
  """FosiState (``fosi``) or Dho2State in the global layout (per-device leaves: leading axis P)."""
  flat, _ = ravel_pytree(params)
  n, dt = flat.shape[0], flat.dtype
  if setup.r > n:
    raise ValueError(f"k + l = {setup.r} exceeds the number of parameters n = {n}")
  layout = setup.layout(params)
  s = layout.shard_size if setup.sharded else n
  if setup.sliced_base and setup.num_shards > 1:
    _check_coordinatewise(setup.base, dt)
  if setup.replicated_base:
    base_state = _on_full_vector(setup.base, layout, flat).init(flat)
  else:   # sliced: a placeholder of the right structure, rebuilt from the own slice at call 0
    base_state = setup.base.init(jnp.zeros((s,), dt) if setup.sharded else flat)
  count = jnp.zeros([], jnp.int32)
  fs = FosiState(count, base_state, jnp.zeros((s,), dt), *empty_pairs(setup.r, s, dt))
  if not setup.dho2:
    return fs
  pending, pending_at, disp, anchor = None, None, None, None
  if setup.curvature_delay > 0:
    pending, pending_at = fs.pairs, jnp.full([], _NEVER, jnp.int32)
  if setup.admm is not None:
    disp, anchor = jnp.zeros((s,), dt), jnp.zeros((s,), dt)
  return axis.stack(Dho2State(count, fs, disp, anchor, pending, pending_at), setup.num_shards)


def _refreshed(setup: _Setup, state, params, batch, dt, refresh=None, estimate=None):
  """(pairs, pending, pending_at) after this call's refresh (``refresh``: see ``_Setup.due``;
  ``estimate``: see ``_Setup.refresh``); with ``curvature_delay`` D the refresh fills ``pending``,
  active from call t + D (MR-DHO2 emulation, [P1])."""
  fs, count = (state.fosi, state.count) if setup.dho2 else (state, state.count)
  pending, pending_at = getattr(state, "pending", None), getattr(state, "pending_at", None)
  if setup.r == 0:
    return fs.pairs, pending, pending_at
  if setup.curvature_delay == 0:
    return setup.refresh(count, params, batch, fs.pairs, dt, refresh=refresh, estimate=estimate), pending, pending_at
  pending = setup.refresh(count, params, batch, pending, dt, refresh=refresh, estimate=estimate)
  due = setup.due(count, refresh)
  if due is not False:
    pending_at = jnp.where(due, count + setup.curvature_delay, pending_at)
  return fs.pairs, pending, pending_at


def _active_pairs(setup: _Setup, state, params, batch, dt, refresh=None):
  """(active pairs, pending, pending_at) after this call's refresh; with ``curvature_delay`` D the
  pairs of the snapshot at call t become active at call t + D (MR-DHO2 emulation, [P1])."""
  pairs, pending, pending_at = _refreshed(setup, state, params, batch, dt, refresh)
  if setup.r == 0 or setup.curvature_delay == 0:
    return pairs, pending, pending_at
  count = state.count
  active = count >= pending_at
  pairs = jax.tree.map(lambda a, b: jnp.where(active, a, b), pending, pairs)
  return pairs, pending, jnp.where(active, _NEVER, pending_at)


def _direction(setup: _Setup, g, fs, base_state, pairs, theta, layout, step_base, dt):
  """The FOSI direction once pairs are active (function ``hybrid``), the base step before
  (function ``plain``: V = 0, bit for bit). Returns (update, velocity, base_state)."""
  if setup.r == 0:
    d, base_state = step_base.update(g, base_state, theta)
    return d.astype(dt), fs.velocity, base_state

  def hybrid():
    return _fosi_direction(g, pairs, fs.velocity, base_state, theta, lambda x: layout.rsum(pairs.eigvecs @ x),
                           step_base, setup.velocity_rule(), setup.alpha, dt)

  def plain():
    d, new_base_state = step_base.update(g, base_state, theta)
    return d.astype(dt), fs.velocity, new_base_state
  return lax.cond(fs.count + 1 < setup.warmup + setup.curvature_delay, plain, hybrid)


def _update(setup: _Setup, updates, state, params, batch, refresh=None):
  """One FOSI / DHO2 step ([F] Alg. 2 on this device's slice, [P1]); ``admm="reference"`` adds the
  released v2 code's period rule ([P2]). ``refresh``: see ``_Setup.due``."""
  if setup.dho2:
    state = axis.local(state, "dho")
  fs = state.fosi if setup.dho2 else state
  count = state.count
  flat_p, unravel = ravel_pytree(params)
  dt = flat_p.dtype
  layout = setup.layout(params)
  pairs, pending, pending_at = _active_pairs(setup, state, params, batch, dt, refresh)
  g = layout.reduce(ravel_pytree(updates)[0].astype(dt))
  theta = layout.own(flat_p)
  step_base = _on_full_vector(setup.base, layout, flat_p) if setup.replicated_base else setup.base
  base_state = fs.base_state
  if setup.sliced_base:   # init ran outside shard_map: build the base state from this device's slice now
    base_state = lax.cond(count == 0, lambda: match_vma(setup.base.init(theta), base_state), lambda: base_state)
  disp, anchor = (state.admm_disp, state.admm_anchor) if setup.dho2 else (None, None)
  if setup.admm is not None:
    g = g + setup.admm_sigma * disp            # g_hat = g + pi, pi = sigma * sum(delta)
    anchor = jnp.where(count % setup.admm_period == 0, theta, anchor)
  u, velocity, base_state = _direction(setup, g, fs, base_state, pairs, theta, layout, step_base, dt)
  if setup.admm is not None:                   # end of period: x <- x + pi/sigma, pi += sigma (x - a)
    end = (count + 1) % setup.admm_period == 0
    new_disp = disp + (theta + u - anchor)
    disp, u = jnp.where(end, new_disp, disp), jnp.where(end, u + new_disp, u)
  new_count = optax.safe_increment(count)
  new_fs = FosiState(new_count, base_state, velocity, *pairs)
  new_updates = unravel(layout.gather(u))
  if setup.dho2:
    return new_updates, axis.unlocal(Dho2State(new_count, new_fs, disp, anchor, pending, pending_at))
  return new_updates, new_fs


def _require_axis(axis_name, name: str):
  """A clear error when ``update`` runs outside ``shard_map`` over ``axis_name`` (the default is "data")."""
  if axis_name is None:
    return
  try:
    axis.axis_size(axis_name)
  except NameError:
    raise ValueError(f"{name}: axis_name={axis_name!r} is not a mesh axis here; call update inside "
                     f"jax.shard_map over {axis_name!r}, or pass {name}(..., axis_name=None) for one "
                     "device") from None


def _refresh_only(setup: _Setup, state, params, batch, estimate=None):
  """This call's scheduled refresh by itself: the pairs ``update`` would compute at ``params`` on
  ``batch`` (or ``estimate()``'s), stored where it would keep them (the active pairs, or ``pending`` /
  ``pending_at`` with a ``curvature_delay``); ``count`` does not advance."""
  if setup.dho2:
    state = axis.local(state, "dho")
  fs = state.fosi if setup.dho2 else state
  dt = ravel_pytree(params)[0].dtype
  pairs, pending, pending_at = _refreshed(setup, state, params, batch, dt, refresh=True, estimate=estimate)
  new_fs = FosiState(fs.count, fs.base_state, fs.velocity, *pairs)
  if not setup.dho2:
    return new_fs
  return axis.unlocal(state._replace(fosi=new_fs, pending=pending, pending_at=pending_at))


def _host_count(count) -> int:
  """``count`` on the host (a global array's first addressable element: every device holds the same)."""
  if isinstance(count, jax.Array):
    count = count.addressable_data(0)
  return int(np.ravel(np.asarray(count))[0])


class SeparateRefresh(NamedTuple):
  """A ``fosi`` / ``dho2`` curvature refresh as its own function (``separate_refresh``), whole or
  one Lanczos iteration at a time.

  Attributes:
    due: ``state -> bool`` on the host: whether the next ``update`` call is a scheduled refresh
      (0-based call ``W-1, W-1+T, ...``; always False with ``k = l = 0``).
    refresh: ``(state, params, batch) -> state``, traced where ``update`` is (inside ``shard_map``
      over ``axis_name``): the refresh ``update`` would run on this call, nothing else. It is
      ``finish(state, lanczos, params)`` after ``iterations(params)`` times
      ``lanczos = iterate(lanczos, params, batch)`` from ``lanczos = start(params)``:
    start: ``params -> LanczosState``, the Lanczos start ([F] Alg. 1) in the global layout, outside
      ``shard_map`` like ``init`` (``state_specs`` of it places a ``ShardedLanczosState``'s slices).
    iterate: ``(lanczos, params, batch) -> lanczos``, traced where ``update`` is: one Lanczos
      iteration (one Hessian-vector product on ``batch``, the same every iteration).
    finish: ``(state, lanczos, params) -> state``, traced where ``update`` is: the Ritz pairs of the
      finished iteration, stored where ``refresh`` stores them.
    iterations: ``params -> int``, the number of ``iterate`` calls (``m``, capped at n).
  """
  due: Callable[[Any], bool]
  refresh: Callable[[Any, Any, Any], Any]
  start: Callable[[Any], LanczosState]
  iterate: Callable[[LanczosState, Any, Any], LanczosState]
  finish: Callable[[Any, LanczosState, Any], Any]
  iterations: Callable[[Any], int]


def _check_refresh(name: str, refresh):
  if refresh is None or isinstance(refresh, bool):
    return refresh
  if isinstance(refresh, np.bool_):
    return bool(refresh)
  raise ValueError(f"{name} update: refresh must be None (the schedule decides inside the step) or a Python bool "
                   f"(decided when the step is traced), got {refresh!r}")


def _transformation(setup: _Setup, name: str) -> optax.GradientTransformationExtraArgs:
  def update_fn(updates, state, params=None, *, batch=None, refresh=None, **extra_args):
    del extra_args
    _require_axis(setup.axis_name, name)
    refresh = _check_refresh(name, refresh)
    if params is None:
      raise ValueError(f"{name} update needs params (the HVP and the base step use them)")
    if setup.r > 0 and batch is None and refresh is not False:
      raise ValueError(f"{name} update needs the curvature batch: update(g, state, params, batch=...)")
    return _update(setup, updates, state, params, batch, refresh)

  def refresh_fn(state, params, batch):
    _require_axis(setup.axis_name, name)
    if setup.r > 0 and batch is None:
      raise ValueError(f"{name} refresh needs the curvature batch")
    return _refresh_only(setup, state, params, batch) if setup.r > 0 else state

  def due(state) -> bool:
    return setup.r > 0 and bool(refresh_due(_host_count(state.count), setup.warmup, setup.refresh_every))

  def iterate(lanczos, params, batch):
    _require_axis(setup.axis_name, name)
    lanczos = setup.curvature.iterate(axis.local(lanczos, f"{name} iterate"), params, batch)
    return axis.unlocal(lanczos)

  def finish(state, lanczos, params):
    _require_axis(setup.axis_name, name)
    result = axis.local(lanczos, f"{name} finish").result()
    dt = ravel_pytree(params)[0].dtype
    return _refresh_only(setup, state, params, None, lambda: setup.curvature.pairs(result, dt))

  update_fn.separate_refresh = SeparateRefresh(due, refresh_fn, setup.curvature.start, iterate, finish,
                                               setup.curvature.iterations)
  return optax.GradientTransformationExtraArgs(lambda params: _init(setup, params), update_fn)


def separate_refresh(tx: optax.GradientTransformation) -> SeparateRefresh:
  """The curvature refresh of ``tx`` (made by ``fosi`` / ``dho2``) as its own function, so that a
  caller can compile it apart from the step instead of the in-step ``lax.cond``: on each call where
  ``due(state)`` is True, run ``state = refresh(state, params, batch)`` and then
  ``tx.update(grads, state, params, batch=batch, refresh=False)``; on the other calls pass
  ``refresh=False`` too. The result is the in-step refresh's, since both evaluate the same functions on
  the same inputs (the Lanczos ESE of [F] Alg. 1 at the params of the call).

  ``refresh`` may also run one Lanczos iteration per program call, so that no program holds the
  HVP loop: ``lanczos = start(params)`` (host, global layout; place it with ``state_specs``),
  ``iterations(params)`` times ``lanczos = iterate(lanczos, params, batch)``, then
  ``state = finish(state, lanczos, params)`` (``SeparateRefresh``).

  Raises ValueError for any other transformation (``consensus_admm``, or ``fosi`` inside a chain:
  take the refresh of the ``fosi`` / ``dho2`` transformation itself).
  """
  found = getattr(getattr(tx, "update", None), "separate_refresh", None)
  if found is None:
    raise ValueError("separate_refresh needs the transformation returned by dho.fosi / dho.dho2 (without "
                     "admm='consensus', and not wrapped in optax.chain or similar: pass the inner one)")
  return found


# ---- consensus ADMM ([B] Sec. 7.1 scaled form, inexact local FOSI solves; our extension of [P2]) ----


def _consensus_init(setup: _Setup, params) -> ConsensusState:
  flat, _ = ravel_pytree(params)
  n, dt = flat.shape[0], flat.dtype
  if setup.r > n:
    raise ValueError(f"k + l = {setup.r} exceeds the number of parameters n = {n}")
  count = jnp.zeros([], jnp.int32)
  fs = FosiState(count, setup.base.init(flat), jnp.zeros((n,), dt), *empty_pairs(setup.r, n, dt))
  return axis.stack(ConsensusState(count, fs, flat, jnp.zeros((n,), dt)), setup.num_shards)


def _consensus_update(setup: _Setup, rho: float, state: ConsensusState, params, batch):
  """One local FOSI step of this replica; consensus at the end of each ``admm_period`` calls.

  ``z`` = params (replicated, moved only at consensus points); ``x_p``, ``pi_p`` per device.
  Local objective ``f_p(x) + pi_p^T x + (rho/2)||x - z||^2``; its gradient is taken at ``x_p``
  (a device-varying value, so no all-reduce). The incoming gradient (taken at ``z``) is unused.
  """
  state = axis.local(state, "dho")
  fs, count = state.fosi, state.count
  z, unravel = ravel_pytree(params)
  n, dt = z.shape[0], z.dtype
  layout = setup.layout(params)

  def full_rows():   # curvature of the mean loss at z, sharded Lanczos, shifted by rho; slices -> (r, n) rows
    new = setup.curvature.estimate(params, batch, dt, extra_shift=rho)
    vecs = new.eigvecs
    if layout.sharded:   # r*n floats all-gathered once per refresh
      vecs = layout.gather(vecs)
    return new._replace(eigvecs=vecs)
  pairs = fs.pairs
  if setup.r > 0:
    pairs = maybe_refresh(refresh_due(count, setup.warmup, setup.refresh_every), full_rows, pairs)
  x = jnp.where(count % setup.admm_period == 0, z, state.admm_x)     # period start: x_p <- z
  dual = state.admm_dual
  grad_x = ravel_pytree(jax.grad(setup.loss_fn)(unravel(x), batch))[0].astype(dt)
  step, velocity, base_state = _fosi_direction(grad_x + dual + rho * (x - z), pairs, fs.velocity, fs.base_state,
                                               x, lambda v: pairs.eigvecs @ v, setup.base, setup.velocity_rule(),
                                               setup.alpha, dt)
  x = x + step

  def sync():   # z = pmean(x_p + pi_p / rho); pi_p += rho (x_p - z); x_p <- z (one n-float all-reduce)
    w = x + dual / rho
    z_new = w if setup.axis_name is None else lax.pmean(w, setup.axis_name)
    return z_new - z, dual + rho * (x - z_new), z_new

  keep = (jnp.zeros_like(z), dual, x)
  u, dual, x = lax.cond((count + 1) % setup.admm_period == 0, lambda: match_vma(sync(), keep), lambda: keep)
  new_count = optax.safe_increment(count)
  new_fs = FosiState(new_count, base_state, velocity, *pairs)
  return unravel(u), axis.unlocal(ConsensusState(new_count, new_fs, x, dual))


def consensus_admm(base: optax.GradientTransformation, loss_fn: Callable, *, admm_rho, admm_period: int,
                   num_shards: int | None = None, mesh=None, axis_name="data", k: int = 16, l: int = 0,
                   m: int | None = None, refresh_every: int = 100, warmup: int = 1, alpha=0.1, scale_clip=3.0,
                   momentum: str = "ema", decay=0.9, seed: int = 0, eig_floor=0.0, eig_shift=0.0,
                   lanczos_dtype=None) -> optax.GradientTransformationExtraArgs:
  """Consensus ADMM with local FOSI steps (``dho2(admm="consensus")``; [B] Sec. 7.1, our extension
  of [P2]). Each replica p keeps its iterate ``x_p`` and dual ``pi_p`` (``ConsensusState``, per
  device) and takes ``admm_period`` = tau local FOSI steps on
  ``f_p(x) + pi_p^T x + (rho/2)||x - z||^2`` (gradient of ``loss_fn`` on its own ``batch`` at
  ``x_p``, no per-step reduction); after the tau-th, ``z = pmean(x_p + pi_p/rho)``,
  ``pi_p += rho (x_p - z)``, ``x_p <- z`` (one all-reduce of n floats per period). ``z`` is the
  replicated params: the updates are ``z_new - z`` at consensus calls and 0 otherwise. The
  gradient passed to ``update`` is ignored. Curvature: refreshed on the usual schedule at ``z`` by
  the sharded Lanczos on the mean loss, the (r, s) eigenvector slices all-gathered to (r, n) rows
  on every device; the Newton part uses ``1/|lambda + eig_shift + rho|`` (the local objective's
  Hessian ``H(z) + rho I``) and ``c`` comes from the same shifted values. Other arguments: ``dho2``.
  """
  rho = _check_rho("consensus", admm_rho)
  admm_period = _check_int("admm_period", admm_period, 1)
  setup = _setup(base, loss_fn, k=k, l=l, m=m, refresh_every=refresh_every, warmup=warmup, alpha=alpha,
                 scale_clip=scale_clip, momentum=momentum, decay=decay, seed=seed, eig_floor=eig_floor,
                 eig_shift=eig_shift, axis_name=axis_name, num_shards=_num_shards(num_shards, mesh, axis_name),
                 dho2=True, lanczos_dtype_=lanczos_dtype, admm="consensus", admm_period=admm_period)

  def update_fn(updates, state, params=None, *, batch=None, **extra_args):
    del updates
    if extra_args.get("refresh") is not None:
      raise ValueError("dho2(admm='consensus') refreshes inside its step (the refresh also gathers the "
                       "eigenvector rows); it takes no refresh argument")
    _require_axis(setup.axis_name, "consensus_admm")
    if params is None or batch is None:
      raise ValueError("dho2(admm='consensus') update needs params and the batch (local gradients are taken at "
                       "each replica's own iterate): update(g, state, params, batch=...)")
    return _consensus_update(setup, rho, state, params, batch)
  return optax.GradientTransformationExtraArgs(lambda params: _consensus_init(setup, params), update_fn)


def _num_shards(num_shards, mesh, axis_name) -> int:
  """P: ``num_shards``, else the size of ``axis_name`` on ``mesh``, else 1."""
  if num_shards is not None:
    return num_shards
  if mesh is not None and axis_name is not None:
    axes = (axis_name,) if isinstance(axis_name, str) else tuple(axis_name)
    return int(np.prod([mesh.shape[a] for a in axes]))
  return 1


def fosi(base: optax.GradientTransformation, loss_fn: Callable, *, k: int = 5, l: int = 0,
         m: int | None = None, refresh_every: int = 100, warmup: int | None = None, alpha=0.1,
         scale_clip=3.0, momentum: str = "heavy_ball", decay=0.9, seed: int = 0, eig_floor=0.0,
         eig_shift=0.0, axis_name="data", lanczos_dtype=None) -> optax.GradientTransformationExtraArgs:
  """FOSI ([F] Alg. 2) wrapping ``base`` (a full optax optimizer, learning rate included).

  Args:
    base: the base optimizer; it is initialised and applied on the flattened parameter vector.
    loss_fn: ``loss_fn(params, batch) -> scalar`` local mean loss (no collectives inside); the
      ESE uses its Hessian. ``batch`` arrives as the extra argument of ``update``.
    k, l: number of largest / smallest Ritz pairs; ``m`` Lanczos iterations (default 4(k+l)).
    refresh_every, warmup: T and W; refresh at 0-based calls W-1, W-1+T, ... (W defaults to T).
    alpha: Newton-part step size; scale_clip: c_max; momentum/decay: Newton momentum rule.
    seed: Lanczos start vector key ``PRNGKey(seed)`` (the same every refresh, as the reference).
    eig_floor: drop pairs with ``|lambda| < eig_floor * max|lambda|`` (0 = reference).
    eig_shift: ``lr_i = 1/|lambda_i + eig_shift|`` (the DHO2 code uses 5e-9; reference 0).
    axis_name: the mesh axis (default ``"data"``, as ``dho2``): ``update`` runs inside ``shard_map``
      on local gradients taken at ``pcast`` params; gradients and HVPs are ``pmean``-ed and the basis
      is replicated (the reference ``b_parallel``). None = one device, no collectives.
    lanczos_dtype: default float64 if x64 is enabled, else float32.

  Returns:
    ``GradientTransformationExtraArgs``; ``update(grads, state, params, batch=...)``.
  """
  return _transformation(_setup(base, loss_fn, k=k, l=l, m=m, refresh_every=refresh_every, warmup=warmup,
                                alpha=alpha, scale_clip=scale_clip, momentum=momentum, decay=decay, seed=seed,
                                eig_floor=eig_floor, eig_shift=eig_shift, axis_name=axis_name, num_shards=1,
                                dho2=False, lanczos_dtype_=lanczos_dtype), "fosi")


def fosi_adam(base, loss_fn, **kw):
  """Reference preset: EMA Newton momentum (no bias correction), ``c_max`` forced to 1."""
  kw.pop("scale_clip", None)
  return fosi(base, loss_fn, momentum="ema", scale_clip=1.0, **kw)


def fosi_momentum(base, loss_fn, **kw):
  """Reference preset: heavy-ball Newton momentum ``vel = g1 + beta vel``."""
  return fosi(base, loss_fn, momentum="heavy_ball", **kw)


def fosi_nesterov(base, loss_fn, **kw):
  """Reference preset: ``vel = (1+beta) g1 + beta^2 vel``."""
  return fosi(base, loss_fn, momentum="nesterov", **kw)


def fosi_sgd(base, loss_fn, **kw):
  """Reference preset: no Newton momentum."""
  return fosi(base, loss_fn, momentum="none", **kw)


def dho2(base: optax.GradientTransformation, loss_fn: Callable, *, num_shards: int | None = None,
         mesh=None, axis_name="data", k: int = 16, l: int = 0, m: int | None = None, refresh_every: int = 100,
         warmup: int = 1, alpha=0.1, scale_clip=3.0, momentum: str = "ema", decay=0.9, seed: int = 0,
         eig_floor=0.0, eig_shift=0.0, admm: str | None = None, admm_period: int | None = None,
         admm_sigma=5e-9, admm_rho=None, curvature_delay: int = 0, replicated_base: bool = False,
         lanczos_dtype=None):
  """DHO2 ([P1], [P2]): FOSI with the curvature sharded by parameter coordinate over ``axis_name``.

  Device p of the ``num_shards``-device axis owns coordinates ``[p*s, (p+1)*s)`` of the flattened
  parameters (``s = ceil(n/P)``, zero padding): its slices of the Lanczos basis (m x s), of the
  eigenvectors (r x s), of the velocity and of the base-optimizer state. The local gradients are
  reduce-scattered (``psum_scatter``/P), every projection onto span V is a ``psum`` of r partials,
  each device computes the update of its own coordinates and the update is all-gathered. Identical
  to ``fosi`` for coordinate-wise base optimizers (SGD, heavy ball, Nesterov, Adam, schedule-free).
  The base state is built from this device's slice of the (zero-padded) flattened parameters at
  the first ``update`` (``init`` runs outside ``shard_map`` and does not know the device), so a
  base whose state holds the parameters (``optax.contrib.schedule_free_sgd``: z = params) is exact.
  ``init`` refuses (``ValueError``) a base that is not coordinate-wise (``dho.coordinatewise``:
  a static dataflow check of its traced update; e.g. ``clip_by_global_norm``) unless
  ``replicated_base=True``.

  Args:
    warmup: W; the first refresh is at 0-based call W-1 (default 1: at the first call, as the released v2 code [P2]).
    num_shards: P, the size of ``axis_name`` (state shapes depend on it; 1 with ``axis_name=None``).
    mesh: alternatively, the mesh: ``num_shards = mesh.shape[axis_name]``.
    admm: None, ``"reference"`` or ``"consensus"``.
      ``"reference"``: the released v2 code's period rule ([P2]): every ``admm_period`` calls
      ``a <- x`` at the period start, ``g_hat = g + sigma * sum(delta)`` every step, at the period
      end ``x <- x_end + sum_j delta_j`` (``admm_sigma`` = sigma).
      ``"consensus"`` (``consensus_admm``; [B], our extension of [P2]): scaled-form consensus ADMM with inexact local
      solves. Each replica p keeps its own iterate ``x_p`` and dual ``pi_p`` in the state (per-device
      leaves) and takes ``admm_period`` = tau local FOSI steps on
      ``f_p(x) + pi_p^T x + (rho/2)||x - z||^2`` (``f_p``: ``loss_fn`` on its own ``batch``, gradient
      taken at ``x_p``, no per-step reduction); after the tau-th step ``z = pmean(x_p + pi_p/rho)``,
      ``pi_p += rho (x_p - z)``, ``x_p <- z`` (one all-reduce of n floats per period). ``z`` is the
      replicated ``params``: the returned updates are ``z_new - z`` at consensus calls and exactly 0
      otherwise, so params stay replicated. The gradient passed to ``update`` is ignored. Curvature:
      refreshed on the usual schedule at ``z`` (= params; every replica's iterate at a period start)
      by the sharded Lanczos on the mean loss over devices, then the (r, s) eigenvector slices are
      all-gathered to full (r, n) rows kept on every device (local steps project without
      communication; eigenvector memory r*n per device, the basis stays m*s). The Newton part uses
      ``1/|lambda + eig_shift + rho|``, the local objective's Hessian ``H(z) + rho I``, and ``c`` is
      taken from the same shifted values. Velocity and base-optimizer state are per replica (full n).
    admm_period: calls per period (tau), an integer >= 1; required when ``admm`` is set.
    admm_sigma: sigma of ``admm="reference"`` (unused by ``"consensus"``).
    admm_rho: rho > 0 of ``admm="consensus"`` (required there; an error with any other ``admm``).
    curvature_delay: D; pairs from the snapshot at call t are used from call t+D (MR-DHO2 [P1]).
    replicated_base: run the base optimizer on the full vector (as the reference [F] does): the slice of ``g2`` is
      all-gathered (s floats sent per device per step), the base runs on all n coordinates with the
      full params on every device (its state, n-sized, is replicated) and each device keeps its own
      slice of the step. Exact for any base (global-norm clipping, LAMB, ...); costs the base
      state's 1/P memory saving.
    Other arguments: see ``fosi``. ``init`` returns the global layout (per-device leaves with a
    leading axis of size P); ``state_specs`` places it.
  """
  common = dict(num_shards=_num_shards(num_shards, mesh, axis_name), axis_name=axis_name, k=k, l=l, m=m,
                refresh_every=refresh_every, warmup=warmup, alpha=alpha, scale_clip=scale_clip, momentum=momentum,
                decay=decay, seed=seed, eig_floor=eig_floor, eig_shift=eig_shift)
  if admm not in ADMM:
    raise ValueError(f"admm must be one of {ADMM}, got {admm!r}")
  if admm == "consensus":
    if curvature_delay:
      raise ValueError("admm='consensus' does not support curvature_delay > 0")
    if replicated_base:
      raise ValueError("replicated_base=True is for dho2's coordinate-sharded mode; with admm='consensus' each "
                       "replica already runs the base on the full vector")
    return consensus_admm(base, loss_fn, admm_rho=admm_rho, admm_period=admm_period, lanczos_dtype=lanczos_dtype,
                          **common)
  _check_rho(admm, admm_rho)
  curvature_delay = _check_int("curvature_delay", curvature_delay, 0)
  if curvature_delay >= _check_int("refresh_every", refresh_every, 1):
    raise ValueError(f"curvature_delay ({curvature_delay}) must be < refresh_every ({refresh_every})")
  if replicated_base and axis_name is None:
    raise ValueError("replicated_base=True is for dho2's coordinate-sharded mode (an axis_name); with "
                     "axis_name=None the base already runs on the full vector")
  common["num_shards"] = _check_int("num_shards", common["num_shards"], 1)
  setup = _setup(base, loss_fn, dho2=True, lanczos_dtype_=lanczos_dtype, replicated_base=replicated_base,
                 admm=admm, admm_period=_check_int("admm_period", admm_period, 1) if admm else None,
                 admm_sigma=admm_sigma, curvature_delay=curvature_delay, **common)
  return _transformation(setup, "dho2")


def state_specs(state, axis_name: str = axis.AXIS) -> Any:
  """PartitionSpecs for ``shard_map``: ``P(axis_name)`` on the leaves that differ per device
  (``Dho2State``: coordinate slices of base state, velocity, eigenvectors, ADMM vectors, pending
  eigenvectors; ``ConsensusState``: each replica's iterate, dual, velocity and base state;
  ``multi_steps``' accumulated gradients), which ``init`` stores with a leading axis of size P;
  ``P()`` elsewhere. Found by type anywhere in ``state`` (``optax.chain``, ``inject_hyperparams``,
  ``dho.multi_steps``); ``fosi``'s state is replicated."""
  return axis.state_specs(state, axis_name)


def _n_and_shard(n_or_params, num_shards: int):
  """(n, s): an int n is one contiguous vector (s = ceil(n/P)); params give their bucketed layout's
  s (``Layout.of_params``: ceil(n/P) plus at most one padding entry per bucket)."""
  if isinstance(n_or_params, (int, np.integer)):
    return int(n_or_params), -(-int(n_or_params) // num_shards)
  layout = Layout.of_params(n_or_params, num_shards)
  return layout.n, layout.shard_size


def payload_bytes(n, *, k: int, l: int = 0, m: int | None = None, num_shards: int = 1,
                  sharded: bool = True, refresh: bool = True, param_bytes: int = 4,
                  lanczos_bytes: int = 4, admm: str | None = None, consensus_step: bool = True,
                  replicated_base: bool = False) -> int:
  """Analytic bytes each device sends per step (``collective_bytes`` payload convention).

  ``n``: the parameter count (one contiguous vector, s = ceil(n/P)) or the params pytree (s of
  its bucketed layout, ``Layout.of_params``: what ``dho2`` uses). Sharded (``dho2``, P > 1): reduce-scatter of the gradient (P*s*pb), all-gather of the update
  slice (s*pb), 3 psums of r numbers (pb), with ``replicated_base`` the all-gather of the base's
  input slice (s*pb); a refresh adds, per Lanczos iteration, the all-gather of
  v (s*pb), the reduce-scatter of Hv (P*s*pb), and psums of 1 + 2m + 1 numbers (lb).
  Replicated basis (``fosi`` with an axis): all-reduce of the gradient (n*pb) and of each HVP.
  ``admm="consensus"`` (``dho2``): a local step sends nothing; a consensus step (``consensus_step``)
  all-reduces n floats (n*pb); a refresh adds the Lanczos bytes above plus the all-gather of the
  eigenvector slices (r*s*pb).
  """
  r = k + l
  n, s = _n_and_shard(n, num_shards)
  m = min(4 * r if m is None else m, n)
  if num_shards == 1:
    return 0
  if admm == "consensus":
    step = n * param_bytes if consensus_step else 0
    if refresh and r:
      step += m * (s * param_bytes + num_shards * s * param_bytes + (2 + 2 * m) * lanczos_bytes)
      step += r * s * param_bytes
    return step
  if not sharded:
    return n * param_bytes * (1 + (m if (refresh and r) else 0))
  step = num_shards * s * param_bytes + s * param_bytes + (3 * r * param_bytes if r else 0)
  if replicated_base:
    step += s * param_bytes
  if refresh and r:
    step += m * (s * param_bytes + num_shards * s * param_bytes + (2 + 2 * m) * lanczos_bytes)
  return step


def basis_bytes(n, m: int, num_shards: int = 1, dtype=None) -> int:
  """Lanczos basis bytes per device: ``m * s * itemsize``, ``s = ceil(n/P)`` for an int ``n``,
  the bucketed layout's shard size for a params pytree."""
  return int(m * _n_and_shard(n, num_shards)[1] * jnp.dtype(lanczos_dtype(dtype)).itemsize)
