"""Plot docs/demo-budget/curve.csv (the demo's validation metrics against training cost),
the short runs of docs/demo-budget/budget_runs.csv, and the predicted wall time of
`make demo` on the issue's 2-core AMD machine against the number of training steps, into
docs/demo-budget/curve.png.

    python scripts/demo_budget_plot.py
"""

from __future__ import annotations

import csv
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

HERE = Path(__file__).resolve().parents[1] / "docs" / "demo-budget"
# The wall-time model of docs/synth.md ("The demo's budget"), AMD EPYC 2 cores, idle:
# a training step with its share of validation 0.48 s; rendering 18 images/s; the rest
# (start-ups, check, statistics, submission, test) 167 s.
STEP_S, RENDER_RATE, FIXED_S = 0.48, 18.0, 167.0


def demo_minutes(steps: int, images: int) -> float:
    return (steps * STEP_S + images / RENDER_RATE + FIXED_S) / 60


def _rows(name: str) -> list[dict[str, str]]:
    text = (HERE / name).read_text().splitlines()
    return list(csv.DictReader([line for line in text if line and not line.startswith("#")]))


def main() -> None:
    rows = _rows("curve.csv")
    steps = [int(r["steps"]) for r in rows]
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4))
    ax.plot(steps, [float(r["semseg_iou"]) for r in rows], "o-", label="semseg mean IoU (%)")
    ax.plot(steps, [float(r["depth_silog"]) for r in rows], "s-", label="depth SI-logRMSE (x100)")
    ax.plot(steps, [float(r["grader"]) for r in rows], "^-", label="grader")
    runs: dict[str, list[dict[str, str]]] = {}
    for r in _rows("budget_runs.csv"):
        runs.setdefault(r["run"], []).append(r)
    for name, points in runs.items():
        xs = [int(r["steps"]) for r in points]
        for key, marker in (("semseg_iou", "o"), ("depth_silog", "s"), ("grader", "^")):
            ax.plot(xs, [float(r[key]) for r in points], marker + ":", color="black", ms=4)
        ax.annotate(name, (xs[-1], float(points[-1]["semseg_iou"])), fontsize=7)
    for x, name in ((500, "new budget"), (2500, "old budget")):
        ax.axvline(x, color="gray", ls="--")
        ax.text(x, 46, name, rotation=90, va="top", ha="right", fontsize=8)
    ax.set_xlabel("training steps (batch 8, 128x128 crops)")
    ax.set_title("validation per epoch: old run (colour), short runs (black)")
    ax.legend(fontsize=8)
    ax.set_ylim(0, 47)
    grid = list(range(0, 2751, 125))
    bx.plot(grid, [demo_minutes(s, 1500) for s in grid], label="1000 training images rendered")
    bx.plot(grid, [demo_minutes(s, 2500) for s in grid], label="2000 training images rendered")
    bx.axhline(10, color="red", ls=":", label="10 minutes")
    for x in (500, 2500):
        bx.axvline(x, color="gray", ls="--")
    bx.set_xlabel("training steps")
    bx.set_ylabel("predicted `make demo` minutes (AMD, 2 cores)")
    bx.set_title("wall-time model, empty cache")
    bx.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(HERE / "curve.png", dpi=90)


if __name__ == "__main__":
    main()
