"""The companion book: its build (build, site), what chapters share (params, runner, tables, show, plots, widgets),
one module per chapter (chapters/), the verdicts' evidence (collapse_runs), the reproduction page and notebook batches.

Top layer: may import every other package; nothing below imports it.
"""
