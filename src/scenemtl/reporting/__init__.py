"""Reporting: reading run folders and showing their metrics, without torch.

The layer below both the commands (``runs``, ``fit``'s closing table) and the studies
(``study report``, the scheduler's ledger): the layout of a run folder
(:mod:`.run_dir`), reading one (:mod:`.runs`), what a reported metric is, its label, unit
and direction, the course grader and Δm (:mod:`.metrics`), and tables (:mod:`.tables`).
It imports nothing from scenemtl but :mod:`scenemtl.errors`, :mod:`scenemtl.names` and
:mod:`scenemtl.yamlfile`, and never torch: a table of runs loads in a fraction of a
second. ``pyproject.toml`` ([tool.importlinter]) keeps it so.
"""
