"""Asynchronous DAP-SVRG / TAP-SVRG parameter server on Ray (issue 16).

``ps.run(ps.Spec(...))`` runs one server actor and K worker actors on a private local Ray node
(loopback, no dashboard); ``runtime`` is the launcher's entry for configs with
``runtime = "ray"`` (configs/async_dap_svrg.py). The math is ``vr_prox``'s, called with
``axis_name=None`` on each actor; ``vr_prox`` never imports Ray. Nothing here imports JAX or Ray
at module import.
"""
