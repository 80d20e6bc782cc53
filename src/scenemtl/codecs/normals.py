"""Surface-normal PNGs (docs/normals.md): 8-bit RGB, ``c = round((n+1)/2 * 255)`` per
component of the unit normal, RGB (0,0,0) = invalid. In memory: float32 [3,H,W] unit
vectors, the zero vector where invalid."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image

from scenemtl.codecs.image import open_image, with_path
from scenemtl.errors import DataFormatError

NORMALS_RGB8 = "rgb8"
NORMALS_ENCODINGS: tuple[str, ...] = (NORMALS_RGB8,)
NORMALS_CODEC_MAX_ANGLE_DEG = math.degrees(math.asin(math.sqrt(3.0) / 255.0))
"""Largest angle (0.389 deg) between a unit normal and its 8-bit PNG round trip: each
component is off by at most half a step, 1/255, so the vector by at most sqrt(3)/255,
and renormalizing turns a unit vector by at most asin of that."""

NORMALS_UNIT_TOLERANCE = 0.05
"""A valid pixel of a normals PNG must decode to a vector of length 1 +- this (a
quantized unit vector decodes to 1 +- sqrt(3)/255 = 0.007)."""
NORMALS_ZERO_LENGTH = 0.05
"""Pixels decoding to a shorter vector are invalid (grey 128 as some releases store the
zero vector)."""
NORMALS_MIN_LENGTH = 1e-6
"""Vectors shorter than this (or not finite) are written as invalid."""


def _as_chw(normals: np.ndarray) -> np.ndarray:
    arr = np.asarray(normals)
    if arr.ndim == 3 and arr.shape[0] == 3:
        return arr
    if arr.ndim == 3 and arr.shape[2] == 3:
        return arr.transpose(2, 0, 1)
    raise ValueError(f"normals must be [3,H,W] or [H,W,3], got {arr.shape}")


def encode_normals(normals: np.ndarray) -> Image.Image:
    """Normals [3,H,W] (or [H,W,3]) to an 8-bit RGB PNG image.

    Vectors are normalized first; zero, near-zero (< 1e-6) or non-finite vectors are
    written as RGB (0,0,0), invalid.
    """
    n = _as_chw(normals).astype(np.float64)
    length = np.sqrt(np.sum(n * n, axis=0))
    valid = np.isfinite(length) & (length > NORMALS_MIN_LENGTH)
    unit = np.where(valid, n / np.where(valid, length, 1.0), 0.0)
    code = np.clip(np.rint((unit + 1.0) * 127.5), 0, 255).astype(np.uint8)
    code[:, ~valid] = 0
    return Image.fromarray(np.ascontiguousarray(code.transpose(1, 2, 0)), mode="RGB")


def decode_normals(image: Image.Image) -> np.ndarray:
    """An 8-bit RGB normals PNG to float32 unit normals [3,H,W], zero = invalid.

    Raises:
        DataFormatError: wrong mode, or pixels that are not encoded unit vectors
            (without the file name; see :func:`read_normals`).
    """
    if image.mode != "RGB":
        raise DataFormatError(f"normals PNG has mode {image.mode}; expected RGB (8-bit)")
    code = np.asarray(image, dtype=np.float64).transpose(2, 0, 1)
    n = code / 127.5 - 1.0
    length = np.sqrt(np.sum(n * n, axis=0))
    invalid = (code.sum(axis=0) == 0) | (length < NORMALS_ZERO_LENGTH)
    bad = ~invalid & (np.abs(length - 1.0) > NORMALS_UNIT_TOLERANCE)
    if bad.any():
        worst = float(length[bad][np.argmax(np.abs(length[bad] - 1.0))])
        raise DataFormatError(
            f"{int(bad.sum())} pixel(s) do not encode unit normals (a length of {worst:.3f}; "
            f"expected 1 +- {NORMALS_UNIT_TOLERANCE}, or RGB 0,0,0 for invalid)"
        )
    out = np.where(invalid, 0.0, n / np.where(invalid, 1.0, length))
    return out.astype(np.float32)


def read_normals(path: Path) -> np.ndarray:
    """float32 [3,H,W] unit normals from a PNG, zero = invalid; errors name the file."""
    try:
        return decode_normals(open_image(path))
    except DataFormatError as e:
        raise with_path(path, e) from None
