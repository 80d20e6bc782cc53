"""Pictures of images, labels and depth maps, as uint8 RGB arrays (HxWx3)."""

from __future__ import annotations

from functools import cache

import numpy as np

from scenemtl.tasks import SEMSEG, class_colors


@cache
def _palette() -> np.ndarray:
    """256x3 lookup: trainId -> Cityscapes colour; everything else (255 ignore) black."""
    lut = np.zeros((256, 3), dtype=np.uint8)
    lut[: SEMSEG.channels] = np.array(class_colors(), dtype=np.uint8)
    return lut


def colorize_semseg(labels: np.ndarray) -> np.ndarray:
    """trainIds [H,W] -> Cityscapes colours [H,W,3]; ignore (255) is black."""
    return _palette()[np.asarray(labels).astype(np.uint8)]


def colorize_depth(
    depth_m: np.ndarray, min_m: float = 4.0, max_m: float = 300.0, cmap: str = "magma_r"
) -> np.ndarray:
    """Depth in meters [H,W] -> colours [H,W,3] on a log scale; invalid (<= 0) is black.

    A log scale because street depth spans two orders of magnitude: linear colours would
    spend the whole colormap on the far 200 m and show the near scene as one colour.
    """
    from matplotlib import colormaps

    depth = np.asarray(depth_m, dtype=np.float64)
    valid = np.isfinite(depth) & (depth > 0)
    t = (np.log(np.clip(depth, min_m, max_m)) - np.log(min_m)) / (np.log(max_m) - np.log(min_m))
    rgb = (colormaps[cmap](np.where(valid, t, 0.0))[..., :3] * 255).astype(np.uint8)
    rgb[~valid] = 0
    return rgb


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
    pred_semseg: np.ndarray,
    pred_depth: np.ndarray,
    gt_semseg: np.ndarray | None = None,
    gt_depth: np.ndarray | None = None,
    depth_range: tuple[float, float] = (4.0, 300.0),
) -> list[np.ndarray]:
    """One row: RGB, [GT semseg], predicted semseg, [GT depth], predicted depth."""
    row = [np.asarray(rgb, dtype=np.uint8)]
    if gt_semseg is not None:
        row.append(colorize_semseg(gt_semseg))
    row.append(colorize_semseg(pred_semseg))
    if gt_depth is not None:
        row.append(colorize_depth(gt_depth, *depth_range))
    row.append(colorize_depth(pred_depth, *depth_range))
    return row
