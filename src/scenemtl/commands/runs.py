"""Reading run directories: the reporting convention and the run table.

A run is reported at its best validation by the run's *monitor*, the metric that chose
its ``best.ckpt`` (``run.json`` "monitor", e.g. ``{"metric": "val/grader", "mode":
"max"}``). Runs without one (older runs, ``scenemtl validate`` of a checkpoint) are
reported by ``val/grader`` when they log it, else by their first task's headline metric
in that task's direction. The columns are the headline metric of each task the run
learns (``run.json`` "tasks", else the ``val/<task>`` columns of ``metrics.csv``) and
the course grader when the run has it, all taken at that same validation.

A run folder that cannot be read (``run.json`` that is not a JSON object, a
``metrics.csv`` that is not UTF-8 text or has a non-numeric epoch, a ``config.yaml``
that is not a mapping, ...) is listed as ``unreadable`` with the reason; the other runs
are listed as usual.
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

from scenemtl.engine.run_dir import RunDir
from scenemtl.errors import UserError
from scenemtl.yamlfile import load_yaml_text

GRADER = "grader"
"""Column of the course metric (:data:`scenemtl.metrics.GRADER`; not imported from
there, which would load torch for a table)."""
LEGACY_TASKS = ("semseg", "depth")
"""The tasks of every run before tasks were data; listed first when a run's tasks are
read off its metric names."""
_UNITS = {"semseg": "IoU", "depth": "SI-logRMSE"}


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
    directions: dict[str, str] = field(default_factory=dict)
    """task -> "max"|"min", the direction of its headline metric."""
    reason: str | None = None
    """Why the run is unreadable."""


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


def _higher_is_better(task: str) -> bool:
    """Direction of a task's headline metric for a run that did not record it (older
    runs): the kind of the two built-in tasks, else the kind the task is named after
    (``normals``), else higher."""
    from scenemtl.tasks import TASK_KINDS, legacy_task_specs  # torch: only when needed

    spec = legacy_task_specs().get(task)
    kind = spec["kind"] if spec else task
    return TASK_KINDS[kind].higher_is_better if kind in TASK_KINDS else True


def _directions(record: dict[str, Any], tasks: list[str]) -> dict[str, str]:
    recorded = record.get("directions")
    if recorded is not None and not (
        isinstance(recorded, dict) and all(v in ("max", "min") for v in recorded.values())
    ):
        raise _Unreadable(f"{RunDir.RECORD}: 'directions' is not {{task: max|min}}")
    recorded = recorded or {}
    return {t: recorded.get(t) or ("max" if _higher_is_better(t) else "min") for t in tasks}


def _monitor(
    record: dict[str, Any], header: list[str], tasks: list[str], directions: dict[str, str]
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
        return f"val/{tasks[0]}", directions[tasks[0]]
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
    directions = _directions(record, tasks)
    monitor = _monitor(record, header, tasks, directions)
    summary.config, summary.record = config, record
    summary.tasks, summary.columns, summary.monitor = tasks, columns, monitor
    summary.directions = directions

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


# --------------------------------------------------------------------------------------
# output


def _number(value: float | None, column: str = "") -> str:
    if value is None:
        return ""
    if column.endswith(("_mae", "_absrel")):
        return f"{value:.4g}"  # errors in the data's units, e.g. 0.0125 (disparity)
    return f"{value:.2f}"


def format_best(summary: RunSummary) -> str:
    """A small Markdown table: the best validation, and test metrics when present."""
    if summary.status == "unreadable":
        return f"{summary.path}: unreadable ({summary.reason})"
    labels = [f"{c} ({_UNITS[c]})" if c in _UNITS else c for c in summary.columns]
    lines = [
        "| split | epoch | " + " | ".join(labels) + " |",
        "|---|---|" + "---|" * len(labels),
    ]
    if summary.best:
        by = (summary.monitor or ("", ""))[0].removeprefix("val/")
        values = " | ".join(_number(summary.best[c]) for c in summary.columns)
        lines.append(f"| val (best {by}) | {summary.best_epoch} | {values} |")
    if summary.test:
        values = " | ".join(_number(summary.test.get(c)) for c in summary.columns)
        lines.append(f"| test | | {values} |")
    return "\n".join(lines)


def find_runs(root: str | os.PathLike) -> list[Path]:
    """Every run directory below ``root``: a folder holding metrics.csv, run.json or a
    checkpoints/ folder."""
    root = Path(root)
    found = set()
    for marker in (RunDir.METRICS, RunDir.RECORD, RunDir.CHECKPOINTS):
        for p in root.rglob(marker):
            found.add(p.parent)
    return sorted(found)


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
            **{c: _number(s.best.get(c), c) for c in metric_columns(summaries)},
            "best epoch": "" if s.best_epoch is None else str(s.best_epoch),
            "train time": f"{seconds / 60:.1f} min"
            if isinstance(seconds, (int, float)) and not isinstance(seconds, bool)
            else "",
        }
        rows.append(row)
    return rows


def format_table(
    rows: list[dict[str, str]], fmt: str = "md", columns: tuple[str, ...] | None = None
) -> str:
    """The rows as Markdown, LaTeX or CSV (``columns``: default, those of the first row)."""
    cols = columns or (tuple(rows[0]) if rows else (*LEADING_COLUMNS, *TRAILING_COLUMNS))
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        return buf.getvalue().rstrip("\n")
    if fmt == "latex":

        def esc(text: str) -> str:
            for a, b in (
                ("\\", r"\textbackslash{}"),
                ("_", r"\_"),
                ("%", r"\%"),
                ("&", r"\&"),
                ("#", r"\#"),
            ):
                text = text.replace(a, b)
            return text

        lines = [
            r"\begin{tabular}{" + "l" * len(cols) + "}",
            r"\hline",
            " & ".join(esc(c) for c in cols) + r" \\",
            r"\hline",
        ]
        lines += [" & ".join(esc(r[c]) for c in cols) + r" \\" for r in rows]
        lines += [r"\hline", r"\end{tabular}"]
        return "\n".join(lines)

    def cell(text: str) -> str:
        return text.replace("|", r"\|")

    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(cell(r[c]) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


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
