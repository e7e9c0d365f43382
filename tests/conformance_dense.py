"""Conformance entries of the dense data-parallel baseline (the suite's first entry)."""
import optax

from common import baseline
from tests.conformance import Entry, softmax_problem

_params, _loss, _data = softmax_problem(0, 0)


ENTRIES = [
    Entry("dense_sgd", lambda axis_name, learning_rate: baseline.dense_data_parallel(
        optax.sgd(learning_rate), axis_name), _params, _loss, _data, hparams={"learning_rate": 0.1},
          payload_bytes=lambda P: 4 * (12 * 5 + 5)),
    Entry("dense_adam", lambda axis_name, learning_rate: baseline.dense_data_parallel(
        optax.adam(learning_rate), axis_name), _params, _loss, _data, hparams={"learning_rate": 0.01},
          payload_bytes=lambda P: 4 * (12 * 5 + 5)),
]
