"""Conformance entries of the PowerSGD peer baseline (common/powersgd.py)."""
import optax

from common import powersgd
from tests.conformance import Entry, softmax_problem

_params, _loss, _data = softmax_problem(0, 0)

ENTRIES = [
    # w (12, 5) at rank 1: P (12) + Q (5) floats; the bias (5) is averaged densely. Not exact: a
    # rank-1 estimate from 8 workers differs from the one of a single worker holding all rows.
    Entry("powersgd_rank1_sgd", lambda axis_name, learning_rate: optax.chain(
        powersgd.scale_by_powersgd(
        1, axis_name=axis_name, num_workers=None if axis_name is None else 8), optax.sgd(learning_rate)),
          _params, _loss, _data, hparams={"learning_rate": 0.1}, state_specs=powersgd.state_specs,
          exact=False, payload_bytes=lambda P: 4 * ((12 + 5) + 5)),
]
