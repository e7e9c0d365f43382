"""Conformance entries of sign1bit.

With ``axis_name=None`` a scheme is one worker (W = 1), so the allocations are built for the
axis at hand: frc(8, d) inside ``shard_map``, frc(1, 1) on one device. Real-valued SGC with
p = 0 and d = 1 decodes (1/N) Σ_i ∇f_i, the global mean gradient over equal shards: exact.
The 1-bit schemes are stochastic (exact=False). Per-worker leaves (``clip_count``, EF
``error``) come from ``init`` with a leading axis of W; ``sign1bit.state_specs`` places them. Payload per device: ⌈D/8⌉ bytes, + 4 with a per-worker scale,
4 D for fp32; D = 12·5 + 5 = 65.
"""

import sign1bit
from tests.conformance import Entry, softmax_problem

_D = 12 * 5 + 5

_params, _loss, _data = softmax_problem(5, 2)


def _alloc(axis_name, d):
  return sign1bit.allocation("frc", 1, 1) if axis_name is None else sign1bit.allocation("frc", 8, d)


def _workers(axis_name):
  return None if axis_name is None else 8


ENTRIES = [
    Entry("sign1bit_one_bit_gc_linf", lambda axis_name, learning_rate: sign1bit.one_bit_gc(
        learning_rate, _alloc(axis_name, 2), 0.25, "linf", axis_name=axis_name, seed=1),
          _params, _loss, _data, hparams={"learning_rate": 0.1}, state_specs=sign1bit.state_specs,
          exact=False, payload_bytes=lambda P: sign1bit.payload_bytes(_D, "one_bit_scale")),
    Entry("sign1bit_one_bit_gc_const", lambda axis_name, learning_rate: sign1bit.one_bit_gc(
        learning_rate, _alloc(axis_name, 4), 0.0, 0.5, axis_name=axis_name),
          _params, _loss, _data, hparams={"learning_rate": 0.1}, state_specs=sign1bit.state_specs,
          exact=False, payload_bytes=lambda P: sign1bit.payload_bytes(_D, "one_bit")),
    Entry("sign1bit_sgc_exact", lambda axis_name, learning_rate: sign1bit.sgc(
        learning_rate, _alloc(axis_name, 1), 0.0, axis_name=axis_name),
          _params, _loss, _data, hparams={"learning_rate": 0.1}, state_specs=sign1bit.state_specs,
          exact=True, payload_bytes=lambda P: sign1bit.payload_bytes(_D, "fp32")),
    Entry("sign1bit_ef_signsgd", lambda axis_name, learning_rate: sign1bit.ef_signsgd(
        learning_rate, 0.25, axis_name=axis_name, seed=3, num_workers=_workers(axis_name)),
          _params, _loss, _data, hparams={"learning_rate": 0.05}, state_specs=sign1bit.state_specs,
          exact=False, payload_bytes=lambda P: sign1bit.payload_bytes(_D, "one_bit_scale")),
    Entry("sign1bit_signsgd_majority", lambda axis_name, learning_rate: sign1bit.signsgd_majority(
        learning_rate, 0.25, axis_name=axis_name, num_workers=_workers(axis_name)),
          _params, _loss, _data, hparams={"learning_rate": 0.01}, state_specs=sign1bit.state_specs,
          exact=False, payload_bytes=lambda P: sign1bit.payload_bytes(_D, "one_bit")),
]
