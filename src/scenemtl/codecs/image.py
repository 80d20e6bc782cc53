"""Opening an image file: its size is checked from the header before anything is decoded."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from scenemtl.errors import DataFormatError

MAX_IMAGE_PIXELS = 8192 * 8192
"""Largest image read (and largest ``image_size`` a dataset.json may declare): 67 M
pixels, a 48-megapixel photo fits; Cityscapes has 2 M. Checked from the image's header,
before it is decoded (Pillow's own bomb check only warns below 179 M pixels)."""


def open_image(path: Path) -> Image.Image:
    """Open and fully decode an image; DataFormatError naming the file if it cannot."""
    try:
        with Image.open(path) as im:
            if im.width * im.height > MAX_IMAGE_PIXELS:  # the header's size, nothing decoded
                raise DataFormatError(
                    f"{path}: {im.width}x{im.height} image, more than {MAX_IMAGE_PIXELS} pixels"
                )
            im.load()
            return im.copy()
    except FileNotFoundError:
        raise DataFormatError(f"{path}: file not found") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise DataFormatError(f"{path}: cannot decode image ({e})") from None


def with_path(path: Path, error: DataFormatError) -> DataFormatError:
    """``error`` with ``path`` in front, unless it names the file already."""
    return error if str(error).startswith(str(path)) else DataFormatError(f"{path}: {error}")
