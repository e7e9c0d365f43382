"""1-bit gradient coding (1-bit GC-DL) and its baselines as optax transformations.

C. Li, M. Skoglund, *Distributed Learning based on 1-Bit Gradient Coding in the Presence of
Stragglers*, arXiv:2403.14716 (the paper's full text was not available; the method is
reconstructed from its abstract and the authors' line of work on stochastic gradient coding).

One step t, every worker i of W (a device on ``axis_name``) holding partitions S_i:

  1. stragglers: R_t = {i : ξ_i = 1}, ξ ~ Bernoulli(1 − p)^W from ``fold_in(k_t, 0)`` (the same
     mask on every device), k_t = ``fold_in(key, count)``;
  2. encoding: c_i = Σ_{k∈S_i} ∇f_k / (d (1 − p))                (SGC's weights, Bitar et al.)
  3. quantizer: q_ij = ±1 with P(+1) = (1 + c_ij / B)/2, key ``fold_in(fold_in(k_t, 1), i)``;
  4. exchange: ``jnp.packbits`` → one ``all_gather`` of uint8[⌈D/8⌉] per worker;
  5. decoding: ĝ_t = (B/N) Σ_{i∈R_t} q_i  (fixed N and d(1−p), never |R_t|: E[ĝ_t] = ∇F).

``update`` receives the worker's *local* gradient Σ_{k∈S_i} ∇f_k (differentiate at
``lax.pcast(params, axis, to="varying")`` inside ``shard_map``) and returns ĝ_t, identical on every
device; chain a learning rate for w_{t+1} = w_t − η ĝ_t (``one_bit_gc`` does).

Baselines with the same contract: ``sgc`` (real-valued SGC, fp32 payload),
``ignore_stragglers`` (d = 1, average of the |R_t| received gradients, real or 1-bit),
``signsgd_majority`` (Bernstein et al. 2019: majority vote of signs) and ``ef_signsgd``
(Karimireddy et al. 2019: scaled sign with per-worker error feedback).

Every message is all-gathered (``to="invarying"``) so every device decodes the same ĝ_t.
Stragglers take part in the collective physically (SPMD); their rows are zeroed by the mask.

References:
  Li, Skoglund, `Distributed Learning based on 1-Bit Gradient Coding in the Presence of
  Stragglers <https://arxiv.org/abs/2403.14716>`_, 2024

  Bitar, Wootters, El Rouayheb, Stochastic Gradient Coding for Straggler Mitigation in
  Distributed Learning, IEEE JSAIT 2020

  Bernstein, Zhao, Azizzadenesheli, Anandkumar, `signSGD with Majority Vote is Communication
  Efficient and Fault Tolerant <https://arxiv.org/abs/1810.05291>`_, ICLR 2019

  Karimireddy, Rebjock, Stich, Jaggi, `Error Feedback Fixes SignSGD and other Gradient
  Compression Schemes <https://arxiv.org/abs/1901.09847>`_, ICML 2019
"""
from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax import lax
from jax.flatten_util import ravel_pytree

from sign1bit import axis
from sign1bit.allocation import Allocation
from sign1bit.quantize import pack, stochastic_sign, unpack

STRAGGLER_MODELS = ("bernoulli", "fixed")
WIRES = ("packed", "int8_psum")


class OneBitGCState(NamedTuple):
  """State of every scheme but EF-signSGD.

  Attributes:
    count: steps taken (int32); the step key is ``fold_in(key, count)``.
    key: raw PRNG key data, uint32 (replicated; ``jax.random.key_data`` of ``key(seed)``, so the
      state is a plain array tree that any harness can place, checkpoint and donate).
    active_total: Σ_t |R_t| (int32, replicated); uplink bits = bits per worker × active_total.
    last_active: |R_t| of the last step.
    clip_count: coordinates this worker clipped (|c| > B) so far, counted on steps it reported
      (int32, **per worker**: stored with a leading axis of size W, ``state_specs`` gives it
      ``P(axis)``).
  """
  count: jax.Array
  key: jax.Array
  active_total: jax.Array
  last_active: jax.Array
  clip_count: jax.Array

  def per_worker_fields(self):
    return ("clip_count",)


class EFSignSGDState(NamedTuple):
  """State of ``ef_signsgd``; ``error`` (like params, f32) is per worker (leading axis W)."""
  count: jax.Array
  key: jax.Array
  active_total: jax.Array
  last_active: jax.Array
  error: Any

  def per_worker_fields(self):
    return ("error",)


@dataclasses.dataclass(frozen=True)
class Scheme:
  """What a worker sends and how the receivers decode it (built by the public constructors).

  encode: ``stochastic`` (unbiased 1-bit, bound B), ``sign`` (deterministic sign, 0 → +1),
    ``ef`` (scaled sign of gradient + error), ``real`` (fp32 values).
  decode: ``fixed`` (divide by the fixed ``normalizer`` N), ``active`` (divide by |R_t|),
    ``vote`` (sign of the sum).
  bound: constant B, ``"linf"`` (B_i = ‖c_i‖_∞ sent as one f32), or None.
  gain: multiplies the local gradient before encoding (1/(d(1−p)) for gradient coding).
  num_workers: W the scheme was built for (1 with ``axis_name=None``).
  """
  encode: str
  decode: str
  bound: float | str | None
  gain: float
  normalizer: float
  num_workers: int
  straggler_prob: float
  num_stragglers: int | None
  wire: str
  axis_name: str | None
  seed: int

  @property
  def sends_scale(self) -> bool:
    return self.encode == "ef" or self.bound == "linf"


# ----------------------------------------------------------------------------- validation


def _check_straggling(straggler_prob, straggler_model, num_stragglers, num_workers):
  if straggler_model not in STRAGGLER_MODELS:
    raise ValueError(f"straggler_model {straggler_model!r} unknown; allowed: {', '.join(STRAGGLER_MODELS)}")
  if straggler_model == "bernoulli":
    if not (isinstance(straggler_prob, numbers.Real) and 0.0 <= straggler_prob < 1.0):
      raise ValueError(f"straggler_prob must be a number in [0, 1), got {straggler_prob!r} "
                       "(p = 1 means nobody ever reports)")
    if num_stragglers is not None:
      raise ValueError("num_stragglers is for straggler_model='fixed'; with 'bernoulli' use straggler_prob")
    return float(straggler_prob), None
  if num_workers is None:
    raise ValueError("straggler_model='fixed' needs the number of workers: pass num_workers=W")
  if not (isinstance(num_stragglers, numbers.Integral) and 0 <= num_stragglers < num_workers):
    raise ValueError(f"straggler_model='fixed' needs an integer num_stragglers in [0, W={num_workers}), "
                     f"got {num_stragglers!r}")
  return num_stragglers / num_workers, num_stragglers


def _check_bound(bound, required: bool):
  if bound is None and not required:
    return None
  if bound == "linf":
    return "linf"
  if isinstance(bound, str) or not isinstance(bound, numbers.Real) or not 0 < bound < math.inf:
    raise ValueError(f"bound must be a finite number > 0 or 'linf', got {bound!r}")
  return float(bound)


def _check_wire(wire, encode, bound):
  if wire not in WIRES:
    raise ValueError(f"wire {wire!r} unknown; allowed: {', '.join(WIRES)}")
  if wire == "int8_psum" and (encode in ("real", "ef") or bound == "linf"):
    raise ValueError("wire='int8_psum' sums ±1 votes and needs one common scale: use a constant bound "
                     "(not 'linf'), and not with real-valued or EF payloads")


# ----------------------------------------------------------------------------- one round


def _num_workers(scheme: Scheme) -> int:
  w = axis.axis_size(scheme.axis_name)
  if w != scheme.num_workers:
    where = "axis_name=None (one worker)" if scheme.axis_name is None else f"mesh axis {scheme.axis_name!r}"
    raise ValueError(f"{where} has {w} worker(s) but the scheme was built for W={scheme.num_workers} "
                     "(allocation / num_workers)")
  return w


def _workers(num_workers, axis_name) -> int:
  """W of a d = 1 scheme: ``num_workers``, required with an axis (``init`` lays out per-worker
  state with a leading axis of size W); 1 with ``axis_name=None``."""
  if num_workers is None:
    if axis_name is not None:
      raise ValueError(f"num_workers is required with axis_name={axis_name!r}: pass num_workers=W, the size "
                       "of the mesh axis (init stores per-worker state with a leading axis of size W)")
    return 1
  if not isinstance(num_workers, numbers.Integral) or isinstance(num_workers, bool) or num_workers < 1:
    raise ValueError(f"num_workers must be a positive integer, got {num_workers!r}")
  return int(num_workers)


def active_mask(scheme: Scheme, step_key: jax.Array, num_workers: int) -> jax.Array:
  """bool[W]: which workers report at this step; no axis index, so identical on every device."""
  k = jax.random.fold_in(step_key, 0)
  if scheme.num_stragglers is not None:
    rank = jnp.argsort(jax.random.permutation(k, num_workers))
    return rank >= scheme.num_stragglers
  return jax.random.bernoulli(k, 1.0 - scheme.straggler_prob, (num_workers,))


def worker_key(step_key: jax.Array, worker) -> jax.Array:
  """The quantizer key of ``worker``: ``fold_in(fold_in(k_t, 1), worker)``."""
  return jax.random.fold_in(jax.random.fold_in(step_key, 1), worker)


class _Message(NamedTuple):
  bits: jax.Array | None      # bool[D] (1-bit schemes)
  values: jax.Array | None    # f32[D] (real-valued schemes)
  scale: jax.Array | None     # f32[] (linf / EF)
  clipped: jax.Array          # int32[]
  error: jax.Array | None     # f32[D] new EF error if this worker reports


def encode(scheme: Scheme, grad: jax.Array, key: jax.Array, error: jax.Array | None = None) -> _Message:
  """What worker i sends, from its flat f32 local gradient Σ_{k∈S_i} ∇f_k."""
  zero = jnp.zeros([], jnp.int32)
  c = grad * scheme.gain
  if scheme.encode == "real":
    return _Message(None, c, None, zero, None)
  if scheme.encode == "sign":
    return _Message(c >= 0, None, None, zero, None)
  if scheme.encode == "ef":
    u = c + error
    scale = jnp.mean(jnp.abs(u))
    bits = u >= 0
    return _Message(bits, None, scale, zero, u - scale * (2.0 * bits - 1.0))
  if scheme.bound == "linf":
    scale = jnp.max(jnp.abs(c))
    bits = stochastic_sign(c, key, jnp.where(scale > 0, scale, 1.0))
    return _Message(bits, None, scale, zero, None)
  bits = stochastic_sign(c, key, scheme.bound)
  return _Message(bits, None, None, jnp.sum(jnp.abs(c) > scheme.bound, dtype=jnp.int32), None)


def _sum_over_workers(weights: jax.Array, rows: jax.Array) -> jax.Array:
  """Σ_i weights_i · rows_i [D] (the decoding sum of step 5, module docstring) as a left fold over
  workers i = 0, 1, ..., W−1.

  A fixed order, so the sharded decode and ``reference_decode`` give the same bits: a plain
  ``jnp.sum(..., axis=0)`` is a reduction whose order XLA's CPU backend picks per program (from
  D = 512 on it becomes a library reduction), which made the two differ by ~1e-6 relative.
  """
  def add(i, total):
    return total + weights[i] * rows[i]

  return lax.fori_loop(0, rows.shape[0], add, jnp.zeros(rows.shape[1:], jnp.float32))


def decode(scheme: Scheme, active: jax.Array, received: jax.Array | None = None,
           scales: jax.Array | None = None, vote_sum: jax.Array | None = None) -> jax.Array:
  """ĝ from the W messages (``received``: ±1 or real [W, D]; ``scales``: f32[W]) and the mask.

  ``vote_sum`` = Σ_{i∈R} q_i when the wire already summed it (``int8_psum``).
  """
  a = active.astype(jnp.float32)
  denom = scheme.normalizer if scheme.decode == "fixed" else jnp.maximum(jnp.sum(a), 1.0)
  if scheme.encode == "real":
    return _sum_over_workers(a / denom, received)
  if scheme.sends_scale:
    return _sum_over_workers(a * scales / denom, received)
  if vote_sum is None:
    vote_sum = jnp.sum(a[:, None] * received, axis=0)   # integer valued: exact in f32
  if scheme.decode == "vote":
    return jnp.sign(vote_sum)
  return vote_sum * (scheme.bound / denom)


def _exchange(scheme: Scheme, msg: _Message, mine: jax.Array, num_params: int):
  """(received [W, D] or None, scales [W] or None, vote_sum or None) on every device."""
  name = scheme.axis_name

  def gather(x):
    if name is None:
      return x[None]
    return lax.all_gather(axis.to_varying(x, name), name, to="invarying")

  scales = gather(msg.scale) if scheme.sends_scale else None
  if msg.values is not None:
    return gather(msg.values), scales, None
  if scheme.wire == "int8_psum":
    dtype = jnp.int8 if scheme.num_workers <= 127 else jnp.int32   # |Σ q| <= W must fit
    q = jnp.where(mine, 2 * msg.bits.astype(dtype) - 1, jnp.zeros((), dtype))
    total = q if name is None else lax.psum(axis.to_varying(q, name), name)
    return None, scales, total.astype(jnp.float32)
  return unpack(gather(pack(msg.bits)), num_params), scales, None


def _init(scheme: Scheme, params, with_error: bool):
  zero = jnp.zeros([], jnp.int32)
  key = jax.random.key_data(jax.random.key(scheme.seed))
  if with_error:
    return EFSignSGDState(zero, key, zero, zero,                      # error kept in f32
                          jax.tree.map(lambda p: jnp.zeros(jnp.shape(p), jnp.float32), params))
  return OneBitGCState(zero, key, zero, zero, zero)


def _transformation(scheme: Scheme) -> optax.GradientTransformation:
  with_error = scheme.encode == "ef"

  def init_fn(params):
    return axis.stack(_init(scheme, params, with_error), scheme.num_workers)

  def update_fn(updates, state, params=None):
    del params
    w = _num_workers(scheme)
    state = axis.local(state, "sign1bit")
    flat, unravel = ravel_pytree(updates)
    dtype = flat.dtype
    flat = flat.astype(jnp.float32)
    step_key = jax.random.fold_in(jax.random.wrap_key_data(state.key), state.count)
    active = active_mask(scheme, step_key, w)
    me = axis.axis_index(scheme.axis_name)
    mine = active[me]
    error = ravel_pytree(state.error)[0].astype(jnp.float32) if with_error else None
    msg = encode(scheme, flat, worker_key(step_key, me), error)
    received, scales, vote_sum = _exchange(scheme, msg, mine, flat.shape[0])
    ghat = decode(scheme, active, received, scales, vote_sum)
    n_active = jnp.sum(active, dtype=jnp.int32)     # int32 under x64 too
    common = dict(count=optax.safe_increment(state.count), key=state.key,
                  active_total=state.active_total + n_active, last_active=n_active)
    if with_error:
      new_error = ravel_pytree(state.error)[1](jnp.where(mine, msg.error, error))
      new_state = EFSignSGDState(**common, error=new_error)
    else:
      new_state = OneBitGCState(**common, clip_count=state.clip_count + jnp.where(mine, msg.clipped, 0))
    return unravel(ghat.astype(dtype)), axis.unlocal(new_state)

  return optax.GradientTransformation(init_fn, update_fn)


# ----------------------------------------------------------------------------- public constructors


def gc_scheme(alloc: Allocation, straggler_prob: float, bound, *, axis_name: str | None = "data",
              seed: int = 0, quantize: bool = True, straggler_model: str = "bernoulli",
              num_stragglers: int | None = None, wire: str = "packed") -> Scheme:
  """The validated scheme of ``scale_by_one_bit_gc`` (shared with ``reference_decode``)."""
  if not isinstance(alloc, Allocation):
    raise ValueError(f"alloc must be a sign1bit.Allocation (from sign1bit.allocation(...)), got {type(alloc)}")
  p, s = _check_straggling(straggler_prob, straggler_model, num_stragglers, alloc.num_workers)
  bound = _check_bound(bound, required=quantize) if quantize else None
  encode_kind = "stochastic" if quantize else "real"
  _check_wire(wire, encode_kind, bound)
  return Scheme(encode=encode_kind, decode="fixed", bound=bound, gain=1.0 / (alloc.redundancy * (1.0 - p)),
                normalizer=float(alloc.num_partitions), num_workers=alloc.num_workers, straggler_prob=p,
                num_stragglers=s, wire=wire, axis_name=axis_name, seed=seed)


def scale_by_one_bit_gc(alloc: Allocation, straggler_prob: float, bound, *, axis_name: str | None = "data",
                        seed: int = 0, quantize: bool = True, straggler_model: str = "bernoulli",
                        num_stragglers: int | None = None, wire: str = "packed") -> optax.GradientTransformation:
  """1-bit GC-DL's exchange: local gradient in, decoded ĝ_t = (B/N) Σ_{i∈R_t} q_i out.

  Args:
    alloc: the data allocation (``sign1bit.allocation``); W must equal the mesh axis size
      (1 when ``axis_name`` is None).
    straggler_prob: p ∈ [0, 1), each worker straggles independently every step.
    bound: the quantizer bound B > 0 (the paper's constant; B = ℓG/(d(1−p)) is provably safe
      for partition gradients bounded by G, coordinates beyond it are clipped and counted), or
      ``"linf"``: B_i = ‖c_i‖_∞ per worker and step, sent as one extra f32 (project extension).
    axis_name: mesh axis of the workers; None = one worker, no collectives.
    seed: seeds the replicated key in the state.
    quantize: False gives real-valued SGC, ĝ = (1/N) Σ_{i∈R} c_i (fp32 payload).
    straggler_model: ``"bernoulli"`` or ``"fixed"`` (exactly ``num_stragglers`` per step,
      1 − p := (W − s)/W).
    wire: ``"packed"`` (uint8 all-gather, 1 bit per coordinate) or ``"int8_psum"`` (an s8[D]
      all-reduce of ξ_i q_i: same ĝ, 8 bits per coordinate; for comparisons).
  Raises:
    ValueError at construction for p ∉ [0, 1), B ≤ 0, an invalid allocation or wire.
  """
  return _transformation(gc_scheme(alloc, straggler_prob, bound, axis_name=axis_name, seed=seed,
                                   quantize=quantize, straggler_model=straggler_model,
                                   num_stragglers=num_stragglers, wire=wire))


def one_bit_gc(learning_rate, alloc: Allocation, straggler_prob: float, bound, **kwargs):
  """1-bit GC-DL: w_{t+1} = w_t − η_t ĝ_t, ĝ_t of step 5 (module docstring). See ``scale_by_one_bit_gc``."""
  return optax.chain(scale_by_one_bit_gc(alloc, straggler_prob, bound, **kwargs),
                     optax.scale_by_learning_rate(learning_rate))


def scale_by_sgc(alloc: Allocation, straggler_prob: float, **kwargs) -> optax.GradientTransformation:
  """Stochastic gradient coding (Bitar et al. 2020): ĝ = (1/N) Σ_{i∈R} c_i, c_i in fp32."""
  return scale_by_one_bit_gc(alloc, straggler_prob, None, quantize=False, **kwargs)


def sgc(learning_rate, alloc: Allocation, straggler_prob: float, **kwargs):
  """SGD with real-valued stochastic gradient coding. See ``scale_by_sgc``."""
  return optax.chain(scale_by_sgc(alloc, straggler_prob, **kwargs), optax.scale_by_learning_rate(learning_rate))


def _d1_scheme(encode_kind, decode_kind, straggler_prob, bound, *, axis_name, seed, straggler_model,
               num_stragglers, num_workers, wire="packed") -> Scheme:
  p, s = _check_straggling(straggler_prob, straggler_model, num_stragglers, num_workers)
  _check_wire(wire, encode_kind, bound)
  return Scheme(encode=encode_kind, decode=decode_kind, bound=bound, gain=1.0, normalizer=1.0,
                num_workers=_workers(num_workers, axis_name), straggler_prob=p, num_stragglers=s, wire=wire,
                axis_name=axis_name, seed=seed)


def scale_by_ignore_stragglers(straggler_prob: float, *, quantize: bool = False, bound=None,
                               axis_name: str | None = "data", seed: int = 0,
                               straggler_model: str = "bernoulli", num_stragglers: int | None = None,
                               num_workers: int | None = None, wire: str = "packed"):
  """Ignore-stragglers averaging (d = 1): ĝ = (1/|R|) Σ_{i∈R} ∇f_i, 0 when R = ∅.

  ``quantize=True`` sends the unbiased stochastic sign with ``bound`` (G, or ``"linf"``) instead:
  ĝ = (1/|R|) Σ_{i∈R} B_i q_i.
  """
  bound = _check_bound(bound, required=True) if quantize else None
  return _transformation(_d1_scheme("stochastic" if quantize else "real", "active", straggler_prob, bound,
                                    axis_name=axis_name, seed=seed, straggler_model=straggler_model,
                                    num_stragglers=num_stragglers, num_workers=num_workers, wire=wire))


def ignore_stragglers(learning_rate, straggler_prob: float, **kwargs):
  """SGD on the ignore-stragglers average. See ``scale_by_ignore_stragglers``."""
  return optax.chain(scale_by_ignore_stragglers(straggler_prob, **kwargs),
                     optax.scale_by_learning_rate(learning_rate))


def scale_by_sign_majority(straggler_prob: float, *, axis_name: str | None = "data", seed: int = 0,
                           straggler_model: str = "bernoulli", num_stragglers: int | None = None,
                           num_workers: int | None = None, wire: str = "packed"):
  """signSGD with majority vote (Bernstein et al., ICLR 2019): each reporting worker sends
  sign(∇f_i) (0 → +1); the update direction is sign(Σ_{i∈R} sign_i) ∈ {−1, 0, +1}^D (tie → 0)."""
  return _transformation(_d1_scheme("sign", "vote", straggler_prob, None, axis_name=axis_name, seed=seed,
                                    straggler_model=straggler_model, num_stragglers=num_stragglers,
                                    num_workers=num_workers, wire=wire))


def signsgd_majority(learning_rate, straggler_prob: float, **kwargs):
  """w ← w − η · vote. See ``scale_by_sign_majority``."""
  return optax.chain(scale_by_sign_majority(straggler_prob, **kwargs),
                     optax.scale_by_learning_rate(learning_rate))


def scale_by_ef_sign(straggler_prob: float, *, axis_name: str | None = "data", seed: int = 0,
                     straggler_model: str = "bernoulli", num_stragglers: int | None = None,
                     num_workers: int | None = None, wire: str = "packed"):
  """EF-signSGD (Karimireddy et al., ICML 2019, Alg. 1 on the gradient scale):
  u_i = g_i + e_i, Δ_i = (‖u_i‖₁/D) sign(u_i), e_i ← u_i − Δ_i (stragglers keep e_i);
  ĝ = (1/|R|) Σ_{i∈R} Δ_i. Payload: D bits + one f32. ``error`` is per worker (``state_specs``).
  ``wire``: only ``"packed"`` (each Δ_i has its own scale; taken, like the other constructors)."""
  return _transformation(_d1_scheme("ef", "active", straggler_prob, None, axis_name=axis_name, seed=seed,
                                    straggler_model=straggler_model, num_stragglers=num_stragglers,
                                    num_workers=num_workers, wire=wire))


def ef_signsgd(learning_rate, straggler_prob: float, **kwargs):
  """SGD on the EF-signSGD average. See ``scale_by_ef_sign``."""
  return optax.chain(scale_by_ef_sign(straggler_prob, **kwargs), optax.scale_by_learning_rate(learning_rate))


# ----------------------------------------------------------------------------- state layout


def state_specs(state, axis_name: str = axis.AXIS):
  """PartitionSpecs for ``shard_map``: ``P(axis_name)`` on the per-worker leaves (``clip_count``,
  EF ``error``, ``multi_steps``' accumulated gradients; ``init`` stores them with a leading axis
  of size W, device i holds row i), ``P()`` elsewhere. Found by type anywhere in ``state``
  (``optax.chain``, ``inject_hyperparams``, ``multi_steps``)."""
  return axis.state_specs(state, axis_name)


def diagnostics(state) -> dict:
  """``active_total``, ``last_active`` and (if present) ``clip_count`` (per worker: leading axis W,
  1 inside ``shard_map``) of the scheme's state, found anywhere in a chain (cumulative uplink bits = ``payload_bits`` × ``active_total``)."""
  out = {}
  for name in ("active_total", "last_active", "clip_count"):
    found = optax.tree.get_all_with_path(state, name)
    if found:
      out[name] = found[0][1]
  return out
