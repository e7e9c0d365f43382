"""A proving ground: a small flax project of its own that uses the installed packages
``sfb``, ``dho``, ``sign1bit`` and ``vr_prox`` (never the repository's harness ``common/``)."""
