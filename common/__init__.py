"""Harness shared by `launch.py`, tests and benchmarks.

Algorithm packages (`sfb`, `dho`, `sign1bit`, `vr_prox`) never import this package.
"""
