"""FOSI and DHO2 as optax transformations.

References:
  [F]  H. Sivan, M. Gabel, A. Schuster. "FOSI: Hybrid First and Second Order Optimization",
       ICLR 2024 (arXiv:2302.08484). Alg. 1 (ESE), Alg. 2 / Eq. (2)-(4) (the update).
  [P1] DHO2 v1, arXiv:2505.00982: curvature partitioned over devices, "partial curvature" update,
       MR-DHO2 (curvature computed concurrently, applied with a delay).
  [P2] DHO2 v2 ("model parallelism and ADMM"), with its released code (ADMM-like period rule).

The update, per step on the flattened (and, for DHO2, coordinate-sharded) gradient ``g``
([F] Alg. 2; ``V`` = rows of the r extreme eigenvectors, ``lr_i = 1/|lambda_i|``)::

    g1 = V^T V g;  g2 = g - g1
    vel = M(g1, vel)                       # momentum rule of the preset
    newt = V^T (lr * (V vel))              # Newton step in span V, |lambda| (saddle-free)
    d = base.update(g2) ;  d -= V^T V d    # base step kept out of span V
    u = c * d - alpha * newt               # c = clip(|lambda_max| / |lambda_k|, 1, c_max)

The curvature pairs are refreshed by Lanczos ([F] Alg. 1) inside ``update`` with ``lax.cond``
(one compiled step; all devices take the same branch because the predicate comes from the
replicated ``count``) at 0-based calls ``W-1, W-1+T, ...`` (the reference's internal schedule).
The curvature batch is the optax extra argument ``batch`` of the same call, so the ESE sees current
data. ``lax.cond`` was chosen over a separate refresh program so the transformation is a plain
optax transformation usable in any loop; the cost is that the measured bytes of the compiled step
count the refresh branch (the dearest) and that XLA keeps both branches' buffers.

``dho2(admm="consensus")`` (spec 4 [I] (b), our extension) is a separate path: each replica keeps
its own iterate and dual in the state and takes local FOSI steps on its augmented local objective
without gradient reduction; params move only at the consensus all-reduce that ends each period
(a second ``lax.cond``). See ``dho2``.
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax
from jax.flatten_util import ravel_pytree

from dho import coordinatewise
from dho.lanczos import Layout, extreme_eigenpairs, lanczos, lanczos_dtype

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


class Pairs(NamedTuple):
  eigvecs: jax.Array
  inv_abs_eig: jax.Array
  eigvals: jax.Array
  scale: jax.Array


class FullBaseState(NamedTuple):
  """``dho2(replicated_base=True)``: the base state on all n coordinates, the same on every device."""
  inner: Any


class Dho2State(NamedTuple):
  """State of ``dho2``.

  Attributes:
    count: number of previous ``update`` calls.
    fosi: the FOSI state (coordinate-sharded leaves: base_state, velocity, eigvecs).
    admm_disp: (s,) sum of completed period displacements ``sum_j delta_j`` (= pi / sigma), or None.
    admm_anchor: (s,) the period's anchor ``a``, or None.
    pending: ``Pairs`` computed but not yet active (``curvature_delay > 0``), or None.
    pending_at: call index from which ``pending`` becomes active (int32 max: none), or None.
    admm_x: (n,) ``admm="consensus"`` only: this replica's local iterate ``x_p`` (per device),
      else None. At a period start it is reset to the (replicated) params ``z``.
    admm_dual: (n,) ``admm="consensus"`` only: this replica's dual ``pi_p`` (per device), else None.

  In consensus mode ``fosi.velocity`` (n,) and ``fosi.base_state`` (on n) are per-replica and
  ``fosi.eigvecs`` holds the full (r, n) eigenvectors, identical on every device (see ``dho2``).
  """
  count: jax.Array
  fosi: FosiState
  admm_disp: Any = None
  admm_anchor: Any = None
  pending: Any = None
  pending_at: Any = None
  admm_x: Any = None
  admm_dual: Any = None


def _check_int(name, value, lo):
  if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < lo:
    raise ValueError(f"{name} must be an integer >= {lo}, got {value!r}")
  return int(value)


def _fosi_direction(g, pairs, velocity, base_state, theta, proj, base, vel_rule, alpha, dt):
  """FOSI's step (spec §2.2): with U = ``pairs.eigvecs`` and ``proj(x) = U x`` (a psum when U is
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


def _match_vma(new, like):
  """pcast ``new``'s leaves to varying over the axes ``like``'s leaves vary over (cond branches)."""
  def varying(x):
    aval = jax.typeof(x)
    mat = getattr(aval, "mat", None)
    return set(getattr(mat, "varying", None) or getattr(aval, "vma", None) or ())

  def one(a, b):
    missing = tuple(sorted(varying(b) - varying(a)))
    return lax.pcast(a, missing, to="varying") if missing else a
  return jax.tree.map(one, new, like)


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


def _momentum(rule: str, beta):
  if rule == "ema":
    return lambda g1, vel: (1.0 - beta) * g1 + beta * vel
  if rule == "heavy_ball":
    return lambda g1, vel: g1 + beta * vel
  if rule == "nesterov":
    return lambda g1, vel: (1.0 + beta) * g1 + beta * beta * vel
  return lambda g1, vel: g1


def _build(base: optax.GradientTransformation, loss_fn: Callable, *, k, l, m, refresh_every, warmup,
           alpha, scale_clip, momentum, decay, seed, eig_floor, eig_shift, axis_name, num_shards,
           dho2_state, admm=None, admm_period=None, admm_sigma=5e-9, admm_rho=None, curvature_delay=0,
           replicated_base=False, lanczos_dtype_=None) -> optax.GradientTransformationExtraArgs:
  if not isinstance(base, optax.GradientTransformation):
    raise ValueError(f"base must be an optax.GradientTransformation, got {type(base).__name__}")
  if not callable(loss_fn):
    raise ValueError("loss_fn must be callable as loss_fn(params, batch)")
  k = _check_int("k", k, 0)
  l = _check_int("l", l, 0)
  r = k + l
  m = 4 * r if m is None else _check_int("m", m, 1)
  if r > 0 and m < r:
    raise ValueError(f"m (Lanczos iterations) must be >= k + l = {r}, got m={m}")
  refresh_every = _check_int("refresh_every", refresh_every, 1)
  warmup = refresh_every if warmup is None else _check_int("warmup", warmup, 0)
  if momentum not in MOMENTUM:
    raise ValueError(f"momentum must be one of {MOMENTUM}, got {momentum!r}")
  if isinstance(decay, (int, float)) and not 0.0 <= decay < 1.0:
    raise ValueError(f"decay must be in [0, 1), got {decay}")
  if isinstance(scale_clip, (int, float)) and scale_clip < 1.0:
    raise ValueError(f"scale_clip must be >= 1, got {scale_clip}")
  if isinstance(eig_floor, (int, float)) and eig_floor < 0:
    raise ValueError(f"eig_floor must be >= 0, got {eig_floor}")
  num_shards = _check_int("num_shards", num_shards, 1)
  if axis_name is None and num_shards != 1:
    raise ValueError(f"num_shards={num_shards} needs an axis_name (None means one device)")
  if admm not in ADMM:
    raise ValueError(f"admm must be one of {ADMM}, got {admm!r}")
  if admm is not None:
    admm_period = _check_int("admm_period", admm_period, 1)
  admm_rho = _check_rho(admm, admm_rho)
  curvature_delay = _check_int("curvature_delay", curvature_delay, 0)
  if curvature_delay >= refresh_every:
    raise ValueError(f"curvature_delay ({curvature_delay}) must be < refresh_every ({refresh_every})")
  if admm == "consensus" and curvature_delay:
    raise ValueError("admm='consensus' does not support curvature_delay > 0")
  consensus = admm == "consensus"
  sharded = axis_name is not None and dho2_state
  if replicated_base and (not sharded or consensus):
    raise ValueError("replicated_base=True is for dho2's coordinate-sharded mode (an axis_name, admm not "
                     "'consensus'); elsewhere the base already runs on the full vector")
  sliced_base = sharded and not consensus and not replicated_base
  vel_rule = _momentum(momentum, decay)

  def layout_for(n):
    return Layout(n, num_shards, axis_name, partitioned=dho2_state)

  def local_size(n):
    return layout_for(n).shard_size if sharded else n

  def init_fn(params):
    flat, _ = ravel_pytree(params)
    n = flat.shape[0]
    if r > n:
      raise ValueError(f"k + l = {r} exceeds the number of parameters n = {n}")
    if consensus:
      return consensus_init(flat)
    s = local_size(n)
    dt = flat.dtype
    if sliced_base and num_shards > 1:
      _check_coordinatewise(base, dt)
    if replicated_base:
      base_state = _on_full_vector(base, layout_for(n), flat).init(flat)
    else:   # sliced: a placeholder of the right structure, rebuilt from the own slice at call 0
      base_state = base.init(jnp.zeros((s,), dt) if sharded else flat)
    fs = FosiState(
        count=jnp.zeros([], jnp.int32),
        base_state=base_state,
        velocity=jnp.zeros((s,), dt),
        eigvecs=jnp.zeros((r, s), dt),
        inv_abs_eig=jnp.zeros((r,), dt),
        eigvals=jnp.zeros((r,), dt),
        scale=jnp.ones([], dt))
    if not dho2_state:
      return fs
    pending = pending_at = disp = anchor = None
    if curvature_delay > 0:
      pending = Pairs(fs.eigvecs, fs.inv_abs_eig, fs.eigvals, fs.scale)
      pending_at = jnp.full([], _NEVER, jnp.int32)
    if admm is not None:
      disp, anchor = jnp.zeros((s,), dt), jnp.zeros((s,), dt)
    return Dho2State(fs.count, fs, disp, anchor, pending, pending_at)

  def refresh(params, batch, dt, shift=eig_shift):
    """Lanczos ESE at ``params`` on ``batch`` -> new ``Pairs`` ([F] Alg. 1, Eq. (3)).

    ``shift`` is added to the Ritz values for ``1/|lambda + shift|`` and ``c`` (default eig_shift)."""
    res = curvature_basis(loss_fn, params, batch, m=m, seed=seed, axis_name=axis_name, num_shards=num_shards,
                          partitioned=dho2_state, dtype=lanczos_dtype_)
    vals, vecs, ok = extreme_eigenpairs(res.tridiag, res.basis, k, l, res.valid_len)
    if not (isinstance(eig_floor, (int, float)) and eig_floor == 0):
      ok = ok & (jnp.abs(vals) >= eig_floor * jnp.max(jnp.abs(vals)))
    absval = jnp.abs(vals + shift)
    inv = jnp.where(ok & (absval > 0), 1.0 / jnp.where(absval > 0, absval, 1.0), 0.0)
    if k > 0:
      lam_max, lam_k = absval[-1], absval[l]
      good = ok[-1] & ok[l] & (lam_k > 0)
      c = jnp.where(good, jnp.clip(lam_max / jnp.where(good, lam_k, 1.0), 1.0, scale_clip), 1.0)
    else:
      c = jnp.ones([], vals.dtype)
    vecs = jnp.where(ok[:, None], vecs, 0.0)
    return Pairs(vecs.astype(dt), inv.astype(dt), jnp.where(ok, vals, 0.0).astype(dt), c.astype(dt))

  def update_fn(updates, state, params=None, *, batch=None, **extra_args):
    del extra_args
    if params is None:
      raise ValueError("fosi/dho2 update needs params (the HVP and the base step use them)")
    if consensus:
      return consensus_update(state, params, batch)
    if r > 0 and batch is None:
      raise ValueError("fosi/dho2 update needs the curvature batch: update(g, state, params, batch=...)")
    fs = state.fosi if dho2_state else state
    count = state.count
    flat_g, _ = ravel_pytree(updates)
    flat_p, unravel = ravel_pytree(params)
    n, dt = flat_p.shape[0], flat_p.dtype
    layout = layout_for(n)
    pairs = Pairs(fs.eigvecs, fs.inv_abs_eig, fs.eigvals, fs.scale)
    pending, pending_at = (state.pending, state.pending_at) if dho2_state else (None, None)
    if r > 0:
      due = (count + 1 >= warmup) & ((count + 1 - warmup) % refresh_every == 0)
      like = pairs if curvature_delay == 0 else pending
      fresh = lambda: _match_vma(refresh(params, batch, dt), like)
      if curvature_delay == 0:
        pairs = lax.cond(due, fresh, lambda: pairs)
      else:  # MR-DHO2 emulation: pairs of the snapshot at call t become active at call t + D
        pending = lax.cond(due, fresh, lambda: pending)
        pending_at = jnp.where(due, count + curvature_delay, pending_at)
        active = count >= pending_at
        pairs = jax.tree.map(lambda a, b: jnp.where(active, a, b), pending, pairs)
        pending_at = jnp.where(active, _NEVER, pending_at)

    g = layout.reduce(flat_g.astype(dt))
    theta = layout.own(flat_p)
    step_base = _on_full_vector(base, layout, flat_p) if replicated_base else base
    base_state = fs.base_state
    if sliced_base:   # init ran outside shard_map: build the base state from this device's slice now
      base_state = lax.cond(count == 0, lambda: _match_vma(base.init(theta), base_state), lambda: base_state)
    disp, anchor = (state.admm_disp, state.admm_anchor) if dho2_state else (None, None)
    if admm is not None:
      g = g + admm_sigma * disp            # g_hat = g + pi, pi = sigma * sum(delta)
      anchor = jnp.where(count % admm_period == 0, theta, anchor)
    if r > 0:
      def hybrid():
        return _fosi_direction(g, pairs, fs.velocity, base_state, theta,
                               lambda x: layout.rsum(pairs.eigvecs @ x), step_base, vel_rule, alpha, dt)

      def plain():   # no pairs yet (V = 0): the base step exactly, bit for bit
        d, new_base_state = step_base.update(g, base_state, theta)
        return d.astype(dt), fs.velocity, new_base_state
      u, velocity, base_state = lax.cond(count + 1 < warmup + curvature_delay, plain, hybrid)
    else:
      velocity = fs.velocity
      u, base_state = step_base.update(g, base_state, theta)
      u = u.astype(dt)
    if admm is not None:                   # end of period: x <- x + pi/sigma, pi += sigma (x - a)
      end = (count + 1) % admm_period == 0
      new_disp = disp + (theta + u - anchor)
      disp = jnp.where(end, new_disp, disp)
      u = jnp.where(end, u + new_disp, u)
    new_count = optax.safe_increment(count)
    new_fs = FosiState(new_count, base_state, velocity, *pairs)
    new_updates = unravel(layout.gather(u))
    if dho2_state:
      return new_updates, Dho2State(new_count, new_fs, disp, anchor, pending, pending_at)
    return new_updates, new_fs

  # ---- admm="consensus" ([P2] as read in spec 4 [I] (b)) -------------------------------------------
  def consensus_init(flat):
    n, dt = flat.shape[0], flat.dtype
    fs = FosiState(
        count=jnp.zeros([], jnp.int32),
        base_state=base.init(flat),             # per replica, full n (local steps diverge)
        velocity=jnp.zeros((n,), dt),           # per replica
        eigvecs=jnp.zeros((r, n), dt),          # full rows, identical on every device
        inv_abs_eig=jnp.zeros((r,), dt),
        eigvals=jnp.zeros((r,), dt),
        scale=jnp.ones([], dt))
    return Dho2State(fs.count, fs, admm_x=flat, admm_dual=jnp.zeros((n,), dt))

  def consensus_update(state, params, batch):
    """One local FOSI step of this replica; consensus at the end of each ``admm_period`` calls.

    ``z`` = params (replicated, moved only at consensus points); ``x_p``, ``pi_p`` per device.
    Local objective ``f_p(x) + pi_p^T x + (rho/2)||x - z||^2``; its gradient is taken at ``x_p``
    (a device-varying value, so no all-reduce). The incoming gradient (taken at ``z``) is unused.
    """
    if batch is None:
      raise ValueError("dho2(admm='consensus') update needs the batch (local gradients are taken at "
                       "each replica's own iterate): update(g, state, params, batch=...)")
    fs, count = state.fosi, state.count
    flat_p, unravel = ravel_pytree(params)
    n, dt = flat_p.shape[0], flat_p.dtype
    layout = layout_for(n)
    pairs = Pairs(fs.eigvecs, fs.inv_abs_eig, fs.eigvals, fs.scale)
    if r > 0:   # curvature of the mean loss at z, sharded Lanczos; shifted by rho (the penalty's Hessian)
      due = (count + 1 >= warmup) & ((count + 1 - warmup) % refresh_every == 0)

      def fresh():
        new = refresh(params, batch, dt, shift=eig_shift + admm_rho)
        vecs = new.eigvecs
        if layout.sharded:   # slices (r, s) -> full rows (r, n) on every device: r*n floats gathered
          vecs = lax.all_gather(vecs, axis_name, axis=1, tiled=True, to="invarying")[:, :n]
        return _match_vma(new._replace(eigvecs=vecs), pairs)
      pairs = lax.cond(due, fresh, lambda: pairs)

    z = flat_p
    x = jnp.where(count % admm_period == 0, z, state.admm_x)     # period start: x_p <- z
    dual = state.admm_dual
    grad_x = ravel_pytree(jax.grad(loss_fn)(unravel(x), batch))[0].astype(dt)
    g = grad_x + dual + admm_rho * (x - z)
    step, velocity, base_state = _fosi_direction(g, pairs, fs.velocity, fs.base_state, x,
                                                 lambda v: pairs.eigvecs @ v,   # full rows: no collective
                                                 base, vel_rule, alpha, dt)
    x = x + step

    def sync():   # z = pmean(x_p + pi_p / rho); pi_p += rho (x_p - z); x_p <- z (one n-float all-reduce)
      w = x + dual / admm_rho
      z_new = w if axis_name is None else lax.pmean(w, axis_name)
      return z_new - z, dual + admm_rho * (x - z_new), z_new

    keep = (jnp.zeros_like(z), dual, x)
    u, dual, x = lax.cond((count + 1) % admm_period == 0, lambda: _match_vma(sync(), keep), lambda: keep)
    new_count = optax.safe_increment(count)
    new_fs = FosiState(new_count, base_state, velocity, *pairs)
    return unravel(u), Dho2State(new_count, new_fs, admm_x=x, admm_dual=dual)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def curvature_basis(loss_fn: Callable, params, batch, *, m: int, seed: int = 0, axis_name=None,
                    num_shards: int = 1, partitioned: bool = True, dtype=None):
  """The ESE of a refresh ([F] Alg. 1): ``m`` Lanczos iterations on the Hessian of ``loss_fn`` at
  ``params`` on ``batch`` (mean over ``axis_name`` when set), from the start vector ``PRNGKey(seed)``.

  ``partitioned`` (``dho2``, [P1]): the HVP's input is all-gathered from slices and its output
  reduce-scattered, so the basis is this device's (m, ceil(n/P)) slice; otherwise (``fosi``, the
  reference ``b_parallel``) the HVP is ``pmean``-ed and the basis is the full (m, n) on every device.
  Returns ``LanczosResult``; ``fosi``/``dho2`` call it at each refresh, and it is public so the
  basis a refresh builds can be measured on a given model.
  """
  flat, unravel = ravel_pytree(params)
  n, dt = flat.shape[0], flat.dtype
  layout = Layout(n, num_shards, axis_name, partitioned=partitioned)
  p_var = params if axis_name is None else lax.pcast(params, axis_name, to="varying")
  grad_flat = lambda q: ravel_pytree(jax.grad(loss_fn)(q, batch))[0]

  def hvp_loc(v_loc):
    tangent = unravel(layout.gather(v_loc.astype(dt)))
    if axis_name is not None:
      tangent = lax.pcast(tangent, axis_name, to="varying")
    return layout.reduce(jax.jvp(grad_flat, (p_var,), (tangent,))[1])

  return lanczos(hvp_loc, n, m, jax.random.PRNGKey(seed), axis_name=axis_name if layout.sharded else None,
                 num_shards=num_shards, dtype=dtype)


def fosi(base: optax.GradientTransformation, loss_fn: Callable, *, k: int = 5, l: int = 0,
         m: int | None = None, refresh_every: int = 100, warmup: int | None = None, alpha=0.1,
         scale_clip=3.0, momentum: str = "heavy_ball", decay=0.9, seed: int = 0, eig_floor=0.0,
         eig_shift=0.0, axis_name=None, lanczos_dtype=None) -> optax.GradientTransformationExtraArgs:
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
    axis_name: None = one device. Set (inside ``shard_map``, local gradients at ``pcast`` params):
      gradients and HVPs are ``pmean``-ed and the basis is replicated (the reference ``b_parallel``).
    lanczos_dtype: default float64 if x64 is enabled, else float32.

  Returns:
    ``GradientTransformationExtraArgs``; ``update(grads, state, params, batch=...)``.
  """
  return _build(base, loss_fn, k=k, l=l, m=m, refresh_every=refresh_every, warmup=warmup, alpha=alpha,
                scale_clip=scale_clip, momentum=momentum, decay=decay, seed=seed, eig_floor=eig_floor,
                eig_shift=eig_shift, axis_name=axis_name, num_shards=1, dho2_state=False,
                lanczos_dtype_=lanczos_dtype)


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
    warmup: W; the first refresh is at 0-based call W-1 (default 1: at the first call, as [C2]).
    num_shards: P, the size of ``axis_name`` (state shapes depend on it; 1 with ``axis_name=None``).
    mesh: alternatively, the mesh: ``num_shards = mesh.shape[axis_name]``.
    admm: None, ``"reference"`` or ``"consensus"``.
      ``"reference"``: the released v2 code's period rule ([P2]): every ``admm_period`` calls
      ``a <- x`` at the period start, ``g_hat = g + sigma * sum(delta)`` every step, at the period
      end ``x <- x_end + sum_j delta_j`` (``admm_sigma`` = sigma).
      ``"consensus"`` (our extension, spec 4 [I] (b)): scaled-form consensus ADMM with inexact local
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
    replicated_base: run the base optimizer on the full vector (spec 5.3): the slice of ``g2`` is
      all-gathered (s floats sent per device per step), the base runs on all n coordinates with the
      full params on every device (its state, n-sized, is replicated) and each device keeps its own
      slice of the step. Exact for any base (global-norm clipping, LAMB, ...); costs the base
      state's 1/P memory saving.
    Other arguments: see ``fosi``. ``init`` returns the per-device state (``s``-sized slices);
    ``sharded_leaves`` marks which leaves differ per device.
  """
  if num_shards is None:
    if mesh is not None and axis_name is not None:
      axes = (axis_name,) if isinstance(axis_name, str) else tuple(axis_name)
      num_shards = int(np.prod([mesh.shape[a] for a in axes]))
    else:
      num_shards = 1
  return _build(base, loss_fn, k=k, l=l, m=m, refresh_every=refresh_every, warmup=warmup, alpha=alpha,
                scale_clip=scale_clip, momentum=momentum, decay=decay, seed=seed, eig_floor=eig_floor,
                eig_shift=eig_shift, axis_name=axis_name, num_shards=num_shards, dho2_state=True,
                admm=admm, admm_period=admm_period, admm_sigma=admm_sigma, admm_rho=admm_rho,
                curvature_delay=curvature_delay, replicated_base=replicated_base, lanczos_dtype_=lanczos_dtype)


def sharded_leaves(state) -> Any:
  """Bool tree: True on ``Dho2State`` leaves that differ per device (one slice or replica each).

  Coordinate-sharded modes: base state (unless ``replicated_base``), velocity, eigenvector slices,
  ADMM vectors. Consensus mode
  (``admm_x`` set): the replica's iterate and dual, velocity and base state; the full eigenvectors,
  eigenvalues, scale and count are replicated."""
  false = lambda t: jax.tree.map(lambda _: False, t)
  true = lambda t: jax.tree.map(lambda _: True, t)
  if isinstance(state, FosiState):
    return false(state)
  fs = state.fosi
  if state.admm_x is not None:
    return Dho2State(count=False, fosi=FosiState(False, true(fs.base_state), True, False, False, False, False),
                     admm_x=True, admm_dual=True)
  base_marks = false(fs.base_state) if isinstance(fs.base_state, FullBaseState) else true(fs.base_state)
  return Dho2State(
      count=False,
      fosi=FosiState(False, base_marks, True, True, False, False, False),
      admm_disp=true(state.admm_disp), admm_anchor=true(state.admm_anchor),
      pending=None if state.pending is None else Pairs(True, False, False, False),
      pending_at=false(state.pending_at))


def state_specs(state, axis_name="data") -> Any:
  """PartitionSpec tree: ``P(axis_name)`` on sharded leaves, stored with a leading axis of size P
  (device p holds its slice at index p), ``P()`` elsewhere."""
  return jax.tree.map(lambda s: jax.P(axis_name) if s else jax.P(), sharded_leaves(state))


def payload_bytes(n: int, *, k: int, l: int = 0, m: int | None = None, num_shards: int = 1,
                  sharded: bool = True, refresh: bool = True, param_bytes: int = 4,
                  lanczos_bytes: int = 4, admm: str | None = None, consensus_step: bool = True,
                  replicated_base: bool = False) -> int:
  """Analytic bytes each device sends per step (``collective_bytes`` payload convention).

  Sharded (``dho2``, P > 1): reduce-scatter of the gradient (P*s*pb), all-gather of the update
  slice (s*pb), 3 psums of r numbers (pb), with ``replicated_base`` the all-gather of the base's
  input slice (s*pb); a refresh adds, per Lanczos iteration, the all-gather of
  v (s*pb), the reduce-scatter of Hv (P*s*pb), and psums of 1 + 2m + 1 numbers (lb).
  Replicated basis (``fosi`` with an axis): all-reduce of the gradient (n*pb) and of each HVP.
  ``admm="consensus"`` (``dho2``): a local step sends nothing; a consensus step (``consensus_step``)
  all-reduces n floats (n*pb); a refresh adds the Lanczos bytes above plus the all-gather of the
  eigenvector slices (r*s*pb).
  """
  r = k + l
  m = min(4 * r if m is None else m, n)
  if num_shards == 1:
    return 0
  s = -(-n // num_shards)
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


def basis_bytes(n: int, m: int, num_shards: int = 1, dtype=None) -> int:
  """Lanczos basis bytes per device: ``m * ceil(n/P) * itemsize``."""
  return int(m * (-(-n // num_shards)) * jnp.dtype(lanczos_dtype(dtype)).itemsize)
