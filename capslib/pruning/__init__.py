"""Pruning algorithms: CHIP channel independence (chip), prune plans and model rebuilding (prune), kernel similarity.

Imports only :mod:`capslib.engine`.
"""
