"""Reading run folders: the reporting convention and one run's summary.

A run is reported at its best validation by the run's *monitor*, the metric that chose
its ``best.ckpt`` (``run.json`` "monitor", e.g. ``{"metric": "val/grader", "mode":
"max"}``). Runs without one (older runs, ``scenemtl validate`` of a checkpoint) are
reported by ``val/grader`` when they log it, else by their first task's headline metric
in that task's direction. The columns are the headline metric of each task the run
learns (``run.json`` "tasks", else the ``val/<task>`` columns of ``metrics.csv``) and
the course grader when the run has it, all taken at that same validation. How each
column is labelled and ranked comes from ``run.json`` too (:mod:`.metrics`).

A run folder that cannot be read (``run.json`` that is not a JSON object, a
``metrics.csv`` that is not UTF-8 text or has a non-numeric epoch, a ``config.yaml``
that is not a mapping, ...) is summarized as ``unreadable`` with the reason.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scenemtl.errors import UserError
from scenemtl.reporting.metrics import GRADER, LEGACY_KINDS, Headline, headline_of
from scenemtl.reporting.run_dir import RunDir, RunFamily
from scenemtl.yamlfile import load_yaml_text

LEGACY_TASKS = tuple(LEGACY_KINDS)
"""The tasks of every run before tasks were data; listed first when a run's tasks are
read off its metric names."""


class _Unreadable(Exception):
    """A run folder's file cannot be interpreted; the message says which and why."""


@dataclass
class RunSummary:
    """One run directory, as the run table shows it."""

    path: Path
    name: str
    # "finished", "unfinished" (killed, still running, or never validated), "crashed",
    # "diverged" (non-finite loss, weights or predictions), "interrupted" (Ctrl-C),
    # "evaluation" (`scenemtl validate|test` of a checkpoint),
    # "unreadable" (see `reason`)
    status: str
    best_epoch: int | None = None
    best: dict[str, float | None] = field(default_factory=dict)
    """Column -> value at the best validation (None: not logged there)."""
    test: dict[str, float | None] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    record: dict[str, Any] = field(default_factory=dict)
    tasks: list[str] = field(default_factory=list)
    columns: list[str] = field(default_factory=list)
    """The headline metrics shown: each task's, then ``grader`` when the run has it."""
    monitor: tuple[str, str] | None = None
    """(metric, "max"|"min") that picks the best validation."""
    headlines: dict[str, Headline] = field(default_factory=dict)
    """task (and ``grader``) -> how its headline metric is labelled and ranked."""
    reason: str | None = None
    """Why the run is unreadable."""

    @property
    def directions(self) -> dict[str, str]:
        """task -> "max"|"min", the direction of its headline metric."""
        return {t: self.headlines[t].mode for t in self.tasks}

    def headline(self, column: str) -> Headline:
        """How ``column`` (a task or ``grader``) is labelled and ranked in this run."""
        return self.headlines.get(column) or headline_of({}, column)


def _float(text: Any) -> float | None:
    try:
        value = float(text) if text not in (None, "") else None
    except (TypeError, ValueError):
        return None
    return value if value is not None and math.isfinite(value) else None


def _kind(value: Any) -> str:
    return {list: "a list", str: "a string", int: "a number", float: "a number"}.get(
        type(value), type(value).__name__
    )


# --------------------------------------------------------------------------------------
# the files of a run


def _read_text(path: Path) -> str:
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise _Unreadable(f"{path.name}: not UTF-8 text") from None
    except OSError as e:
        raise _Unreadable(f"{path.name}: {e.strerror or e}") from None


def _read_record(run: RunDir) -> dict[str, Any]:
    if not run.record.is_file():
        return {}
    try:
        record = json.loads(_read_text(run.record))
    except ValueError:
        raise _Unreadable(f"{run.RECORD}: not valid JSON") from None
    if not isinstance(record, dict):
        raise _Unreadable(f"{run.RECORD}: {_kind(record)}, not a JSON object")
    return record


def _read_config(run: RunDir) -> dict[str, Any]:
    if not run.config.is_file():
        return {}
    try:
        config = load_yaml_text(_read_text(run.config), run.CONFIG)
    except UserError as e:
        raise _Unreadable(str(e)) from None
    if config is None:
        return {}
    if not isinstance(config, dict):
        raise _Unreadable(f"{run.CONFIG}: {_kind(config)}, not a mapping")
    for key in ("trainer", "model", "data"):
        if config.get(key) is not None and not isinstance(config[key], dict):
            raise _Unreadable(f"{run.CONFIG}: '{key}' is {_kind(config[key])}, not a mapping")
    return config


def _read_trace(run: RunDir) -> tuple[list[str], list[dict[str, str]]]:
    """The header and rows of ``metrics.csv`` (nothing if there is none)."""
    if not run.metrics.is_file():
        return [], []
    text = _read_text(run.metrics)
    try:
        reader = csv.DictReader(io.StringIO(text, newline=""))
        rows = list(reader)
    except csv.Error as e:
        raise _Unreadable(f"{run.METRICS}: {e}") from None
    return list(reader.fieldnames or []), rows


def read_metrics(run_dir: str | os.PathLike) -> list[dict[str, str]]:
    """The rows of a run's ``metrics.csv`` (empty without one).

    Raises:
        UserError: the file is not UTF-8 CSV.
    """
    try:
        return _read_trace(RunDir(Path(run_dir)))[1]
    except _Unreadable as e:
        raise UserError(f"{run_dir}: {e}") from None


def run_status(run: RunDir) -> str | None:
    """The ``status`` of the run's ``run.json`` (None: no record, or not readable)."""
    try:
        return json.loads(run.record.read_text(encoding="utf-8")).get("status")
    except (OSError, ValueError, AttributeError):
        return None


def finished_run(family: RunFamily) -> RunDir | None:
    """The newest version of ``family`` whose training finished."""
    for run in reversed(family.versions()):
        if run_status(run) == "finished":
            return run
    return None


def _epoch(row: dict[str, str], line: int) -> int | None:
    text = row.get("epoch")
    if text in (None, ""):
        return None
    value = _float(text)
    if value is None or value < 0 or value != int(value):
        raise _Unreadable(f"metrics.csv line {line}: epoch {text!r} is not a number")
    return int(value)


# --------------------------------------------------------------------------------------
# what a run learns and how it is reported


def _tasks(record: dict[str, Any], header: list[str]) -> list[str]:
    """The run's tasks: ``run.json`` "tasks", else the headline columns of its trace."""
    names = record.get("tasks")
    if names is not None:
        if not (isinstance(names, list) and all(isinstance(n, str) and n for n in names)):
            raise _Unreadable(f"{RunDir.RECORD}: 'tasks' is not a list of task names")
        return list(names)
    heads: list[str] = []
    for key in header:
        for prefix in ("val/", "test/"):
            metric = key[len(prefix) :] if key.startswith(prefix) else ""
            if (
                metric
                and "/" not in metric
                and metric != GRADER
                and metric != "loss"
                and not metric.startswith("loss_")
                and metric not in heads
            ):
                heads.append(metric)
    # depth_mae is a metric of depth, not a task
    tasks = [m for m in heads if not any(m.startswith(f"{o}_") for o in heads if o != m)]
    legacy = [t for t in LEGACY_TASKS if t in tasks]
    return legacy + sorted(t for t in tasks if t not in LEGACY_TASKS)


def _check_record(record: dict[str, Any]) -> None:
    """Refuse task fields of ``run.json`` that a report could not use."""
    directions = record.get("directions")
    if directions is not None and not (
        isinstance(directions, dict) and all(v in ("max", "min") for v in directions.values())
    ):
        raise _Unreadable(f"{RunDir.RECORD}: 'directions' is not {{task: max|min}}")
    for key in ("labels", "units"):
        value = record.get(key)
        if value is not None and not (
            isinstance(value, dict) and all(isinstance(v, str) for v in value.values())
        ):
            raise _Unreadable(f"{RunDir.RECORD}: '{key}' is not {{task: text}}")


def _monitor(
    record: dict[str, Any], header: list[str], tasks: list[str], headlines: dict[str, Headline]
) -> tuple[str, str] | None:
    monitor = record.get("monitor")
    if monitor is not None:
        if not (
            isinstance(monitor, dict)
            and isinstance(monitor.get("metric"), str)
            and monitor.get("mode") in ("max", "min")
        ):
            raise _Unreadable(f"{RunDir.RECORD}: 'monitor' is not {{metric, mode: max|min}}")
        return monitor["metric"], monitor["mode"]
    if f"val/{GRADER}" in header:
        return f"val/{GRADER}", "max"
    if tasks:
        return f"val/{tasks[0]}", headlines[tasks[0]].mode
    return None


def _max_epochs(record: dict[str, Any], config: dict[str, Any]) -> int | None:
    for value in (record.get("max_epochs"), (config.get("trainer") or {}).get("max_epochs")):
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return value
    return None


def summarize_run(run_dir: str | os.PathLike) -> RunSummary:
    """One run folder as the run table shows it; never raises for what the folder holds
    (an unreadable run gets status ``unreadable`` and a ``reason``)."""
    run = RunDir(Path(run_dir))
    summary = RunSummary(path=run.path, name=run.name, status="unfinished")
    try:
        _summarize(run, summary)
    except _Unreadable as e:
        reason = str(e)
    except (ValueError, TypeError, AttributeError, KeyError, OverflowError) as e:
        reason = f"unexpected content ({type(e).__name__}: {e})"
    else:
        return summary
    return RunSummary(
        path=run.path,
        name=run.name,
        status="unreadable",
        reason=" ".join(reason.split())[:200],
    )


def _summarize(run: RunDir, summary: RunSummary) -> None:
    record = _read_record(run)
    config = _read_config(run)
    header, rows = _read_trace(run)
    epochs = [_epoch(row, line) for line, row in enumerate(rows, start=2)]
    tasks = _tasks(record, header)
    has_grader = any(k in header for k in (f"val/{GRADER}", f"test/{GRADER}"))
    columns = [*tasks, GRADER] if has_grader else list(tasks)
    _check_record(record)
    headlines = {c: headline_of(record, c) for c in dict.fromkeys([*tasks, GRADER])}
    monitor = _monitor(record, header, tasks, headlines)
    summary.config, summary.record = config, record
    summary.tasks, summary.columns, summary.monitor = tasks, columns, monitor
    summary.headlines = headlines

    best: tuple[int, float] | None = None
    for i, row in enumerate(rows):
        if monitor is not None and (value := _float(row.get(monitor[0]))) is not None:
            better = best is None or (value > best[1] if monitor[1] == "max" else value < best[1])
            if better:
                best = (i, value)
        test = {c: _float(row.get(f"test/{c}")) for c in columns}
        if any(v is not None for v in test.values()):
            summary.test = test
    if best is not None:
        row = rows[best[0]]
        summary.best = {c: _float(row.get(f"val/{c}")) for c in columns}
        summary.best_epoch = epochs[best[0]] or 0
        epochs_done = max((e for e in epochs if e is not None), default=0) + 1
        max_epochs = _max_epochs(record, config)
        finished = max_epochs is None or epochs_done >= max_epochs
        summary.status = "finished" if finished else "unfinished"
    if not record and not any(r.get("train/loss") for r in rows) and summary.best:
        summary.status = "evaluation"  # `scenemtl validate` of a checkpoint, no training
    # run.json knows best; "running" in a record nobody updates is a killed (or live) run
    status = record.get("status")
    if status in ("finished", "crashed", "diverged", "interrupted", "evaluation"):
        summary.status = status
    elif status == "running":
        summary.status = "unfinished"


def find_runs(root: str | os.PathLike) -> list[Path]:
    """Every run directory below ``root``: a folder holding metrics.csv, run.json or a
    checkpoints/ folder."""
    root = Path(root)
    found = set()
    for marker in (RunDir.METRICS, RunDir.RECORD, RunDir.CHECKPOINTS):
        for p in root.rglob(marker):
            found.add(p.parent)
    return sorted(found)


# --------------------------------------------------------------------------------------
# output


def format_number(value: float | None, column: str = "") -> str:
    """A metric value as the tables print it ("" when absent)."""
    if value is None:
        return ""
    if column.endswith(("_mae", "_absrel")):
        return f"{value:.4g}"  # errors in the data's units, e.g. 0.0125 (disparity)
    return f"{value:.2f}"


def format_best(summary: RunSummary) -> str:
    """A small Markdown table: the best validation, and test metrics when present."""
    if summary.status == "unreadable":
        return f"{summary.path}: unreadable ({summary.reason})"
    labels = [summary.headline(c).title(c) for c in summary.columns]
    lines = [
        "| split | epoch | " + " | ".join(labels) + " |",
        "|---|---|" + "---|" * len(labels),
    ]
    if summary.best:
        by = (summary.monitor or ("", ""))[0].removeprefix("val/")
        values = " | ".join(format_number(summary.best[c]) for c in summary.columns)
        lines.append(f"| val (best {by}) | {summary.best_epoch} | {values} |")
    if summary.test:
        values = " | ".join(format_number(summary.test.get(c)) for c in summary.columns)
        lines.append(f"| test | | {values} |")
    return "\n".join(lines)
