"""DAP-SVRG and its relatives as optax transformations (round model of simulated asynchrony).

References:
  [HGH] Z. Huo, B. Gu, H. Huang, *Decoupled Asynchronous Proximal Stochastic Gradient Descent
        with Variance Reduction*, arXiv:1609.06804 (DAP-SVRG, Alg. 1: worker prox, server add).
  [LXZL] Y. Li, L. Xu, X. Zhong, Q. Ling, *Make Workers Work Harder: Decoupled Asynchronous
        Proximal SGD*, arXiv:1605.06619 (DAP-SGD).
  [XZ]  L. Xiao, T. Zhang, *A Proximal Stochastic Gradient Method with Progressive Variance
        Reduction*, SIAM J. Optim. 24(4):2057-2075, 2014 (ProxSVRG, Alg. 1).
  [MCW] Q. Meng et al., *Asynchronous Stochastic Proximal Optimization Algorithms with Variance
        Reduction*, AAAI 2017, arXiv:1609.08435 (TAP / Async-ProxSVRG: server prox).
  [LM]  S. A. Levin, R. M. May, *A note on difference-delay equations*, Theor. Popul. Biol. 9(2),
        1976 (stability of x_{t+1} = x_t - theta x_{t-tau}).

Round model (one ``update`` = one round; the mesh axis ``axis_name`` holds the K workers):
device k reads the server version ``r - d_k`` from a ring buffer of the last ``max_delay + 1``
round-versions (``read_params``; every version in it is a ``params`` the caller passed, so optax
transformations chained after this one, e.g. ``clip_by_global_norm``, are part of the server's
iterate), the caller differentiates its minibatch loss there (``g_r``)
and at the snapshot (``g_s``), and ``update`` forms the variance-reduced gradient
``v_k = w_k (g_r - g_s) + mu`` ([XZ] eq. 3, ``w_k = K n_k / n`` for uneven shards). Then

  * ``server="add"`` (DAP, [HGH] Alg. 1): ``Delta_k = prox_{gh}(x_hat_k - g v_k) - x_hat_k`` on the
    worker, the server adds ``theta * psum_k Delta_k`` (theta = 1 is the paper; theta < 1 is the
    project's relaxed extension: where the prox is locally constant, e.g. l1 zeros, the server
    recursion under a persistent delay tau is ``x_{t+1} = x_t - theta x_{t-tau}``, unstable at
    theta = 1 for tau >= 2 and stable for theta < 2 sin(pi / (2 (2 tau + 1))) [LM]);
  * ``server="prox"`` (TAP, [MCW]): ``all_gather`` of the ``v_k``, then every device applies
    ``x <- prox_{gh}(x - g v_{pi(j)})`` for the K arrivals in a seeded order ``pi`` (identical on
    all devices, so params stay replicated), or once for the whole round
    (``tap_prox="per_round"``): ``x <- prox_{K g h}(x - g sum_j v_j)`` (K summed steps take one
    prox of K*g*h, so the fixed point minimizes f + h, not f + h/K).

Without variance reduction (``dap_sgd``/``tap_sgd``) ``v_k = w_k g_r``. With one device
(``axis_name=None``) and ``max_delay=0`` all of them are ProxSVRG / proximal SGD exactly.

Shard weights ``w_k = K n_k / n`` need this device's row count n_k (``local_count``) and the
global n (``num_rows``, or the one ``refresh`` stored); without ``local_count`` the shards are
taken as equal (w_k = 1). ``epoch_fn`` passes both, with or without variance reduction.
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from vr_prox._prox import is_prox
from vr_prox.axis import all_gather, axis_index, axis_size, psum, to_varying

SCHEDULES = ("uniform", "fixed", "cyclic", "trace")
_SCHEDULE_ID = {name: i for i, name in enumerate(SCHEDULES)}
SERVERS = ("add", "prox")
TAP_PROXES = ("per_update", "per_round")


class DapSvrgState(NamedTuple):
  """State of the round-model transformation (replicated across workers).

  Attributes:
    count: rounds (server versions) since init, int32.
    inner: rounds since the last ``refresh`` (reads never go further back), int32.
    head: slot of the current server version in ``history``, int32 (filled from the caller's
      params by ``read_params`` and ``update``; the state never predicts a version).
    snapshot: the epoch snapshot x~.
    full_grad: mu~ = grad f(x~) (global mean over all rows; set by ``refresh``).
    num_rows: global row count n of the shard weights (set by ``refresh``; 0 until then).
    history: every leaf stacked to ``(max_delay + 1, ...)``: the last round-versions, each the
      ``params`` the caller passed to ``update`` in that round (slot ``head`` is the current one's).
    key: PRNG key (uint32[2]) of delays and arrival orders; draws use ``fold_in(key, count)``.
    schedule: int32[2] = (schedule id, max_delay), so ``read_delay`` needs only the state.
    trace: int32[T, W] replayed delays (``delay_schedule="trace"``), else [1, 1] zeros.
  """
  count: jax.Array
  inner: jax.Array
  head: jax.Array
  snapshot: Any
  full_grad: Any
  num_rows: jax.Array
  history: Any
  key: jax.Array
  schedule: jax.Array
  trace: jax.Array


def state_specs(state) -> Any:
  """PartitionSpec tree of the state: every leaf replicated (the server state is shared; the
  per-device part of a round, the delay and the sample, is recomputed from the key)."""
  return jax.tree.map(lambda _: jax.P(), state)


# ----------------------------------------------------------------------------- helpers
def _delay(state: DapSvrgState, worker):
  """Delay (in rounds) of ``worker``'s read in this round, clipped to the current epoch."""
  sid, max_delay = state.schedule[0], state.schedule[1]
  key = jax.random.fold_in(jax.random.fold_in(jax.random.fold_in(state.key, 0), state.count), worker)
  uniform = jax.random.randint(key, (), 0, max_delay + 1)
  cyclic = worker % (max_delay + 1)
  t, w = state.trace.shape
  trace = state.trace[state.count % t, worker % w]
  d = jnp.select([sid == 0, sid == 1, sid == 2], [uniform, max_delay, cyclic], trace)
  return jnp.minimum(d, jnp.minimum(max_delay, state.inner)).astype(jnp.int32)


def read_delay(state: DapSvrgState, axis_name: str | None = "data"):
  """The delay this device's read has in the coming round (diagnostics)."""
  return _delay(state, axis_index(axis_name))


def _record(state: DapSvrgState, params) -> DapSvrgState:
  """``history`` with ``params``, the version the caller holds now, in this round's slot ``head``.

  The buffer only ever holds versions the caller passed: a transformation chained after this one
  (``chain(dap_svrg(...), clip_by_global_norm(c))``) changes the server's next version, so the
  state cannot predict it; the caller's ``params`` are the truth.
  """
  if params is None or isinstance(params, str):
    raise TypeError(f"read_params(state, params, axis_name) needs params, the current server version (the "
                    f"params you pass to update), got {params!r}; reads at delay 0 are params themselves")
  history = jax.tree.map(lambda h, p: h.at[state.head].set(jnp.asarray(p, h.dtype)), state.history, params)
  return state._replace(history=history)


def _read(state: DapSvrgState, axis_name):
  """``history[head - d_k]`` of a state whose current version is recorded (``_record``)."""
  d = read_delay(state, axis_name)
  size = jax.tree.leaves(state.history)[0].shape[0]
  slot = (state.head - d) % size
  return jax.tree.map(lambda h: h[slot], state.history)


def read_params(state: DapSvrgState, params, axis_name: str | None = "data"):
  """The (stale) server version this device reads in the coming round ([HGH] Alg. 1, worker
  step 1): ``params`` at delay 0, else the version ``d_k`` rounds back, as the caller
  passed it to ``update`` then.

  Inside ``shard_map`` the result is varying when delays differ across devices. Differentiate
  the minibatch loss at ``to_varying(read_params(state, params))`` and pass that as ``updates``.
  """
  return _read(_record(state, params), axis_name)


def refresh(state: DapSvrgState, params, full_grad, num_rows) -> DapSvrgState:
  """Epoch start ([XZ] Alg. 1 line 3, [HGH] Alg. 1): snapshot x~ = params, mu~ = full_grad.

  Resets the version buffer to the snapshot, so no read crosses an epoch boundary (the
  authors' epoch barrier). ``num_rows`` is the global n of the shard weights ``w_k = K n_k / n``
  (``full_gradient`` returns it with mu~: ``refresh(state, params, *full_gradient(...))``); it is
  required, so a refresh can never leave the weights at a stale or default value.
  """
  if num_rows is None:
    raise ValueError("refresh needs num_rows, the global row count n of the shard weights "
                     "(full_gradient returns it: refresh(state, params, *full_gradient(...)))")
  size = jax.tree.leaves(state.history)[0].shape[0]
  history = jax.tree.map(lambda p: jnp.broadcast_to(p, (size,) + jnp.shape(p)), params)
  full_grad = jax.tree.map(lambda g, p: jnp.asarray(g, jnp.asarray(p).dtype), full_grad, params)
  n = jnp.asarray(num_rows, state.num_rows.dtype)
  return state._replace(inner=jnp.zeros_like(state.inner), head=jnp.zeros_like(state.head),
                        snapshot=params, full_grad=full_grad, num_rows=n, history=history)


def global_count(mask, axis_name: str | None = "data", dtype=jnp.float32):
  """The global row count n = psum over devices of this device's valid rows ``sum(mask)``
  (replicated, ``dtype``): the n of the shard weights ``w_k = K n_k / n``."""
  return psum(jnp.sum(mask).astype(dtype), axis_name)


def _loss_sums(example_loss_fn, params, data, mask):
  losses = example_loss_fn(params, data)
  return jnp.sum(losses * mask.astype(losses.dtype))


def full_gradient(example_loss_fn: Callable, params, data, mask, axis_name: str | None = "data"):
  """Exact global mean gradient ``(1/n) sum_i grad f_i(x)`` over every valid row of every shard.

  ``psum`` of the per-shard sums divided by ``psum`` of the per-shard counts: never a mean of
  shard means, never dropping remainder rows (both move the optimum).

  Args:
    example_loss_fn: ``(params, data) -> [rows]`` per-row losses f_i.
    params: the point (replicated).
    data: pytree of this device's rows (leading axis = rows, padded rows allowed).
    mask: ``[rows]`` 1 for a real row, 0 for padding.
    axis_name: worker axis, or None on one device.
  Returns:
    (mu, n): the gradient (replicated) and the global row count (params' dtype).
  """
  dtype = jax.tree.leaves(params)[0].dtype
  g = jax.grad(lambda p: _loss_sums(example_loss_fn, p, data, mask))(to_varying(params, axis_name))
  g, n = psum((g, jnp.sum(mask).astype(dtype)), axis_name)
  return jax.tree.map(lambda x: x / n, g), n


def objective(example_loss_fn: Callable, prox, params, data, mask, axis_name: str | None = "data"):
  """``P(x) = (1/n) sum_i f_i(x) + h(x)`` over every valid row of every shard (replicated)."""
  dtype = jax.tree.leaves(params)[0].dtype
  total, n = psum((_loss_sums(example_loss_fn, params, data, mask).astype(dtype), jnp.sum(mask).astype(dtype)),
                  axis_name)
  return total / n + prox.value(params)


# ----------------------------------------------------------------------------- transform
def _shard_weight(state: DapSvrgState, local_count, num_rows, num_workers: int, variance_reduction: bool):
  """``w_k = K n_k / n`` so that ``(1/K) sum_k E[v_k] = grad f`` for uneven shards.

  n is ``num_rows`` if given, else the one ``refresh`` stored (variance reduction only: the
  no-VR variants are never refreshed, so they need ``num_rows``). Before any refresh the stored
  n is 0 and the weight is NaN: loud, never a silent default.
  """
  if local_count is None:
    if num_rows is not None:
      raise ValueError("update got num_rows without local_count; the shard weight K n_k / n needs both "
                       "(local_count = this device's valid rows)")
    return 1.0
  if num_rows is None and not variance_reduction:
    raise ValueError("dap_sgd/tap_sgd update with local_count also needs num_rows, the global row count n "
                     "of the shard weight K n_k / n (vr_prox.global_count(mask, axis_name)); without it the "
                     "shards would count equally, whatever their sizes")
  n = state.num_rows if num_rows is None else jnp.asarray(num_rows, state.num_rows.dtype)
  return jnp.where(n > 0, num_workers * jnp.asarray(local_count, n.dtype) / n, jnp.nan)


def _check_lr(learning_rate):
  if callable(learning_rate):
    return
  if isinstance(learning_rate, (int, float, np.floating, np.integer)) and not learning_rate > 0:
    raise ValueError(f"learning_rate must be > 0, got {learning_rate}")


def _delay_trace(delay_schedule: str, delay_trace, max_delay: int) -> np.ndarray:
  """The int32 [T, W] replayed delays of ``delay_schedule="trace"`` (validated), else [1, 1] zeros."""
  if delay_schedule != "trace":
    return np.zeros((1, 1), np.int32)
  if delay_trace is None:
    raise ValueError("delay_schedule='trace' needs delay_trace, an int array [T, workers]")
  trace = np.asarray(delay_trace)
  if trace.ndim != 2 or trace.size == 0 or not np.issubdtype(trace.dtype, np.integer):
    raise ValueError(f"delay_trace must be a non-empty 2-D integer array, got shape {trace.shape}")
  if trace.min() < 0 or trace.max() > max_delay:
    raise ValueError(f"delay_trace values must lie in [0, max_delay={max_delay}], "
                     f"got [{trace.min()}, {trace.max()}]")
  return trace.astype(np.int32)


def _check_options(learning_rate, prox, max_delay, delay_schedule, relaxation, server, tap_prox) -> None:
  """Refuses a bad constructor argument by name (the constructor's only validation)."""
  _check_lr(learning_rate)
  if not is_prox(prox):
    raise ValueError(f"prox must be a proximal operator with __call__(z, step) and value(x) "
                     f"(e.g. vr_prox.prox_l1(1e-3)); got {prox!r}")
  if isinstance(max_delay, bool) or not isinstance(max_delay, (int, np.integer)) or max_delay < 0:
    raise ValueError(f"max_delay must be an integer >= 0, got {max_delay!r}")
  if delay_schedule not in SCHEDULES:
    raise ValueError(f"unknown delay_schedule {delay_schedule!r}; allowed: {', '.join(SCHEDULES)}")
  if server not in SERVERS:
    raise ValueError(f"unknown server {server!r}; allowed: {', '.join(SERVERS)}")
  if tap_prox not in TAP_PROXES:
    raise ValueError(f"unknown tap_prox {tap_prox!r}; allowed: {', '.join(TAP_PROXES)}")
  if isinstance(relaxation, str):
    if relaxation != "auto":
      raise ValueError(f"relaxation must be a number in (0, 1] or 'auto', got {relaxation!r}")
  elif isinstance(relaxation, (int, float, np.floating)) and not 0 < relaxation <= 1:
    raise ValueError(f"relaxation must be in (0, 1], got {relaxation}")


def _init_state(params, max_delay: int, schedule: np.ndarray, trace: np.ndarray, seed: int) -> DapSvrgState:
  """Fresh state: snapshot = params, mu~ = 0, n = 0 (``refresh`` sets them), every version = params."""
  dtype = jax.tree.leaves(params)[0].dtype
  return DapSvrgState(
      count=jnp.zeros([], jnp.int32), inner=jnp.zeros([], jnp.int32), head=jnp.zeros([], jnp.int32),
      snapshot=jax.tree.map(jnp.asarray, params), full_grad=optax.tree.zeros_like(params),
      num_rows=jnp.zeros([], dtype),
      history=jax.tree.map(lambda p: jnp.broadcast_to(p, (max_delay + 1,) + jnp.shape(p)), params),
      key=jax.random.PRNGKey(seed), schedule=jnp.asarray(schedule), trace=jnp.asarray(trace))


# ----------------------------------------------------------------------------- one round, as in [HGH] Alg. 1
def variance_reduced_gradient(g_read, g_snap, full_grad, weight):
  """``v = w (grad f_i(x_hat) - grad f_i(x~)) + mu~`` ([XZ] eq. 3, with the shard weight w_k);
  ``g_snap=None`` (no variance reduction, [LXZL]) gives ``v = w grad f_i(x_hat)``."""
  if g_snap is None:
    return jax.tree.map(lambda g: weight * g, g_read)
  return jax.tree.map(lambda g, s, mu: weight * (g - s) + mu, g_read, g_snap, full_grad)


def worker_delta(prox, x_hat, v, lr):
  """The worker's message of [HGH] Alg. 1: ``Delta = prox_{gh}(x_hat - g v) - x_hat`` (worker-side prox)."""
  u = prox(jax.tree.map(lambda x, g: x - lr * g, x_hat, v), lr)
  return jax.tree.map(lambda a, b: a - b, u, x_hat)


def server_add(delta, params, theta, axis_name):
  """The DAP server ([HGH] Alg. 1): the update ``theta * sum_k Delta_k`` (one psum; an add only)."""
  return jax.tree.map(lambda d, p: (theta * d).astype(p.dtype), psum(delta, axis_name), params)


def server_prox(v, params, prox, lr, state: DapSvrgState, axis_name, tap_prox: str):
  """The TAP server ([MCW]): all_gather of the K ``v_k``, then ``x <- prox_{gh}(x - g v_{pi(j)})`` for
  the K arrivals in a seeded order pi (``per_update``), or ``x <- prox_{K g h}(x - g sum_j v_j)``
  (``per_round``: K summed steps take one prox of K*g*h, whose fixed point minimizes f + h).
  Returns the update ``x+ - x``."""
  num_workers = axis_size(axis_name)
  all_v = all_gather(v, axis_name)
  if tap_prox == "per_round":
    total = jax.tree.map(lambda g: jnp.sum(g, 0), all_v)
    new = prox(jax.tree.map(lambda x, g: x - lr * g, params, total), num_workers * lr)
  else:
    order = jax.random.permutation(jax.random.fold_in(jax.random.fold_in(state.key, 1), state.count), num_workers)

    def arrive(j, x):
      g = jax.tree.map(lambda a: a[order[j]], all_v)
      return prox(jax.tree.map(lambda p, gj: p - lr * gj, x, g), lr)

    new = lax.fori_loop(0, num_workers, arrive, params) if num_workers > 1 else arrive(0, params)
  return jax.tree.map(lambda a, p: (a - p).astype(p.dtype), new, params)


def _advance(state: DapSvrgState, max_delay: int) -> DapSvrgState:
  """Next round: counts + 1; ``head`` moves to the next version's slot (filled when it is passed in)."""
  head = (state.head + 1) % (max_delay + 1)
  return state._replace(count=optax.safe_increment(state.count), inner=optax.safe_increment(state.inner),
                        head=head.astype(jnp.int32))


def _theta(relaxation, axis_name, max_delay: int):
  """DAP's server weight: ``relaxation``, or 1 / (K (D + 1)) for ``"auto"``."""
  return 1.0 / (axis_size(axis_name) * (max_delay + 1)) if relaxation == "auto" else relaxation


def dap_svrg(learning_rate, prox, *, axis_name: str | None = "data", max_delay: int = 0,
             delay_schedule: str = "uniform", delay_trace=None,
             relaxation: float | str = 1.0, server: str = "add", tap_prox: str = "per_update",
             variance_reduction: bool = True, seed: int = 0) -> optax.GradientTransformationExtraArgs:
  """Decoupled asynchronous proximal SVRG ([HGH] Alg. 1) in the round model (module docstring).

  The prox step needs the step size inside the transformation, so this returns the complete
  update ``x+ - x`` (no separate ``scale_by_learning_rate``): ``optax.apply_updates`` adds it.
  (The serial model of update-level staleness is ``vr_prox.serial_epoch``.)

  Args:
    learning_rate: step gamma (> 0), or a schedule of the round count.
    prox: a proximal operator (``prox_l1``, ``prox_elastic_net``, ...): ``prox(z, step)`` and
      ``prox.value(x)``.
    axis_name: worker mesh axis; None = one worker, no collectives.
    max_delay: D >= 0, the largest read delay in rounds (staleness in server updates is then
      up to ``K (D + 1) - 1``).
    delay_schedule: ``uniform`` (d ~ U{0..D}, seeded per round and worker), ``fixed`` (d = D),
      ``cyclic`` (worker k uses k mod (D+1)), ``trace`` (replay ``delay_trace[round % T, k]``).
    delay_trace: int array [T, W] of delays for ``trace`` (values <= max_delay).
    relaxation: server weight theta in (0, 1] of DAP (1 = the paper), or ``"auto"`` =
      1 / (K (D + 1)), which keeps the dead-zone recursion ``x_{t+1} = x_t - theta x_{t-tau}``
      stable (module docstring); the smooth part then moves with step theta*gamma, so scale
      gamma up by 1/theta.
    server: ``"add"`` (DAP: workers prox, server adds) or ``"prox"`` (TAP: server prox).
    tap_prox: TAP only: ``"per_update"`` (one prox per arrival, seeded order) or
      ``"per_round"`` (the authors' grouped server: one prox of K*gamma*h after the K summed
      steps, ``prox_{K g h}(x - g sum_j v_j)``).
    variance_reduction: False gives DAP-SGD / TAP-SGD ([LXZL]).
    seed: seed of the delay and arrival-order draws.

  Extra args of ``update(g_read, state, params, *, snapshot_grads=None, local_count=None,
  num_rows=None)``:
    ``snapshot_grads``: gradient of the same local minibatch at ``state.snapshot``
    (required with variance reduction); ``local_count``: rows n_k on this device and
    ``num_rows``: the global n (shard weight ``w_k = K n_k / n``; ``num_rows`` defaults to the n
    stored by ``refresh`` with variance reduction and is required without it). No
    ``local_count`` = equal shards, w_k = 1.
  """
  _check_options(learning_rate, prox, max_delay, delay_schedule, relaxation, server, tap_prox)
  max_delay = int(max_delay)
  trace = _delay_trace(delay_schedule, delay_trace, max_delay)
  schedule = np.asarray([_SCHEDULE_ID[delay_schedule], max_delay], np.int32)

  def init_fn(params):
    return _init_state(params, max_delay, schedule, trace, seed)

  def update_fn(updates, state, params=None, *, snapshot_grads=None, local_count=None, num_rows=None,
                **extra):
    del extra
    if params is None:
      raise ValueError("dap_svrg.update needs params (the current server version)")
    if variance_reduction and snapshot_grads is None:
      raise ValueError("dap_svrg with variance reduction needs the extra arg snapshot_grads "
                       "(gradient of the same minibatch at state.snapshot)")
    lr = learning_rate(state.count) if callable(learning_rate) else learning_rate
    weight = _shard_weight(state, local_count, num_rows, axis_size(axis_name), variance_reduction)
    v = variance_reduced_gradient(updates, snapshot_grads if variance_reduction else None, state.full_grad, weight)
    state = _record(state, params)   # the real current version, whatever ran after us last round
    if server == "add":
      delta = worker_delta(prox, _read(state, axis_name), v, lr)
      out = server_add(delta, params, _theta(relaxation, axis_name, max_delay), axis_name)
    else:
      out = server_prox(v, params, prox, lr, state, axis_name, tap_prox)
    return out, _advance(state, max_delay)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def tap_svrg(learning_rate, prox, *, axis_name: str | None = "data", max_delay: int = 0,
             delay_schedule: str = "uniform", delay_trace=None, tap_prox: str = "per_update",
             seed: int = 0) -> optax.GradientTransformationExtraArgs:
  """TAP / Async-ProxSVRG ([MCW]): workers send VR gradients, the server applies the prox."""
  return dap_svrg(learning_rate, prox, axis_name=axis_name, max_delay=max_delay,
                  delay_schedule=delay_schedule, delay_trace=delay_trace, server="prox",
                  tap_prox=tap_prox, seed=seed)


def prox_svrg(learning_rate, prox, *, seed: int = 0) -> optax.GradientTransformationExtraArgs:
  """ProxSVRG ([XZ] Alg. 1, uniform sampling, last-iterate snapshot) on one device:
  ``x <- prox_{gh}(x - g (grad f_i(x) - grad f_i(x~) + mu~))``."""
  return dap_svrg(learning_rate, prox, axis_name=None, max_delay=0, server="prox", seed=seed)


def dap_sgd(learning_rate, prox, *, axis_name: str | None = "data", max_delay: int = 0,
            delay_schedule: str = "uniform", delay_trace=None, relaxation: float | str = 1.0,
            seed: int = 0) -> optax.GradientTransformationExtraArgs:
  """DAP-SGD ([LXZL]): worker ``Delta = prox(x_hat - g grad f_i(x_hat)) - x_hat``, server adds.

  ``learning_rate`` may be a schedule of the round count (diminishing steps)."""
  return dap_svrg(learning_rate, prox, axis_name=axis_name, max_delay=max_delay,
                  delay_schedule=delay_schedule, delay_trace=delay_trace, relaxation=relaxation,
                  server="add", variance_reduction=False, seed=seed)


def tap_sgd(learning_rate, prox, *, axis_name: str | None = "data", max_delay: int = 0,
            delay_schedule: str = "uniform", delay_trace=None, tap_prox: str = "per_update", seed: int = 0
            ) -> optax.GradientTransformationExtraArgs:
  """Asynchronous proximal SGD with the prox on the server (no variance reduction)."""
  return dap_svrg(learning_rate, prox, axis_name=axis_name, max_delay=max_delay,
                  delay_schedule=delay_schedule, delay_trace=delay_trace, server="prox",
                  tap_prox=tap_prox, variance_reduction=False, seed=seed)
