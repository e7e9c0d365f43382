"""vr_prox: decoupled asynchronous proximal SVRG (DAP-SVRG) and its baselines, in JAX/optax.

Z. Huo, B. Gu, H. Huang, *Decoupled Asynchronous Proximal Stochastic Gradient Descent with
Variance Reduction*, arXiv:1609.06804. Workers do the proximal step on a stale read and send
``Delta = prox(x_hat - gamma v) - x_hat``; the server only adds. Asynchrony is simulated
(bounded, seeded delays); see ``vr_prox/_dap.py`` for the round model and ``vr_prox/_serial.py``
for the update-level serial model.

Public API:
  transformations: ``dap_svrg``, ``tap_svrg``, ``prox_svrg``, ``dap_sgd``, ``tap_sgd``
  epoch pieces:    ``refresh``, ``full_gradient``, ``global_count``, ``read_params``, ``read_delay``, ``objective``,
                   ``to_varying``, ``state_specs``, ``epoch_fn``, ``sharded_epoch``, ``sample_indices``
  serial model:    ``serial_epoch``; event model: ``event_trace`` (host-side, replayed by serial_epoch)
  round pieces:    ``variance_reduced_gradient``, ``worker_delta``, ``server_add``, ``server_prox``
  prox operators:  ``prox_l1``, ``prox_elastic_net``, ``prox_group_lasso``,
                   ``prox_sparse_group_lasso``, ``prox_box``, ``prox_none``, ``make_prox``,
                   ``prox_cleanup``, ``soft_threshold``, ``prox_trace_norm``, ``svd_soft_threshold``
  sparse rows:     ``ell_from_csr``, ``ell_matvec``, ``ell_logistic_loss``, ``ell_fill`` (padded per-row
                   (indices, values) arrays; see ``vr_prox/_sparse.py`` for why this format)
  mesh axis:       ``vr_prox.axis`` (``varying_axes``, ``to_varying``, ``axis_size``, ``axis_index``)
  costs:           ``payload_bytes``
"""
from vr_prox import axis
from vr_prox._dap import (DapSvrgState, SCHEDULES, dap_sgd, dap_svrg, full_gradient, global_count, objective,
                          prox_svrg, read_delay, read_params, refresh, server_add, server_prox, state_specs,
                          tap_sgd, tap_svrg, variance_reduced_gradient, worker_delta)
from vr_prox._epoch import epoch_fn, sample_indices, sharded_epoch
from vr_prox._event import EventTrace, event_trace
from vr_prox._serial import serial_epoch
from vr_prox._sparse import ell_fill, ell_from_csr, ell_logistic_loss, ell_matvec
from vr_prox._trace_norm import prox_trace_norm, svd_soft_threshold
from vr_prox.axis import to_varying
from vr_prox._prox import (PROX_NAMES, make_prox, prox_box, prox_cleanup, prox_elastic_net, prox_group_lasso,
                           prox_l1, prox_none, prox_sparse_group_lasso, soft_threshold)


def payload_bytes(params) -> int:
  """Analytic bytes each device sends per round (DAP: one psum of Delta; TAP: its share of the
  all_gather of v): the size of the params, ``sum(leaf.size * itemsize)``."""
  import jax
  import numpy as np
  return int(sum(np.prod(np.shape(x)) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(params)))


__all__ = [
    "DapSvrgState", "EventTrace", "PROX_NAMES", "SCHEDULES", "dap_sgd", "dap_svrg", "epoch_fn", "event_trace", "full_gradient",
    "global_count",
    "make_prox", "objective", "payload_bytes", "prox_box", "prox_cleanup", "prox_elastic_net",
    "prox_group_lasso", "prox_l1", "prox_none", "prox_sparse_group_lasso", "prox_svrg", "read_delay",
    "prox_trace_norm", "read_params", "refresh", "sample_indices", "serial_epoch", "server_add", "server_prox",
    "sharded_epoch", "soft_threshold", "state_specs", "svd_soft_threshold", "tap_sgd", "tap_svrg", "to_varying",
    "variance_reduced_gradient", "worker_delta", "axis", "ell_fill", "ell_from_csr", "ell_logistic_loss",
    "ell_matvec",
]
