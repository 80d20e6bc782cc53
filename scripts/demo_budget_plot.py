"""Plot the demo's budget curve into docs/demo-budget/curve.png: the validation metrics of
docs/demo-budget/budget_runs.csv (short runs of configs/demo.yaml, each with its own
schedule) against the predicted wall time of `make demo` on the issue's 2-core AMD
machine, the old 10-epoch run of docs/demo-budget/curve.csv, and the wall-time model.

    python scripts/demo_budget_plot.py   # writes the PNG, prints the table of docs/synth.md

Cost of a run: its fit's CPU time of one thread (user + sys, /usr/bin/time), which other
jobs on a shared machine inflate far less than wall time, made relative to the run named in
its ``anchor`` column (the default 4-epoch, 1000-image budget measured in the same session
under the same conditions) and converted with the wall-time model of docs/synth.md, where
that default budget's training loop takes 500 x 0.48 s on the AMD machine. A prediction,
not a measurement on that machine.
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
VAL_TEST_IMAGES = 500
ANCHOR_STEPS = 500  # the anchor runs' steps (1000 images / batch 8 x 4 epochs)
STARTUP_CPU_S = 12.0  # one Lightning command's start, not part of the training loop
CHOSEN = "e4_n1000"  # the budget configs/demo.yaml runs
LIMIT_MIN = 10.0


def demo_minutes(steps: int, images: int) -> float:
    """Predicted `make demo` minutes on the AMD machine for the default network and crop."""
    return (steps * STEP_S + images / RENDER_RATE + FIXED_S) / 60


def _rows(name: str) -> list[dict[str, str]]:
    text = (HERE / name).read_text().splitlines()
    return list(csv.DictReader([line for line in text if line and not line.startswith("#")]))


def budget_points() -> list[dict[str, object]]:
    """One dict per run at its end: its metrics and predicted AMD minutes (from CPU time)."""
    runs: dict[str, list[dict[str, str]]] = {}
    for r in _rows("budget_runs.csv"):
        runs.setdefault(r["run"], []).append(r)
    cpu = {name: float(rows[-1]["cpu_s"]) for name, rows in runs.items()}
    points = []
    for name, rows in runs.items():
        last = rows[-1]
        anchor = cpu[last["anchor"]]
        train_s = STEP_S * ANCHOR_STEPS * (cpu[name] - STARTUP_CPU_S) / (anchor - STARTUP_CPU_S)
        images = int(last["train_images"]) + VAL_TEST_IMAGES
        points.append(
            {
                "run": name,
                "axis": last["axis"],
                "steps": int(last["steps"]),
                "cpu_s": cpu[name],
                "wall_here_s": cpu[name] / 1.7,
                "minutes_amd": (train_s + images / RENDER_RATE + FIXED_S) / 60,
                "iou": float(last["semseg_iou"]),
                "silog": float(last["depth_silog"]),
                "grader": float(last["grader"]),
                "curve": rows,
            }
        )
    return points


AXIS_STYLE = {
    "epochs": ("o", "tab:blue"),
    "images": ("s", "tab:orange"),
    "crop": ("D", "tab:green"),
    "width": ("v", "tab:purple"),
    "seed": ("*", "tab:gray"),
}


def main() -> None:
    points = budget_points()
    fig, axes = plt.subplots(2, 2, figsize=(13, 9))
    (cx, mx), (ax, bx) = axes
    # right: each budget at its end against its predicted demo time
    for key, sub, label in (
        ("iou", mx, "val semseg mean IoU (%), higher is better"),
        ("silog", bx, "val depth SI-logRMSE (x100), lower is better\n(grader = 50 - this)"),
    ):
        for axis, (marker, colour) in AXIS_STYLE.items():
            pts = [p for p in points if p["axis"] == axis]
            if pts:
                sub.scatter(
                    [p["minutes_amd"] for p in pts],
                    [p[key] for p in pts],
                    marker=marker,
                    color=colour,
                    s=50,
                    label=f"axis: {axis}",
                    zorder=3,
                )
        for p in points:
            sub.annotate(
                p["run"],
                (p["minutes_amd"], p[key]),
                fontsize=7,
                xytext=(4, -10 if p["axis"] == "seed" else 3),  # the seed repeat sits on e4
                textcoords="offset points",
            )
            if p["run"] == CHOSEN:
                sub.scatter(
                    [p["minutes_amd"]],
                    [p[key]],
                    s=260,
                    facecolors="none",
                    edgecolors="red",
                    linewidths=2,
                    zorder=4,
                    label="chosen (configs/demo.yaml)",
                )
        sub.axvline(LIMIT_MIN, color="red", ls=":", label="10 minutes")
        sub.set_xlim(7.0, 10.5)
        sub.set_xlabel("predicted `make demo` minutes, empty cache (AMD, 2 idle cores)")
        sub.set_ylabel(label)
        sub.grid(alpha=0.3)
        sub.legend(fontsize=7, loc="best")
    mx.set_title("each budget at its end (own schedule), against its predicted cost")
    # top left: validation after each epoch against training steps
    rows = _rows("curve.csv")
    steps = [int(r["steps"]) for r in rows]
    cx.plot(steps, [float(r["semseg_iou"]) for r in rows], "o-", label="old run: semseg IoU (%)")
    cx.plot(steps, [float(r["depth_silog"]) for r in rows], "s-", label="old run: SI-logRMSE")
    for p in points:
        marker, colour = AXIS_STYLE[str(p["axis"])]
        xs = [int(r["steps"]) for r in p["curve"]]
        cx.plot(xs, [float(r["semseg_iou"]) for r in p["curve"]], marker + ":", color=colour, ms=3)
        cx.plot(xs, [float(r["depth_silog"]) for r in p["curve"]], marker + ":", color=colour, ms=3)
    cx.axvline(500, color="gray", ls="--")
    cx.text(500, 46, "500 steps", rotation=90, va="top", ha="right", fontsize=8)
    cx.set_xlabel("training steps (batch 8)")
    cx.set_ylabel("validation metric")
    cx.set_title("after each epoch: old 10-epoch run (lines), short runs (dotted, by axis)")
    cx.legend(fontsize=7)
    cx.set_ylim(0, 47)
    cx.grid(alpha=0.3)
    # bottom left: the wall-time model
    grid = list(range(0, 2751, 125))
    ax.plot(grid, [demo_minutes(s, 1500) for s in grid], label="1000 training images rendered")
    ax.plot(grid, [demo_minutes(s, 2500) for s in grid], label="2000 training images rendered")
    ax.axhline(LIMIT_MIN, color="red", ls=":", label="10 minutes")
    for x, name in ((500, "chosen"), (2500, "old budget")):
        ax.axvline(x, color="gray", ls="--")
        ax.text(x, 26, name, rotation=90, va="top", ha="right", fontsize=8)
    ax.set_xlabel("training steps (batch 8, 128x128 crops, 64-channel decoder)")
    ax.set_ylabel("predicted `make demo` minutes (AMD, 2 cores)")
    ax.set_title("wall-time model, empty cache")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(HERE / "curve.png", dpi=80)
    for p in sorted(points, key=lambda p: (p["minutes_amd"], p["run"])):
        print(
            f"| `{p['run']}` | {p['axis']} | {p['steps']} | {p['cpu_s']:.0f} "
            f"| {p['wall_here_s']:.0f} s | {p['minutes_amd']:.1f} min "
            f"| {p['iou']:.1f} | {p['silog']:.1f} | {p['grader']:.1f} |"
        )


if __name__ == "__main__":
    main()
