"""Depth PNGs: two self-describing encodings, so a reader never needs dataset.json.

* mode ``L``: MiniScapes disparity code (:data:`DISPARITY8`). ``v`` in 1..255 is linear
  in inverse depth, ``v=1`` is 1/300 m^-1 and ``v=255`` is 1/4 m^-1; ``v=0`` is invalid.
* mode ``I;16`` or ``I``: depth in meters times 256 (:data:`METERS16`, the KITTI
  convention); 0 is invalid.

In memory, depth is float32 meters and invalid pixels are exactly ``0.0``
(:data:`INVALID_DEPTH`); ``depth > 0`` is the validity mask.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from scenemtl.codecs.image import open_image, with_path
from scenemtl.errors import DataFormatError

INVALID_DEPTH = 0.0
"""Depth value (meters) of pixels without valid depth: sky, missing disparity, padding."""

DISPARITY8 = "disparity8"
METERS16 = "meters16"
DEPTH_ENCODINGS = (DISPARITY8, METERS16)

# Range of the MiniScapes disparity code, meters.
DISPARITY8_MIN_M = 4.0
DISPARITY8_MAX_M = 300.0
# 16-bit meters x 256 tops out just below 256 m.
METERS16_SCALE = 256.0
METERS16_MAX_M = 65535 / METERS16_SCALE


def encodable_range(encoding: str) -> tuple[float, float]:
    """The (min, max) depth in meters an encoding can represent."""
    if encoding == DISPARITY8:
        return DISPARITY8_MIN_M, DISPARITY8_MAX_M
    if encoding == METERS16:
        return 1.0 / METERS16_SCALE, METERS16_MAX_M
    raise DataFormatError(f"unknown depth encoding {encoding!r}; known: {DEPTH_ENCODINGS}")


def encode_depth(depth_m: np.ndarray, encoding: str) -> Image.Image:
    """Depth in meters (0 or non-finite = invalid) to a self-describing PNG image.

    Valid depths are clipped to the encoding's range.
    """
    depth = np.asarray(depth_m, dtype=np.float64)
    valid = np.isfinite(depth) & (depth > 0)
    lo, hi = encodable_range(encoding)
    clipped = np.clip(np.where(valid, depth, hi), lo, hi)
    if encoding == DISPARITY8:
        inv_lo, inv_hi = 1.0 / DISPARITY8_MAX_M, 1.0 / DISPARITY8_MIN_M
        code = 1.0 + (1.0 / clipped - inv_lo) / (inv_hi - inv_lo) * 254.0
        out = np.where(valid, np.clip(np.rint(code), 1, 255), 0).astype(np.uint8)
        return Image.fromarray(out)
    code = np.clip(np.rint(clipped * METERS16_SCALE), 1, 65535)
    out = np.where(valid, code, 0).astype(np.uint16)
    return Image.fromarray(out)


def decode_depth(image: Image.Image) -> np.ndarray:
    """A depth PNG (any of the two encodings) to float32 meters, 0 = invalid."""
    if image.mode == "L":
        code = np.asarray(image, dtype=np.float64)
        inv_lo, inv_hi = 1.0 / DISPARITY8_MAX_M, 1.0 / DISPARITY8_MIN_M
        inv = inv_lo + (code - 1.0) / 254.0 * (inv_hi - inv_lo)
        depth = np.where(code > 0, 1.0 / np.maximum(inv, 1e-12), 0.0)
        return depth.astype(np.float32)
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        code = np.asarray(image).astype(np.float64)
        if code.min(initial=0) < 0:
            raise DataFormatError("16-bit depth PNG holds negative values")
        return (code / METERS16_SCALE).astype(np.float32)
    raise DataFormatError(f"depth PNG has mode {image.mode}; expected L (disparity) or I;16")


def depth_encoding_of(image: Image.Image) -> str:
    return DISPARITY8 if image.mode == "L" else METERS16


def read_depth(path: Path) -> np.ndarray:
    """HxW float32 meters, 0 = invalid; errors name the file."""
    try:
        return decode_depth(open_image(path))
    except DataFormatError as e:
        raise with_path(path, e) from None
