"""What explains a task's pictures beside them (:meth:`~scenemtl.tasks.base.Task.picture_key`):
a legend of named colours or a colour bar, as plain data in the colours of the task's own
``colorize``, so that a key cannot drift from the pictures. The page of ``scenemtl
serve`` draws them (:mod:`scenemtl.page.keys`); nothing here knows HTML.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

MIN_TICK_GAP = 0.06
"""Least distance between two labelled values, as a fraction of the bar: closer labels
would overlap."""

MAX_INNER_TICKS = 8
"""More 1-2-5 values than this inside the range (a range of many decades): decades only."""


@dataclass(frozen=True)
class Legend:
    """Named colours, e.g. a segmentation task's classes.

    Attributes:
        title: what the legend shows ("semseg classes").
        entries: ``(name, (r, g, b))`` in order (by class id).
    """

    title: str
    entries: list[tuple[str, tuple[int, int, int]]]


@dataclass(frozen=True)
class Tick:
    """A labelled value on a :class:`ColorBar`: ``position`` in [0, 1] along the bar."""

    value: float
    position: float
    label: str


@dataclass(frozen=True)
class ColorBar:
    """A continuous key, low values left.

    Attributes:
        title: what the bar shows ("depth in meters (log scale)").
        values: float64 [W], the value of each column.
        colors: uint8 [W,3], the task's ``colorize`` of ``values``.
        ticks: the labelled values, left to right.
    """

    title: str
    values: np.ndarray
    colors: np.ndarray
    ticks: list[Tick]


PictureKey = Legend | ColorBar
"""Every form a key can take (the page draws each)."""


def class_legend(
    title: str, names: list[str], colorize: Callable[[np.ndarray], np.ndarray]
) -> Legend:
    """A legend of classes by id, each colour ``colorize`` of the id (an int64 [1,N] row
    in, uint8 [1,N,3] out)."""
    ids = np.arange(len(names), dtype=np.int64)[None, :]  # one row [1,N] of class ids
    colors = colorize(ids)[0]  # [N,3]
    entries = [(n, (int(c[0]), int(c[1]), int(c[2]))) for n, c in zip(names, colors, strict=True)]
    return Legend(title, entries)


def log_position(value: float, lo: float, hi: float) -> float:
    """Where ``value`` sits on a log bar from ``lo`` to ``hi`` (0 at lo, 1 at hi)."""
    return (math.log(value) - math.log(lo)) / (math.log(hi) - math.log(lo))


def log_ticks(lo: float, hi: float) -> list[float]:
    """The labelled values of a log bar from ``lo`` to ``hi``: both ends, and the 1-2-5
    values in between (only powers of ten when there are more than
    :data:`MAX_INNER_TICKS`), none closer than :data:`MIN_TICK_GAP` to a kept one."""
    if not 0 < lo < hi:
        raise ValueError(f"range {lo}..{hi} is not 0 < lo < hi")
    decades = range(math.floor(math.log10(lo)) - 1, math.ceil(math.log10(hi)) + 1)
    inner = [m * 10.0**k for k in decades for m in (1, 2, 5)]
    inner = [v for v in inner if lo < v < hi]
    if len(inner) > MAX_INNER_TICKS:
        inner = [v for v in inner if math.isclose(10 ** round(math.log10(v)), v)]
    kept = [lo]
    for v in inner:
        pos = log_position(v, lo, hi)
        if pos - log_position(kept[-1], lo, hi) >= MIN_TICK_GAP and 1.0 - pos >= MIN_TICK_GAP:
            kept.append(v)
    return [*kept, hi]


SCALES = ("linear", "log")
"""How a :func:`color_bar` spaces its values."""


def color_bar(
    title: str,
    lo: float,
    hi: float,
    colorize: Callable[[np.ndarray], np.ndarray],
    label: Callable[[float], str],
    width: int,
    scale: str = "linear",
    ticks: list[float] | None = None,
) -> ColorBar:
    """A bar from ``lo`` to ``hi``, coloured by ``colorize`` (float64 [1,W] in, uint8
    [1,W,3] out), labelled by ``label``.

    ``scale`` "linear" (e.g. a probability): column ``x`` holds ``lo + (hi - lo) * x /
    (W - 1)``, ticks at ``ticks`` (default: both ends and the middle). "log" (e.g.
    depth): column ``x`` holds ``lo * (hi / lo) ** (x / (W - 1))``, ticks at ``ticks``
    (default: :func:`log_ticks`).
    """
    if scale not in SCALES or not lo < hi or (scale == "log" and lo <= 0):
        raise ValueError(f"no {scale} bar from {lo} to {hi}")
    t = np.arange(width, dtype=np.float64) / (width - 1)
    if scale == "log":
        values = lo * (hi / lo) ** t
        marks = log_ticks(lo, hi) if ticks is None else ticks
        ends = [Tick(v, log_position(v, lo, hi), label(v)) for v in marks]
    else:
        values = lo + (hi - lo) * t
        marks = [lo, (lo + hi) / 2, hi] if ticks is None else ticks
        ends = [Tick(v, (v - lo) / (hi - lo), label(v)) for v in marks]
    colors = np.asarray(colorize(values[None, :])[0], np.uint8)
    return ColorBar(title, values, colors, ends)


__all__ = [
    "MAX_INNER_TICKS",
    "MIN_TICK_GAP",
    "SCALES",
    "ColorBar",
    "Legend",
    "PictureKey",
    "Tick",
    "class_legend",
    "color_bar",
    "log_position",
    "log_ticks",
]
