"""``scenemtl runs``: one row per run folder, as Markdown, LaTeX or CSV.

Each run is summarized by :mod:`scenemtl.reporting.runs` (its best validation by its
monitor, its tasks' headline metrics and the grader); this module adds the columns of
its configuration and cost and sorts the rows.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from scenemtl.errors import UserError
from scenemtl.reporting.metrics import GRADER
from scenemtl.reporting.run_dir import RunDir
from scenemtl.reporting.runs import RunSummary, find_runs, format_number, summarize_run
from scenemtl.reporting.tables import format_table


def _mapping(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _g(value: Any) -> str:
    return f"{value:g}" if isinstance(value, (int, float)) else str(value)


def _hp(summary: RunSummary) -> dict[str, str]:
    model = _mapping(summary.config.get("model"))
    net = _mapping(model.get("net"))
    data = _mapping(summary.config.get("data"))
    trainer = _mapping(summary.config.get("trainer"))
    weights = _mapping(model.get("loss_weights"))
    if summary.tasks and summary.status != "evaluation":  # a task without a weight weighs 1
        weights = {t: weights.get(t, 1) for t in summary.tasks}
    dil = net.get("dilation")
    return {
        "arch": str(net.get("architecture", "")),
        "opt": str(model.get("optimizer", "")),
        "lr": _g(model["lr"]) if isinstance(model.get("lr"), (int, float)) else "",
        "bs": str(data.get("batch_size", "")),
        "epochs": str(trainer.get("max_epochs", "")),
        "weights": "/".join(_g(v) for v in weights.values()),
        "dilation": "".join("T" if d else "F" for d in dil) if isinstance(dil, list) else "",
        "aspp/skip": "/".join("Y" if net.get(k, True) else "N" for k in ("aspp", "skip"))
        if net
        else "",
    }


LEADING_COLUMNS = (
    "run",
    "status",
    "arch",
    "opt",
    "lr",
    "bs",
    "epochs",
    "weights",
    "dilation",
    "aspp/skip",
    "params (M)",
)
TRAILING_COLUMNS = ("best epoch", "train time")


def metric_columns(summaries: list[RunSummary]) -> list[str]:
    """``grader`` (if any run has it), then every task's headline, first seen first."""
    columns: list[str] = []
    if any(GRADER in s.columns for s in summaries):
        columns.append(GRADER)
    for s in summaries:
        columns += [c for c in s.columns if c not in columns]
    return columns


def table_columns(summaries: list[RunSummary]) -> tuple[str, ...]:
    return (*LEADING_COLUMNS, *metric_columns(summaries), *TRAILING_COLUMNS)


def table_rows(summaries: list[RunSummary], root: Path) -> list[dict[str, str]]:
    rows = []
    for s in summaries:
        seconds = s.record.get("train_seconds")
        params = s.record.get("parameters")
        status = f"unreadable: {s.reason}" if s.status == "unreadable" else s.status
        row = {
            "run": str(s.path.relative_to(root)) if s.path.is_relative_to(root) else str(s.path),
            "status": status,
            **_hp(s),
            "params (M)": f"{params / 1e6:.2f}"
            if isinstance(params, int) and not isinstance(params, bool)
            else "",
            **{c: format_number(s.best.get(c), c) for c in metric_columns(summaries)},
            "best epoch": "" if s.best_epoch is None else str(s.best_epoch),
            "train time": f"{seconds / 60:.1f} min"
            if isinstance(seconds, (int, float)) and not isinstance(seconds, bool)
            else "",
        }
        rows.append(row)
    return rows


PAPER_SUFFIXES = ("_pixacc", "_mae", "_absrel")
"""With ``--last-epochs``, each task's metrics with these suffixes get a column too (the
multi-task papers' Pix Acc, Abs Err, Rel Err)."""


def average_runs(summaries: list[RunSummary], epochs: int) -> None:
    """Replace each run's reported values by their mean over its last ``epochs`` epochs
    (the multi-task papers' convention, see :mod:`scenemtl.engine.averaging`), adding the
    :data:`PAPER_SUFFIXES` columns; ``best_epoch`` then stays empty."""
    from scenemtl.engine.averaging import average_last_epochs

    for s in summaries:
        if s.status == "unreadable":
            continue
        try:
            means = average_last_epochs(s.path / RunDir.METRICS, epochs)
        except UserError:
            means = {}
        extras = [f"{t}{x}" for t in s.tasks for x in PAPER_SUFFIXES if f"{t}{x}" in means]
        s.columns = [*s.columns, *(c for c in extras if c not in s.columns)]
        s.best = {c: means.get(c) for c in s.columns}
        s.best_epoch = None


def run_table(
    root: str | os.PathLike, fmt: str = "md", sort: str = "grader", last_epochs: int | None = None
) -> str:
    """One row per run below ``root``. ``sort="grader"``: best grader first (runs without
    one after, by name); ``"name"``: by path. ``last_epochs``: report each metric as its
    mean over the run's last that many epochs (see :func:`average_runs`) instead of at the
    best validation."""
    root = Path(root)
    if not root.is_dir():
        what = "is not a folder" if root.exists() else "does not exist"
        raise UserError(f"runs folder {root} {what}")
    summaries = [summarize_run(p) for p in find_runs(root)]
    if last_epochs is not None:
        average_runs(summaries, last_epochs)
    summaries.sort(key=lambda s: str(s.path))
    if sort == "grader":

        def score(s: RunSummary) -> float:
            value = s.best.get(GRADER)
            return -value if value is not None else math.inf

        summaries.sort(key=score)  # stable: ties stay by name
    return format_table(table_rows(summaries, root), fmt, table_columns(summaries))
