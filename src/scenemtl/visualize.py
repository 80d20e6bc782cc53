"""Panels of pictures, as uint8 RGB arrays (HxWx3): each task colours its own maps
(:meth:`~scenemtl.tasks.base.Task.colorize`), this module lays them out."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from scenemtl.tasks.base import Task


def tile(rows: list[list[np.ndarray]], gap: int = 2) -> np.ndarray:
    """Lay out equally sized HxWx3 images in a grid with white gaps."""
    h, w = rows[0][0].shape[:2]
    ncols = max(len(r) for r in rows)
    out = np.full(
        (len(rows) * h + (len(rows) - 1) * gap, ncols * w + (ncols - 1) * gap, 3), 255, np.uint8
    )
    for i, row in enumerate(rows):
        for j, img in enumerate(row):
            out[i * (h + gap) : i * (h + gap) + h, j * (w + gap) : j * (w + gap) + w] = img
    return out


def prediction_panel(
    rgb: np.ndarray,
    tasks: Sequence[Task],
    preds: Mapping[str, np.ndarray],
    targets: Mapping[str, np.ndarray] | None = None,
) -> list[np.ndarray]:
    """One row: RGB, then per task [its ground truth] and its prediction, each in the
    task's own colours (:meth:`~scenemtl.tasks.base.Task.colorize`)."""
    row = [np.asarray(rgb, dtype=np.uint8)]
    for task in tasks:
        if targets is not None and task.name in targets:
            row.append(task.colorize(targets[task.name]))
        row.append(task.colorize(preds[task.name]))
    return row
