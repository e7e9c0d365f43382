"""dho: FOSI and DHO2 (distributed hybrid-order optimisation) as optax transformations.

Public API: ``fosi`` and the presets ``fosi_adam``, ``fosi_momentum``, ``fosi_nesterov``,
``fosi_sgd``; ``dho2`` (coordinate-sharded curvature, MR delay, ADMM period rule
``admm="reference"``) and ``consensus_admm`` (``dho2(admm="consensus")``); the curvature piece
``curvature`` (``LanczosPairs``, ``refresh_due``, ``maybe_refresh``, ``curvature_basis``);
``lanczos``, ``extreme_eigenpairs``, ``hvp`` (usable on their own; ``lanczos_start`` /
``lanczos_iteration`` / ``LanczosState``: the same iteration one step at a time); ``state_specs``,
``multi_steps``, ``payload_bytes``, ``basis_bytes``; ``separate_refresh`` (a transformation's
curvature refresh as its own function, whole or one Lanczos iteration per call, to compile apart from
the step); ``coordinatewise`` (the base-optimizer
check); ``axis`` (the varying-axes probe and the per-device state layout).

``init`` returns the global layout: leaves that differ per device carry a leading axis of size P
(``num_shards``; 1 with ``axis_name=None``); ``state_specs(state, axis_name)`` gives them
``P(axis_name)`` and inside ``shard_map`` ``update`` takes and returns each device's row.
Imports only jax, optax, numpy.

References:
  [F]  H. Sivan, M. Gabel, A. Schuster. "FOSI: Hybrid First and Second Order Optimization",
       ICLR 2024 (arXiv:2302.08484).
  [P1] "Accelerating Deep Neural Network Training via Distributed Hybrid Order Optimization"
       (DHO2 v1, arXiv:2505.00982).
  [P2] "DHO2: Accelerating Distributed Hybrid Order Optimization via Model Parallelism and ADMM"
       (DHO2 v2) and its released code, github ShunxianGu/DHO2 (``DHO2_ADMM_v2.py``).
  [B]  S. Boyd et al. "Distributed Optimization and Statistical Learning via the Alternating
       Direction Method of Multipliers", Found. Trends ML 3(1), 2011 (``consensus_admm``).
"""
from dho.curvature import LanczosPairs, Pairs, curvature_basis, maybe_refresh, refresh_due
from dho.fosi import (MOMENTUM, ConsensusState, Dho2State, FosiState, FullBaseState, SeparateRefresh, basis_bytes,
                      consensus_admm, dho2, fosi, fosi_adam, fosi_momentum, fosi_nesterov, fosi_sgd, payload_bytes,
                      separate_refresh, state_specs)
from dho.lanczos import (Layout, LanczosResult, LanczosState, ShardedLanczosState, extreme_eigenpairs, hvp,
                         lanczos, lanczos_dtype, lanczos_iteration, lanczos_start)
from dho import axis, coordinatewise, curvature
from dho.axis import multi_steps

__all__ = ["MOMENTUM", "ConsensusState", "Dho2State", "FosiState", "FullBaseState", "LanczosPairs", "Pairs",
           "axis", "basis_bytes", "consensus_admm", "coordinatewise", "curvature", "curvature_basis", "dho2",
           "extreme_eigenpairs", "fosi", "fosi_adam", "fosi_momentum", "fosi_nesterov", "fosi_sgd", "hvp",
           "lanczos", "lanczos_dtype", "lanczos_iteration", "lanczos_start", "Layout", "LanczosResult",
           "LanczosState", "ShardedLanczosState", "maybe_refresh", "multi_steps", "payload_bytes",
           "refresh_due", "SeparateRefresh", "separate_refresh", "state_specs"]
