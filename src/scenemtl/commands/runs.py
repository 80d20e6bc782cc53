"""Reading run directories: the reporting convention and the run table.

A run is reported by its best ``val/grader`` over all validations, with ``val/semseg`` and
``val/depth`` taken at that same validation.
"""

from __future__ import annotations

import csv
import json
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
    # "finished", "unfinished" (killed, still running, or never validated), "crashed",
    # "evaluation" (a `scenemtl validate` of a checkpoint)
    status: str
    best_epoch: int | None = None
    best: dict[str, float] = field(default_factory=dict)
    test: dict[str, float] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    record: dict[str, Any] = field(default_factory=dict)


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
    record: dict[str, Any] = {}
    if (run_dir / "run.json").is_file():
        try:
            record = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
        except ValueError:
            record = {}
    summary = RunSummary(
        path=run_dir, name=run_dir.parent.name, status="unfinished", config=config, record=record
    )
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
    if not record and not any(r.get("train/loss") for r in rows) and summary.best:
        summary.status = "evaluation"  # `scenemtl validate` of a checkpoint, no training
    # run.json knows best; "running" in a record nobody updates is a killed (or live) run
    status = record.get("status")
    if status in ("finished", "crashed"):
        summary.status = status
    elif status == "running":
        summary.status = "unfinished"
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


def find_runs(root: str | os.PathLike) -> list[Path]:
    """Every run directory below ``root``: a folder holding metrics.csv, run.json or
    config.yaml next to a checkpoints/ folder."""
    root = Path(root)
    found = set()
    for marker in ("metrics.csv", "run.json", "checkpoints"):
        for p in root.rglob(marker):
            found.add(p.parent)
    return sorted(found)


def _hp(summary: RunSummary) -> dict[str, str]:
    model = summary.config.get("model") or {}
    net = model.get("net") or {}
    data = summary.config.get("data") or {}
    trainer = summary.config.get("trainer") or {}
    weights = model.get("loss_weights") or {}
    dil = net.get("dilation")
    return {
        "arch": str(net.get("architecture", "")),
        "opt": str(model.get("optimizer", "")),
        "lr": f"{model['lr']:g}" if isinstance(model.get("lr"), (int, float)) else "",
        "bs": str(data.get("batch_size", "")),
        "epochs": str(trainer.get("max_epochs", "")),
        "weights": "/".join(f"{v:g}" for v in weights.values()) if weights else "1/1",
        "dilation": "".join("T" if d else "F" for d in dil) if isinstance(dil, list) else "",
        "aspp/skip": "/".join("Y" if net.get(k, True) else "N" for k in ("aspp", "skip")),
    }


TABLE_COLUMNS = (
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
    "grader",
    "semseg",
    "depth",
    "best epoch",
    "train time",
)


def table_rows(summaries: list[RunSummary], root: Path) -> list[dict[str, str]]:
    rows = []
    for s in summaries:
        seconds = s.record.get("train_seconds")
        params = s.record.get("parameters")
        row = {
            "run": str(s.path.relative_to(root)) if s.path.is_relative_to(root) else str(s.path),
            "status": s.status,
            **_hp(s),
            "params (M)": f"{params / 1e6:.2f}" if isinstance(params, int) else "",
            "grader": f"{s.best['grader']:.2f}" if s.best else "",
            "semseg": f"{s.best['semseg']:.2f}" if s.best else "",
            "depth": f"{s.best['depth']:.2f}" if s.best else "",
            "best epoch": "" if s.best_epoch is None else str(s.best_epoch),
            "train time": f"{seconds / 60:.1f} min" if isinstance(seconds, (int, float)) else "",
        }
        rows.append(row)
    return rows


def format_table(rows: list[dict[str, str]], fmt: str = "md") -> str:
    cols = TABLE_COLUMNS
    if fmt == "csv":
        import io

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
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(r[c] for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def run_table(root: str | os.PathLike, fmt: str = "md", sort: str = "grader") -> str:
    root = Path(root)
    if not root.is_dir():
        from scenemtl.errors import UserError

        raise UserError(f"runs folder {root} does not exist")
    summaries = [summarize_run(p) for p in find_runs(root)]
    if sort == "grader":
        summaries.sort(key=lambda s: -s.best["grader"] if s.best else math.inf)
    else:
        summaries.sort(key=lambda s: str(s.path))
    return format_table(table_rows(summaries, root), fmt)
