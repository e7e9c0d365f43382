"""sign1bit: 1-bit gradient coding under stragglers (1-bit GC-DL) and its baselines, in JAX/optax.

C. Li, M. Skoglund, *Distributed Learning based on 1-Bit Gradient Coding in the Presence of
Stragglers*, arXiv:2403.14716. Partitions are stored on d workers each; every non-straggler sends
the unbiased stochastic sign of its encoded gradient, packed 8 coordinates per byte; every device
decodes the same unbiased estimate of the full gradient. See ``sign1bit/coding.py``.

Public API:
  allocations:      ``allocation``, ``Allocation``, ``shard_partitions``, ``worker_rows``
  transformations:  ``one_bit_gc`` / ``scale_by_one_bit_gc``, ``sgc`` / ``scale_by_sgc``,
                    ``ignore_stragglers`` / ``scale_by_ignore_stragglers``,
                    ``signsgd_majority`` / ``scale_by_sign_majority``, ``ef_signsgd`` / ``scale_by_ef_sign``
  states:           ``OneBitGCState``, ``EFSignSGDState``, ``state_specs``, ``diagnostics``
  mesh axis:        ``multi_steps`` (``optax.MultiSteps`` with per-worker accumulated gradients),
                    ``axis`` (the varying-axes probe ``axis.varying_axes`` and the per-worker layout)

Per-worker state (``clip_count``, EF ``error``): ``init`` returns the global layout, those leaves
with a leading axis of size W (1 with ``axis_name=None``); inside ``shard_map`` with
``state_specs(state, axis_name)`` as specs, ``update`` takes and returns each device's row.
  quantizer, wire:  ``stochastic_sign``, ``pack``, ``unpack``, ``payload_bytes``, ``payload_bits``
  references:       ``reference_decode``, ``estimator_mse``

References:
  Li, Skoglund, `Distributed Learning based on 1-Bit Gradient Coding in the Presence of
  Stragglers <https://arxiv.org/abs/2403.14716>`_, 2024
"""
from sign1bit.allocation import Allocation, allocation, shard_partitions, worker_rows
from sign1bit.coding import (EFSignSGDState, OneBitGCState, diagnostics, ef_signsgd, ignore_stragglers,
                             one_bit_gc, scale_by_ef_sign, scale_by_ignore_stragglers, scale_by_one_bit_gc,
                             scale_by_sgc, scale_by_sign_majority, sgc, signsgd_majority, state_specs)
from sign1bit import axis
from sign1bit.axis import multi_steps
from sign1bit.quantize import pack, payload_bits, payload_bytes, stochastic_sign, unpack
from sign1bit.reference import estimator_mse, reference_decode

__all__ = [
    "Allocation", "EFSignSGDState", "axis", "multi_steps", "OneBitGCState", "allocation", "diagnostics", "ef_signsgd",
    "estimator_mse", "ignore_stragglers", "one_bit_gc", "pack", "payload_bits", "payload_bytes",
    "reference_decode", "scale_by_ef_sign", "scale_by_ignore_stragglers", "scale_by_one_bit_gc",
    "scale_by_sgc", "scale_by_sign_majority", "sgc", "shard_partitions", "signsgd_majority",
    "state_specs", "stochastic_sign", "unpack", "worker_rows",
]
