"""Boundary maps from label maps: PASCAL-Context's edge ground truth as the papers derive it.

Multi-Task-Learning-PyTorch (and ATRC, InvPT) make PASCAL-Context's boundaries from the
``LabelMap`` of each image: the pixels where OpenCV's 3x3 Laplacian (``ksize=1``: the
4-neighbour kernel, border reflected without repeating the edge, ``BORDER_REFLECT_101``)
is non-zero, thinned to one pixel with scikit-image's ``thin``. Both are re-implemented
here (numpy only, float64: label ids are exact) so that reading the data needs neither
OpenCV nor scikit-image; the tests compare them with scipy's and scikit-image's.
"""

from __future__ import annotations

from functools import cache

import numpy as np


def laplacian_nonzero(labels: np.ndarray) -> np.ndarray:
    """bool [H,W]: where ``up + down + left + right - 4 * centre`` is non-zero.

    The border is reflected without repeating the edge pixel (OpenCV's default,
    numpy's ``reflect``); an image 1 pixel high or wide repeats it (nothing to reflect).
    """
    x = np.asarray(labels, dtype=np.float64)
    mode = "reflect" if min(x.shape) > 1 else "edge"
    p = np.pad(x, 1, mode=mode)
    lap = p[:-2, 1:-1] + p[2:, 1:-1] + p[1:-1, :-2] + p[1:-1, 2:] - 4.0 * x
    return lap != 0


# Neighbour bits of a pixel's 8-neighbourhood code: x1 = east, then counter-clockwise
# (x2 north-east, x3 north, ... x8 south-east), bit k holding x(k+1).
_OFFSETS = ((0, 1), (-1, 1), (-1, 0), (-1, -1), (0, -1), (1, -1), (1, 0), (1, 1))


@cache
def _thin_tables() -> tuple[np.ndarray, np.ndarray]:
    """Deletion tables of the two sub-iterations of Guo and Hall's parallel thinning
    (1989, algorithm A1 as Lam, Lee and Suen 1992 state it), indexed by the code."""
    first = np.zeros(256, dtype=bool)
    second = np.zeros(256, dtype=bool)
    for code in range(256):
        x = [bool((code >> k) & 1) for k in range(8)] + [bool(code & 1)]  # x[8] = x1
        x1, x2, x3, x4, x5, x6, x7, x8 = x[:8]
        # G1: exactly one 4-connected "0 then some 1" transition around the pixel
        crossings = sum(not x[2 * i] and (x[2 * i + 1] or x[2 * i + 2]) for i in range(4))
        n1 = sum(x[2 * k] or x[2 * k + 1] for k in range(4))
        n2 = sum(x[2 * k + 1] or x[2 * k + 2] for k in range(4))
        g12 = crossings == 1 and 2 <= min(n1, n2) <= 3
        first[code] = g12 and not ((x2 or x3 or not x8) and x1)
        second[code] = g12 and not ((x6 or x7 or not x4) and x5)
    return first, second


def _codes(skel: np.ndarray) -> np.ndarray:
    p = np.pad(skel, 1)
    h, w = skel.shape
    code = np.zeros(skel.shape, dtype=np.int64)
    for bit, (dr, dc) in enumerate(_OFFSETS):
        code |= p[1 + dr : 1 + dr + h, 1 + dc : 1 + dc + w].astype(np.int64) << bit
    return code


def thin(mask: np.ndarray) -> np.ndarray:
    """bool [H,W]: ``mask`` thinned to one-pixel-wide curves (outside the image is 0).

    Sub-iteration one deletes the pixels that satisfy G1, G2 and G3, two those that
    satisfy G1, G2 and G3'; both repeat until nothing changes.
    """
    skel = np.asarray(mask, dtype=bool).copy()
    tables = _thin_tables()
    changed = True
    while changed:
        changed = False
        for table in tables:
            delete = skel & table[_codes(skel)]
            if delete.any():
                skel[delete] = False
                changed = True
    return skel


def label_boundaries(labels: np.ndarray) -> np.ndarray:
    """uint8 [H,W] {0, 1}: the thinned Laplacian edges of a label map (module doc)."""
    return thin(laplacian_nonzero(labels)).astype(np.uint8)
