"""Binary maps on disk: ground-truth masks (edges, saliency) and 8-bit probability PNGs.

Ground truth: an 8-bit PNG (mode L, or P whose indices are the values, or 1) holding 0
(off), 1 (on) or 255 (not labelled). A mode "1" image is read as 0/1.

Predictions (predict, submission, grader): an 8-bit grey PNG (mode L) holding
``floor(255 * p)`` for a probability ``p`` in [0, 1], read back as ``value / 255``. This
is how Multi-Task-Learning-PyTorch, ATRC and InvPT save edge and saliency maps for SEISM
and their saliency evaluation (``uint8(255 * sigmoid)``, truncating), so a submission
written here scores as theirs would. ``value / 255`` times 255 floors back to ``value``
exactly for every value (float64), so the boundary metric's own 8-bit quantization
(:func:`scenemtl.evaluation.boundary.image_counts`) leaves a read prediction unchanged.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from scenemtl.codecs.image import open_image
from scenemtl.errors import DataFormatError

BINARY_IGNORE = 255
"""Value of a pixel without a label in a binary ground-truth map."""
PROBABILITY_LEVELS = 255
"""A probability PNG holds ``floor(PROBABILITY_LEVELS * p)``: 0 .. 255."""


def read_binary_map(path: Path) -> np.ndarray:
    """A ground-truth mask as uint8 [H,W] with values in {0, 1, 255}.

    Raises:
        DataFormatError: the file is unreadable, not 8-bit, or holds other values (named).
    """
    image = open_image(path)
    if image.mode not in ("L", "P", "1"):
        raise DataFormatError(f"{path}: binary map PNG has mode {image.mode}; expected L, P or 1")
    values = np.asarray(image, dtype=np.uint8)
    return check_binary_map(values, str(path))


def check_binary_map(values: np.ndarray, where: str) -> np.ndarray:
    """``values`` [H,W] if they are all 0, 1 or 255; DataFormatError naming ``where``."""
    bad = (values != 0) & (values != 1) & (values != BINARY_IGNORE)
    if bad.any():
        found = sorted({int(v) for v in np.unique(values[bad])})[:5]
        raise DataFormatError(
            f"{where}: binary map values {found}; expected 0, 1 or {BINARY_IGNORE} (no label)"
        )
    return values


def encode_probability_png(prob: np.ndarray) -> Image.Image:
    """Probabilities [H,W] in [0, 1] as a mode-L PNG of ``floor(255 p)`` (clipped)."""
    p = np.clip(np.nan_to_num(np.asarray(prob, dtype=np.float64), nan=0.0), 0.0, 1.0)
    return Image.fromarray(np.floor(p * PROBABILITY_LEVELS).astype(np.uint8), mode="L")


def decode_probability_png(image: Image.Image) -> np.ndarray:
    """A mode-L probability PNG as float64 [H,W] probabilities ``value / 255``."""
    if image.mode != "L":
        raise DataFormatError(f"probability PNG has mode {image.mode}; expected L (8-bit grey)")
    return np.asarray(image, dtype=np.uint8).astype(np.float64) / PROBABILITY_LEVELS
