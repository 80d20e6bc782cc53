"""Boundary maps from label maps: PASCAL-Context's edge ground truth as the papers derive it.

Multi-Task-Learning-PyTorch (and ATRC, InvPT) make PASCAL-Context's boundaries from the
``LabelMap`` of each image: the pixels where OpenCV's 3x3 Laplacian (``ksize=1``: the
4-neighbour kernel, border reflected without repeating the edge, ``BORDER_REFLECT_101``)
is non-zero, thinned to one pixel with scikit-image's ``thin``. The Laplacian is computed
here in float64 (label ids are exact); the thinning is Guo and Hall's algorithm, the one
scikit-image's ``thin`` and MATLAB's ``bwmorph 'thin'`` implement
(:func:`scenemtl.evaluation.thinning.thin`), so reading the data needs neither OpenCV nor
scikit-image. The tests compare both with scipy's and scikit-image's.
"""

from __future__ import annotations

import numpy as np

from scenemtl.evaluation.thinning import thin


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


def label_boundaries(labels: np.ndarray) -> np.ndarray:
    """uint8 [H,W] {0, 1}: the thinned Laplacian edges of a label map (module doc)."""
    return thin(laplacian_nonzero(labels)).astype(np.uint8)
