"""Experiments: the paper's named grids, sweeps (local or Ray), the results store, reports, the book's run cache,
the §3.5 pruning pipeline and depth search, and the initialisation and depth studies.

Imports :mod:`capslib.engine` and :mod:`capslib.pruning`, never the book.
"""
