"""Conformance entries of vr_prox (round model; one ``update`` = one round).

The snapshot is never refreshed inside the conformance loop, so it stays at the initial
params; ``snapshot_grads`` is the local minibatch gradient there (taken at varying params
inside ``shard_map``, so no hidden all-reduce). ``dap_svrg`` with ``relaxation="auto"``
(theta = 1/K) and ``prox_none`` equals the single-device step on the global batch exactly;
with a non-linear prox or theta = 1 the K worker deltas are not one global step (exact=False).
Payload per round: one psum of Delta (DAP) or this device's share of the all_gather of v (TAP):
4 bytes per float32 parameter.
"""
import jax
from jax import lax

import vr_prox
from vr_prox.axis import varying_axes
from tests.conformance import AXIS, Entry, softmax_problem

_params, _loss, _data = softmax_problem(3, 1)


def _snapshot_grads(params, x, y):
  del params
  p0 = _params()
  if AXIS in varying_axes(x):  # inside shard_map: differentiate at varying params (local gradient)
    p0 = jax.tree.map(lambda a: lax.pcast(a, AXIS, to="varying"), p0)
  return {"snapshot_grads": jax.grad(_loss)(p0, x, y)}


_PAYLOAD = lambda P: 4 * (12 * 5 + 5)  # noqa: E731

ENTRIES = [
    Entry("vr_prox_dap_svrg_l1", lambda axis_name, learning_rate: vr_prox.dap_svrg(
        learning_rate, vr_prox.prox_l1(1e-2), axis_name=axis_name, max_delay=2, delay_schedule="uniform"),
          _params, _loss, _data, hparams={"learning_rate": 0.1}, extra_args=_snapshot_grads, exact=False,
          payload_bytes=_PAYLOAD),
    Entry("vr_prox_dap_svrg_pmean_exact", lambda axis_name, learning_rate: vr_prox.dap_svrg(
        learning_rate, vr_prox.prox_none(), axis_name=axis_name, relaxation="auto"),
          _params, _loss, _data, hparams={"learning_rate": 0.1}, extra_args=_snapshot_grads, exact=True,
          payload_bytes=_PAYLOAD),
    Entry("vr_prox_tap_svrg_elastic_net", lambda axis_name, learning_rate: vr_prox.tap_svrg(
        learning_rate, vr_prox.prox_elastic_net(1e-2, 1e-2), axis_name=axis_name, max_delay=1),
          _params, _loss, _data, hparams={"learning_rate": 0.1}, extra_args=_snapshot_grads, exact=False,
          payload_bytes=_PAYLOAD),
    Entry("vr_prox_dap_sgd_l1", lambda axis_name, learning_rate: vr_prox.dap_sgd(
        learning_rate, vr_prox.prox_l1(1e-2), axis_name=axis_name, relaxation="auto"),
          _params, _loss, _data, hparams={"learning_rate": 0.1}, exact=False, payload_bytes=_PAYLOAD),
]
