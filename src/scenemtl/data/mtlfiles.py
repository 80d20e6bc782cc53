"""What the NYUD-v2 and PASCAL-Context readers share below the dataset: the description
of a release (:class:`Layout`, :class:`BenchTask`) and bounded readers of its files
(8-bit PNGs, ``.mat`` files read with scipy, never pickle; images are
:func:`scenemtl.data.format.read_rgb`'s).

:mod:`scenemtl.data.nyud` and :mod:`scenemtl.data.pascal` describe their release with
these; :mod:`scenemtl.data.mtlpytorch` reads a release so described.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from scenemtl.data.format import open_image
from scenemtl.data.mtan import one_line_of
from scenemtl.errors import DataFormatError

MAX_MAT_BYTES = 64 << 20
"""Largest ``.mat`` file read (PASCAL's part annotations are at most a few MB)."""
MAX_MAT_DECOMPRESSED = 512 << 20
"""Most bytes the compressed elements of one ``.mat`` may inflate to, counted by streaming
them before scipy reads the file: a deflate bomb is refused, not allocated."""
_MAT5_TEXT = b"MATLAB 5.0 MAT-file"
_MI_COMPRESSED = 15


@dataclass(frozen=True)
class BenchTask:
    """One task of a release: its spec and how one image's target is read.

    Attributes:
        spec: the task's spec (``{"kind": ...}`` plus what the kind needs).
        read: ``(root, image id, (h, w) of the image) -> target`` ([H,W] or [3,H,W], as
            the kind's batches hold it) or None when the image has no label for the task.
            Raises DataFormatError naming the file.
    """

    spec: dict[str, Any]
    read: Callable[[Path, str, tuple[int, int]], np.ndarray | None]


@dataclass(frozen=True)
class Layout:
    """What differs between the releases (see :mod:`scenemtl.data.nyud`,
    :mod:`scenemtl.data.pascal`).

    Attributes:
        name: ``nyud`` or ``pascal_context`` (also the ``data.format`` that forces it).
        markers: folders whose presence makes a root this release.
        split_list: the text file listing a split's ids.
        image: ``(root, id) -> the image file``.
        tasks: name -> :class:`BenchTask`, in the order runs list them.
        canvas: ``(h, w)`` every sample is padded to, or None when all images have one
            size (then that size, checked on every read).
        partial_tasks: the tasks some images have no label of (their reader may return
            None; :attr:`DatasetInfo.partial_tasks`).
    """

    name: str
    markers: tuple[str, ...]
    split_list: Callable[[Path, str], Path]
    image: Callable[[Path, str], Path]
    tasks: dict[str, BenchTask]
    canvas: tuple[int, int] | None
    partial_tasks: tuple[str, ...] = ()


def read_index_png(path: Path, modes: tuple[str, ...] = ("L", "P")) -> np.ndarray:
    """An 8-bit single-channel PNG (a P image's palette indices; a 1-bit image as 0/255)
    as uint8 [H,W]."""
    image = open_image(path)
    if image.mode not in modes:
        raise DataFormatError(f"{path}: PNG mode {image.mode}, expected {' or '.join(modes)}")
    values = np.asarray(image, dtype=np.uint8)
    return values * np.uint8(255) if image.mode == "1" else values


def _check_mat_stream(path: Path, data: bytes) -> None:
    """Walk a MAT v5 file's top-level elements; inflate the compressed ones in bounded
    chunks only to count their size (nothing is kept)."""
    if not data.startswith(_MAT5_TEXT) or len(data) < 128:
        raise DataFormatError(
            f"{path}: not a MATLAB 5 .mat file (v7.3/HDF5 files are not read; save with -v7)"
        )
    order = {b"IM": "<", b"MI": ">"}.get(data[126:128])
    if order is None:
        raise DataFormatError(f"{path}: .mat header has no endian indicator")
    at, inflated = 128, 0
    while at + 8 <= len(data):
        kind, nbytes = np.frombuffer(data, dtype=f"{order}u4", count=2, offset=at)
        body = at + 8
        if int(kind) >> 16:  # small data element: 4 bytes of data inside the tag
            at += 8
            continue
        if body + int(nbytes) > len(data):
            raise DataFormatError(f"{path}: .mat element at byte {at} runs past the file end")
        if int(kind) == _MI_COMPRESSED:
            stream = zlib.decompressobj()
            chunk = data[body : body + int(nbytes)]
            while chunk:
                try:
                    out = stream.decompress(chunk, 1 << 20)
                except zlib.error as e:
                    raise DataFormatError(f"{path}: corrupt compressed .mat data ({e})") from None
                inflated += len(out)
                if inflated > MAX_MAT_DECOMPRESSED:
                    raise DataFormatError(
                        f"{path}: .mat data inflates to more than {MAX_MAT_DECOMPRESSED} bytes"
                    )
                chunk = stream.unconsumed_tail
            at = body + int(nbytes)
        else:
            inflated += int(nbytes)
            at = body + int(nbytes) + (-int(nbytes)) % 8
    if inflated > MAX_MAT_DECOMPRESSED:
        raise DataFormatError(f"{path}: .mat data larger than {MAX_MAT_DECOMPRESSED} bytes")


def read_mat(path: Path, names: tuple[str, ...]) -> dict[str, Any]:
    """The variables ``names`` of a MATLAB 5 ``.mat`` file, read with scipy (no pickle).

    The file size (:data:`MAX_MAT_BYTES`) and what its compressed elements inflate to
    (:data:`MAX_MAT_DECOMPRESSED`) are checked first; a missing variable is an error.
    """
    import scipy.io

    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise DataFormatError(f"{path}: file not found") from None
    if size > MAX_MAT_BYTES:
        raise DataFormatError(f"{path}: {size} bytes, more than {MAX_MAT_BYTES} for a .mat file")
    data = path.read_bytes()
    _check_mat_stream(path, data)
    try:
        found = scipy.io.loadmat(path, variable_names=list(names))
    except Exception as e:  # scipy raises many types on malformed files; one line each
        raise DataFormatError(f"{path}: not a readable .mat file ({one_line_of(e)})") from None
    for name in names:
        if name not in found:
            raise DataFormatError(f"{path}: no variable {name!r}")
    return found


def check_plane(path: Path, values: np.ndarray, size: tuple[int, int], what: str) -> np.ndarray:
    """``values`` if it is [H,W] of the image's size (a trailing 1-channel axis dropped)."""
    if values.ndim == 3 and values.shape[-1] == 1:
        values = values[..., 0]
    if values.ndim != 2:
        raise DataFormatError(f"{path}: {what} of shape {values.shape}, expected [H,W]")
    if values.shape != size:
        raise DataFormatError(
            f"{path}: {what} size {values.shape[1]}x{values.shape[0]} differs from its image "
            f"{size[1]}x{size[0]}"
        )
    return values


def binary_from_fraction(path: Path, values: np.ndarray, what: str) -> np.ndarray:
    """int64 {0, 1} from values in [0, 1] (``> 0.5`` is on, the papers' threshold)."""
    values = np.asarray(values, dtype=np.float64)
    if values.size and not (np.isfinite(values).all() and values.min() >= 0 and values.max() <= 1):
        raise DataFormatError(f"{path}: {what} values outside [0, 1]")
    return (values > 0.5).astype(np.int64)
