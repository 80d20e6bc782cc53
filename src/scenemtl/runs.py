"""Reading run directories: the reporting convention and the run table.

A run is reported by its best ``val/grader`` over all validations, with ``val/semseg`` and
``val/depth`` taken at that same validation.
"""

from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

METRICS = ("semseg", "depth", "grader")


@dataclass
class RunSummary:
    """One run directory, as the run table shows it."""

    path: Path
    name: str
    status: str  # "finished", "unfinished" or "no metrics"
    best_epoch: int | None = None
    best: dict[str, float] = field(default_factory=dict)
    test: dict[str, float] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)


def _float(text: str | None) -> float | None:
    try:
        value = float(text) if text not in (None, "") else None
    except ValueError:
        return None
    return value if value is not None and math.isfinite(value) else None


def read_metrics(run_dir: Path) -> list[dict[str, str]]:
    path = run_dir / "metrics.csv"
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def summarize_run(run_dir: str | os.PathLike) -> RunSummary:
    run_dir = Path(run_dir)
    rows = read_metrics(run_dir)
    config: dict[str, Any] = {}
    if (run_dir / "config.yaml").is_file():
        try:
            config = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8")) or {}
        except yaml.YAMLError:
            config = {}
    summary = RunSummary(path=run_dir, name=run_dir.parent.name, status="no metrics", config=config)
    best_row, best_grader = None, -math.inf
    for row in rows:
        grader = _float(row.get("val/grader"))
        if grader is not None and grader > best_grader:
            best_row, best_grader = row, grader
        if _float(row.get("test/grader")) is not None:
            summary.test = {m: _float(row.get(f"test/{m}")) or 0.0 for m in METRICS}
    if best_row is not None:
        summary.best = {m: _float(best_row.get(f"val/{m}")) or 0.0 for m in METRICS}
        summary.best_epoch = int(float(best_row.get("epoch") or 0))
        epochs_done = max(int(float(r["epoch"])) for r in rows if r.get("epoch")) + 1
        max_epochs = (config.get("trainer") or {}).get("max_epochs")
        finished = max_epochs is None or epochs_done >= int(max_epochs)
        summary.status = "finished" if finished else "unfinished"
    return summary


def format_best(summary: RunSummary) -> str:
    """A small Markdown table: the best validation, and test metrics when present."""
    lines = [
        "| split | epoch | semseg (IoU) | depth (SI-logRMSE) | grader |",
        "|---|---|---|---|---|",
    ]
    if summary.best:
        b = summary.best
        lines.append(
            f"| val (best grader) | {summary.best_epoch} | {b['semseg']:.2f} | "
            f"{b['depth']:.2f} | {b['grader']:.2f} |"
        )
    if summary.test:
        t = summary.test
        lines.append(f"| test | | {t['semseg']:.2f} | {t['depth']:.2f} | {t['grader']:.2f} |")
    return "\n".join(lines)
