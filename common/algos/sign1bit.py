"""Adapter: 1-bit gradient coding under stragglers and its baselines (``config.algorithm = "sign1bit"``).

Li & Skoglund, arXiv:2403.14716 (spec ``shared/specs/sign1bit.md``), package ``sign1bit``.

Data layout. The training rows are cut into N partitions (``algo.partitions``: ``"sorted"`` sorts
them by label first, the non-i.i.d. regime; ``"shuffled"`` uses a seeded permutation), with
``np.array_split`` so sizes differ by at most one and no row is dropped. Device i holds the
partitions S_i of the allocation (``algo.allocation``, ``algo.redundancy`` d), concatenated
(``partition_rows``): memory grows by d. The d = 1 baselines (``ignore_stragglers*``,
``signsgd_majority``, ``ef_signsgd``) always use frc with d = 1, i.e. N = W.

Local gradient. f_k = mean loss over partition k + (λ/2)‖w‖² (λ = ``algo.l2``, every parameter),
F = (1/N) Σ_k f_k. Each device differentiates Σ_{k∈S_i} f_k on its whole shard (full partition
gradients, no minibatch: spec §5.3; ``config.batch_size`` is unused) at
``lax.pcast(params, "data", to="varying")``, with per-row weights 1/n_k (0 on padding) fixed at
build time. The scheme's decoder turns these into ĝ with E[ĝ] = ∇F (GC schemes); the update is
plain SGD w ← w − ``config.lr`` · ĝ (``config.optimizer`` must be ``sgd``).

Randomness. Stragglers and quantizer noise come from the scheme's own key (``config.seed``) in
the optimizer state (raw key data) and its step counter; the harness's step key is unused.

Metrics (replicated scalars):
  * ``loss``: the exact objective F at the step's (pre-update) params, from one scalar psum of
    the devices' Σ_{k∈S_i} f_k (every partition is on exactly d devices: F = Σ_i / (N d));
  * ``active``: |R_t|, the workers that reported this step;
  * ``uplink_bits``: cumulative Σ_t |R_t| · bits per worker (``sign1bit.payload_bits``; f32);
  * ``clipped`` (constant bound only): fraction of the reporting workers' coordinates with
    |c| > B this step (it rides in the same psum as the loss).
The analytic payload is ``sign1bit.payload_bytes`` plus that psum (one or two floats).
"""
from __future__ import annotations

import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

import sign1bit
from common.algos import defaults
from common.algos.base import BuildContext, Method, param_count
from common.errors import ConfigError

SCHEMES = ("one_bit_gc", "sgc", "ignore_stragglers", "ignore_stragglers_1bit", "signsgd_majority",
           "ef_signsgd")
GC_SCHEMES = ("one_bit_gc", "sgc")                       # use algo.allocation / algo.redundancy
BOUND_SCHEMES = ("one_bit_gc", "ignore_stragglers_1bit")  # use algo.bound
INT8_SCHEMES = ("one_bit_gc", "ignore_stragglers_1bit", "signsgd_majority")  # may use wire=int8_psum
PARTITIONS = ("sorted", "shuffled")


default_config = defaults.sign1bit


# ----------------------------------------------------------------------------- config parsing


def parse_bound(value):
  """``"linf"`` or a float from the ``algo.bound`` string (numbers are accepted too); the
  constructors check that it is finite and > 0.

  Raises:
    ConfigError("algo.bound", ...) when it is neither.
  """
  if isinstance(value, str):
    text = value.strip().lower()
    if text == "linf":
      return "linf"
    try:
      return float(text)
    except ValueError:
      pass
  elif isinstance(value, (int, float)) and not isinstance(value, bool):
    return float(value)
  raise ConfigError("algo.bound", f"must be 'linf' or a number > 0, got {value!r}")


def _num_devices(config) -> int:
  return config.num_devices or jax.device_count()


def _alloc_args(config) -> tuple[str, int, int]:
  """(kind, d, m) of the allocation the scheme uses (d = 1 baselines: frc, 1, 1)."""
  a = config.algo
  if a.scheme in GC_SCHEMES:
    return a.allocation, a.redundancy, a.partitions_per_group
  return "frc", 1, 1


def make_allocation(config, num_devices: int) -> sign1bit.Allocation:
  """The allocation of ``config`` over ``num_devices`` workers."""
  kind, d, m = _alloc_args(config)
  return sign1bit.allocation(kind, num_devices, d, partitions_per_group=m)


# The constructors' argument names, as their ValueErrors name them, and the config field of each.
ARG_FIELDS = {"straggler_prob": "algo.straggler_prob", "bound": "algo.bound", "wire": "algo.wire",
              "allocation": "algo.allocation", "redundancy": "algo.redundancy",
              "partitions_per_group": "algo.partitions_per_group", "num_workers": "num_devices"}


def _built(make):
  """``make()``; a constructor's ``ValueError`` becomes the ``ConfigError`` of the first argument it
  names (``"frc needs redundancy d to divide num_workers"`` is about ``algo.redundancy``)."""
  try:
    return make()
  except ConfigError:
    raise
  except ValueError as e:
    named = [w for w in re.findall(r"[A-Za-z_]\w*", str(e)) if w in ARG_FIELDS]
    raise ConfigError(ARG_FIELDS[named[0]] if named else "algo", str(e)) from None


def _check_harness_fields(config) -> None:
  """The fields the library does not see: scheme, partitions, l2 and the optimizer."""
  a = config.algo
  if a.scheme not in SCHEMES:
    raise ConfigError("algo.scheme", f"unknown scheme {a.scheme!r}; allowed: {', '.join(SCHEMES)}")
  if a.partitions not in PARTITIONS:
    raise ConfigError("algo.partitions", f"unknown partitions {a.partitions!r}; allowed: {', '.join(PARTITIONS)}")
  if not (isinstance(a.l2, (int, float)) and math.isfinite(a.l2) and a.l2 >= 0):
    raise ConfigError("algo.l2", f"must be a finite number >= 0, got {a.l2!r}")
  if config.optimizer != "sgd":
    raise ConfigError("optimizer", f"sign1bit schemes apply plain SGD w -= lr * ghat (momentum or Adam after "
                      f"the decoder changes the method); use --config.optimizer=sgd, got {config.optimizer!r}")


def validate(config, dataset) -> None:
  """The harness's own fields here; the allocation and the scheme by their constructors
  (``sign1bit.allocation``, ``sign1bit.<scheme>``), whose ``ValueError`` names the field."""
  _check_harness_fields(config)
  w = _num_devices(config)
  kind, d, m = _alloc_args(config)
  base = _built(lambda: sign1bit.allocation(kind, w, d))   # m = 1: N is known before an N x N check runs
  partitions = base.num_partitions * (m if kind == "frc" else 1)
  if dataset is not None and partitions > dataset.num_train:
    raise ConfigError("algo.partitions_per_group", f"N = {partitions} partitions for only "
                      f"{dataset.num_train} training rows; use at most {dataset.num_train // base.num_partitions}")
  alloc = _built(lambda: make_allocation(config, w))
  _built(lambda: make_transform(config, alloc, "data"))


# ----------------------------------------------------------------------------- data layout


def partition_sizes(num_rows: int, num_partitions: int) -> list[int]:
  """n_k of ``np.array_split`` (they do not depend on the row order)."""
  return [len(b) for b in np.array_split(np.arange(num_rows), num_partitions)]


def partitions(config, labels: np.ndarray, num_partitions: int) -> list[np.ndarray]:
  """Train-row indices of the N partitions: label-sorted (stable) or a seeded permutation."""
  n = len(labels)
  if config.algo.partitions == "sorted":
    order = np.argsort(np.asarray(labels), kind="stable")
  else:
    order = np.random.default_rng([config.seed, 0x5161]).permutation(n)
  return np.array_split(order, num_partitions)


def partition_rows(config, num_rows: int, num_devices: int) -> list[np.ndarray]:
  """Rows each device holds: its partitions S_i, concatenated in ``alloc.index`` order.

  The labels for ``partitions="sorted"`` come from reloading the config's dataset (the harness's
  own deterministic split, ``common.train.load_dataset``).
  """
  alloc = make_allocation(config, num_devices)
  if config.algo.partitions == "sorted":
    from common.train import load_dataset   # lazy: common.train imports the adapter registry
    labels = load_dataset(config).y_train
    if len(labels) != num_rows:
      raise ValueError(f"partition_rows: config.dataset has {len(labels)} training rows, the harness "
                       f"passed num_rows={num_rows}; label-sorted partitions need the config's dataset")
  else:
    labels = np.zeros(num_rows, np.int32)
  return sign1bit.worker_rows(alloc, partitions(config, labels, alloc.num_partitions))


def row_weights(alloc: sign1bit.Allocation, num_rows: int, dtype=np.float32) -> np.ndarray:
  """[W, rows]: 1/n_k on device i's rows of partition k (in ``partition_rows`` order), 0 on padding."""
  sizes = partition_sizes(num_rows, alloc.num_partitions)
  per_device = [np.concatenate([np.full(sizes[k], 1.0 / sizes[k]) for k in idx]) for idx in alloc.index]
  rows = max(len(r) for r in per_device)
  out = np.zeros((alloc.num_workers, rows), dtype)
  for i, r in enumerate(per_device):
    out[i, :len(r)] = r
  return out


# ----------------------------------------------------------------------------- building


def payload_scheme(config) -> str:
  """The ``sign1bit.payload_bytes`` scheme name of what one reporting worker sends."""
  a = config.algo
  if a.scheme in ("sgc", "ignore_stragglers"):
    return "fp32"
  if a.scheme == "ef_signsgd":
    return "one_bit_scale"
  if a.wire == "int8_psum":
    return "int8_psum"
  if a.scheme in BOUND_SCHEMES and parse_bound(a.bound) == "linf":
    return "one_bit_scale"
  return "one_bit"


def make_transform(config, alloc: sign1bit.Allocation, axis_name: str | None) -> optax.GradientTransformation:
  """The sign1bit transformation of ``config`` (learning rate included)."""
  a = config.algo
  lr, p = config.lr, a.straggler_prob
  common = dict(axis_name=axis_name, seed=config.seed, wire=a.wire)
  w = alloc.num_workers
  if a.scheme == "one_bit_gc":
    return sign1bit.one_bit_gc(lr, alloc, p, parse_bound(a.bound), **common)
  if a.scheme == "sgc":
    return sign1bit.sgc(lr, alloc, p, **common)
  if a.scheme == "ignore_stragglers":
    return sign1bit.ignore_stragglers(lr, p, quantize=False, num_workers=w, **common)
  if a.scheme == "ignore_stragglers_1bit":
    return sign1bit.ignore_stragglers(lr, p, quantize=True, bound=parse_bound(a.bound), num_workers=w, **common)
  if a.scheme == "signsgd_majority":
    return sign1bit.signsgd_majority(lr, p, num_workers=w, **common)
  return sign1bit.ef_signsgd(lr, p, num_workers=w, **common)


def build(config, ctx: BuildContext) -> Method:
  a = config.algo
  axis = ctx.axis_name
  alloc = make_allocation(config, ctx.num_devices)
  tx = make_transform(config, alloc, axis)
  model = ctx.model
  dtype = jax.tree.leaves(ctx.params)[0].dtype
  weights = row_weights(alloc, ctx.dataset.num_train, dtype)
  ell, n_parts, d = alloc.load, alloc.num_partitions, alloc.redundancy
  l2 = float(a.l2)
  num_params = param_count(ctx.params)
  bits_per_worker = sign1bit.payload_bits(num_params, payload_scheme(config))
  constant_bound = a.scheme in BOUND_SCHEMES and parse_bound(a.bound) != "linf"

  def init_state(params, key):
    del key
    return tx.init(params)

  def state_specs(state):
    return sign1bit.state_specs(state, axis)

  def local_objective(p, x, y, wts):
    """Σ_{k∈S_i} f_k on this device's rows."""
    data_term = jnp.sum(wts * model.per_example_loss(p, x, y))
    return data_term + ell * 0.5 * l2 * sum(jnp.sum(jnp.square(v)) for v in jax.tree.leaves(p))

  def local_step(params, opt_state, shard, key):
    del key  # the scheme's randomness is its own key + count in opt_state
    wts = jnp.asarray(weights)[lax.axis_index(axis)]
    value, grads = jax.value_and_grad(local_objective)(lax.pcast(params, axis, to="varying"),
                                                       shard.x, shard.y, wts)
    before = sign1bit.diagnostics(opt_state)
    updates, state = tx.update(grads, opt_state, params)
    after = sign1bit.diagnostics(state)
    params = optax.apply_updates(params, updates)
    stats = [value]
    if constant_bound:
      stats.append((after["clip_count"][0] - before["clip_count"][0]).astype(value.dtype))   # this worker's row
    stats = lax.psum(jnp.stack(stats), axis)
    active = after["last_active"]
    metrics = {"loss": stats[0] / (n_parts * d),
               "active": active.astype(jnp.float32),
               "uplink_bits": bits_per_worker * after["active_total"].astype(jnp.float32)}
    if constant_bound:
      metrics["clipped"] = stats[1] / (num_params * jnp.maximum(active, 1).astype(stats.dtype))
    return params, state, metrics

  scalar_bytes = np.dtype(dtype).itemsize * (2 if constant_bound else 1)
  payload = sign1bit.payload_bytes(num_params, payload_scheme(config)) + scalar_bytes
  forced = "" if a.scheme in GC_SCHEMES else " (d = 1 baseline: frc, N = W)"
  bound = f", B={a.bound}" if a.scheme in BOUND_SCHEMES else ""
  wire = f", {a.wire} wire" if a.scheme in INT8_SCHEMES else ""
  describe = (f"{a.scheme}: {alloc.kind} W={alloc.num_workers} N={n_parts} d={d} l={ell}{forced}, "
              f"p={a.straggler_prob}{bound}{wire}, {a.partitions} partitions, l2={a.l2}; full-partition "
              f"gradients, SGD lr={config.lr}; {bits_per_worker} uplink bits per reporting worker")
  return Method(init_state=init_state, local_step=local_step, state_specs=state_specs,
                analytic_payload=payload, describe=describe)
