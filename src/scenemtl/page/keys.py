"""What the page shows beside the pictures: each segmentation task's class legend and
each depth task's scale, in the colours of the task's own
:meth:`~scenemtl.tasks.base.Task.colorize`, so that the keys cannot drift from the
pictures. HTML fragments are built here too (plain strings, no Gradio)."""

from __future__ import annotations

import base64
import html
import io
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    from scenemtl.tasks.base import Task

SCALE_WIDTH = 512
"""Columns of the depth colour bar (each one depth, geometrically spaced)."""

MIN_TICK_GAP = 0.06
"""Least distance between two labelled depths, as a fraction of the bar: closer labels
would overlap."""

MAX_INNER_TICKS = 8
"""More 1-2-5 values than this inside the range (a range of many decades): decades only."""


# --------------------------------------------------------------------------------------
# class legend


def class_legend(task: Task) -> list[tuple[str, tuple[int, int, int]]]:
    """A segmentation task's classes as ``(name, (r, g, b))`` by class id, the colours
    taken from the task's ``colorize`` of each id."""
    names = list(task.class_names)  # type: ignore[attr-defined]
    ids = np.arange(len(names), dtype=np.int64)[None, :]  # one row [1,N] of class ids
    colors = task.colorize(ids)[0]  # [N,3]
    return [
        (name, (int(c[0]), int(c[1]), int(c[2]))) for name, c in zip(names, colors, strict=True)
    ]


def legend_html(title: str, entries: list[tuple[str, tuple[int, int, int]]]) -> str:
    """The legend as HTML: a swatch and the name per class."""
    items = "".join(
        '<span class="smtl-class">'
        f'<span class="smtl-swatch" style="background: rgb({r}, {g}, {b})"></span>'
        f"{html.escape(name)}</span>"
        for name, (r, g, b) in entries
    )
    return (
        f'<div class="smtl-legend"><div class="smtl-key-title">{html.escape(title)}</div>'
        f'<div class="smtl-classes">{items}</div></div>'
    )


# --------------------------------------------------------------------------------------
# depth scale


@dataclass(frozen=True)
class DepthScale:
    """A depth task's colour bar, near (left) to far (right) on a log scale.

    Attributes:
        depths_m: float64 [W], the depth of each column: ``lo * (hi / lo) ** (x / (W - 1))``
            for the task's range ``(lo, hi)``.
        colors: uint8 [W,3], the task's ``colorize`` of ``depths_m``.
        ticks: ``(depth in m, position)`` of the labelled depths, position in [0, 1]
            along the bar (``x / (W - 1)`` of the column of that depth).
    """

    depths_m: np.ndarray
    colors: np.ndarray
    ticks: list[tuple[float, float]]


def bar_position(depth_m: float, lo: float, hi: float) -> float:
    """Where ``depth_m`` sits on a log bar from ``lo`` to ``hi`` (0 at lo, 1 at hi)."""
    return (math.log(depth_m) - math.log(lo)) / (math.log(hi) - math.log(lo))


def depth_ticks(lo: float, hi: float) -> list[float]:
    """The labelled depths of a bar from ``lo`` to ``hi`` m: both ends, and the 1-2-5
    values in between (only powers of ten when there are more than
    :data:`MAX_INNER_TICKS`), none closer than :data:`MIN_TICK_GAP` to a kept one."""
    if not 0 < lo < hi:
        raise ValueError(f"depth range {lo}..{hi} m is not 0 < lo < hi")
    decades = range(math.floor(math.log10(lo)) - 1, math.ceil(math.log10(hi)) + 1)
    inner = [m * 10.0**k for k in decades for m in (1, 2, 5)]
    inner = [v for v in inner if lo < v < hi]
    if len(inner) > MAX_INNER_TICKS:
        inner = [v for v in inner if math.isclose(10 ** round(math.log10(v)), v)]
    kept = [lo]
    for v in inner:
        pos = bar_position(v, lo, hi)
        if pos - bar_position(kept[-1], lo, hi) >= MIN_TICK_GAP and 1.0 - pos >= MIN_TICK_GAP:
            kept.append(v)
    return [*kept, hi]


def depth_scale(task: Task, width: int = SCALE_WIDTH) -> DepthScale:
    """The colour bar of a depth task over its range (``task.range_m``, the range its
    ``colorize`` spans)."""
    lo, hi = (float(v) for v in task.range_m)  # type: ignore[attr-defined]
    t = np.arange(width, dtype=np.float64) / (width - 1)
    depths = lo * (hi / lo) ** t
    colors = task.colorize(depths[None, :])[0]
    ticks = [(v, bar_position(v, lo, hi)) for v in depth_ticks(lo, hi)]
    return DepthScale(depths_m=depths, colors=np.asarray(colors, np.uint8), ticks=ticks)


def format_depth(depth_m: float) -> str:
    """``4`` -> ``4 m``, ``0.5`` -> ``0.5 m``, ``1000`` -> ``1000 m``."""
    return f"{depth_m:.3g} m" if depth_m < 1000 else f"{depth_m:.0f} m"


def _png_data_uri(rgb: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def depth_scale_html(title: str, scale: DepthScale) -> str:
    """The bar as HTML: an image of the colours, the labelled depths under it."""
    bar = np.repeat(scale.colors[None], 2, axis=0)  # [2,W,3]; the page stretches it
    labels = []
    for i, (depth, pos) in enumerate(scale.ticks):
        # the end labels stay inside the bar; the others are centred on their depth
        shift = "0" if i == 0 else "-100%" if i == len(scale.ticks) - 1 else "-50%"
        labels.append(
            f'<span class="smtl-tick" style="left: {100 * pos:.3f}%; '
            f'transform: translateX({shift})">{html.escape(format_depth(depth))}</span>'
        )
    return (
        f'<div class="smtl-scale"><div class="smtl-key-title">{html.escape(title)}</div>'
        f'<img class="smtl-bar" alt="depth colour bar" src="{_png_data_uri(bar)}">'
        f'<div class="smtl-ticks">{"".join(labels)}</div></div>'
    )


KEYS_CSS = """
.smtl-key-title { font-weight: 600; margin: 0.4em 0; }
.smtl-classes { display: flex; flex-wrap: wrap; gap: 0.3em 1.2em; }
.smtl-class { display: inline-flex; align-items: center; gap: 0.4em; }
.smtl-swatch { display: inline-block; width: 1.1em; height: 1.1em;
               border: 1px solid #8888; border-radius: 2px; }
.smtl-bar { display: block; width: 100%; height: 1.4em; image-rendering: pixelated;
            border: 1px solid #8888; }
.smtl-ticks { position: relative; height: 1.6em; }
.smtl-tick { position: absolute; top: 0.2em; white-space: nowrap; font-size: 0.9em; }
"""
"""Styles of the fragments above."""


def keys_html(tasks: list[Task]) -> str:
    """Every task's key (legend or depth scale), in the order of the tasks; empty if
    none has one (e.g. normals only)."""
    parts = []
    for task in tasks:
        if task.kind == "segmentation":
            parts.append(legend_html(f"{task.name} classes", class_legend(task)))
        elif task.kind == "depth":
            parts.append(depth_scale_html(f"{task.name} in meters (log scale)", depth_scale(task)))
    return "".join(parts)


__all__ = [
    "KEYS_CSS",
    "DepthScale",
    "bar_position",
    "class_legend",
    "depth_scale",
    "depth_scale_html",
    "depth_ticks",
    "format_depth",
    "keys_html",
    "legend_html",
]
