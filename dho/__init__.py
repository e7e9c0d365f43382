"""dho: FOSI and DHO2 (distributed hybrid-order optimisation) as optax transformations.

Public API: ``fosi`` and the presets ``fosi_adam``, ``fosi_momentum``, ``fosi_nesterov``,
``fosi_sgd``; ``dho2`` (coordinate-sharded curvature, MR delay, ADMM period rule
``admm="reference"`` and consensus ADMM ``admm="consensus"``);
``lanczos``, ``extreme_eigenpairs``, ``hvp``, ``curvature_basis`` (usable on their own); ``state_specs``,
``sharded_leaves``, ``payload_bytes``, ``basis_bytes``; ``coordinatewise`` (the base-optimizer check);
``paper_presets``.
Imports only jax, optax, numpy.
"""
from dho.fosi import (MOMENTUM, Dho2State, FosiState, FullBaseState, Pairs, basis_bytes, curvature_basis, dho2,
                      fosi, fosi_adam, fosi_momentum, fosi_nesterov, fosi_sgd, payload_bytes, sharded_leaves,
                      state_specs)
from dho.lanczos import Layout, LanczosResult, extreme_eigenpairs, hvp, lanczos, lanczos_dtype
from dho import coordinatewise, paper_presets

__all__ = ["MOMENTUM", "Dho2State", "FosiState", "FullBaseState", "Pairs", "basis_bytes", "curvature_basis", "dho2",
           "fosi", "fosi_adam", "fosi_momentum", "fosi_nesterov", "fosi_sgd", "payload_bytes", "sharded_leaves",
           "state_specs", "Layout", "LanczosResult", "extreme_eigenpairs", "hvp", "lanczos", "lanczos_dtype",
           "coordinatewise", "paper_presets"]
