"""NYUD-v2 as Multi-Task-Learning-PyTorch released it (``NYUD_MT``), and ATRC/InvPT's copy.

The four-task protocol of PAD-Net, MTI-Net, ATRC and InvPT: 40-class segmentation,
depth, surface normals and boundaries on 795 training and 654 validation images::

    ROOT/gt_sets/{train,val}.txt     image ids, one per line
    ROOT/images/{id}.jpg             RGB (InvPT's copy: .png)
    ROOT/segmentation/{id}.png       8-bit: 0 = not labelled, 1..40 = the 40 classes
    ROOT/depth/{id}.npy              float [H,W] (or [H,W,1]), meters; 0 = invalid
    ROOT/normals/{id}.npy            float [H,W,3] in -1..1, zero vector = invalid
                                     (InvPT's copy: RGB .png holding 255 (n + 1) / 2)
    ROOT/edge/{id}.npy               float [H,W] 0/1 (InvPT's copy: 8-bit .png 0/255)

How each becomes a target, as the reference loaders read it:

* ``semseg``: label ``v`` becomes ``v - 1`` and 0 becomes ignore (255): "we ignore the
  background class as other related works" (MTI-Net's and ATRC's loaders), 40 classes.
* ``depth``: meters as stored; non-positive and non-finite values are invalid (the
  loaders turn 0 into their ignore value).
* ``normals``: unit vectors (renormalized), zero where the stored vector is zero. A PNG
  holds ``2 v / 255 - 1`` per channel, never zero, so every pixel is valid there.
* ``boundaries``: on where the stored value is above 0.5 (the files hold 0 and 1, or 0
  and 255); the boundary metric's ``maxDist`` on NYUD is 0.011 of the image diagonal
  (ATRC's ``edge_tolerance``, InvPT's README).

Files are picked by extension per image: ``.jpg`` before ``.png`` for the image, ``.npy``
before ``.png`` for edges and normals, so either release reads without an option.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from scenemtl.codecs.depth import METERS16
from scenemtl.data.format import read_rgb
from scenemtl.data.mtan import _load, read_depth_array, read_normals
from scenemtl.data.mtlfiles import (
    BenchTask,
    Layout,
    binary_from_fraction,
    check_plane,
    read_index_png,
)
from scenemtl.errors import DataFormatError
from scenemtl.evaluation.boundary import MAX_DIST

NYUD_40_CLASSES = (
    "wall", "floor", "cabinet", "bed", "chair", "sofa", "table", "door", "window",
    "bookshelf", "picture", "counter", "blinds", "desk", "shelves", "curtain", "dresser",
    "pillow", "mirror", "floor mat", "clothes", "ceiling", "books", "refridgerator",
    "television", "paper", "towel", "shower curtain", "box", "whiteboard", "person",
    "night stand", "toilet", "sink", "lamp", "bathtub", "bag", "otherstructure",
    "otherfurniture", "otherprop",
)  # fmt: skip
"""The 40 classes of Gupta et al. (2013) in the order of their label ids 1..40 (the
release's PNG values; targets 0..39). The spelling "refridgerator" is the dataset's."""

NYUD_DEPTH_RANGE_M = (0.1, 10.0)
"""Depth range of the pictures and histograms (Kinect: about 0.5 to 10 m)."""


def voc_colormap(n: int) -> list[tuple[int, int, int]]:
    """The PASCAL VOC palette's first ``n`` colours (index bits spread over R, G, B from
    the high bit down), the colours PASCAL's class ids are drawn in."""
    colors = []
    for i in range(n):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        colors.append((r, g, b))
    return colors


def class_table(names: tuple[str, ...], first_color: int = 0) -> list[dict[str, Any]]:
    """A class table (train ids 0..N-1) coloured with :func:`voc_colormap` from
    palette index ``first_color`` on."""
    colors = voc_colormap(first_color + len(names))[first_color:]
    return [
        {"train_id": i, "name": name, "color": list(color)}
        for i, (name, color) in enumerate(zip(names, colors, strict=True))
    ]


def _first(root: Path, folder: str, image_id: str, extensions: tuple[str, ...]) -> Path:
    """The file of ``image_id`` in ``folder`` with the first extension that exists."""
    for ext in extensions:
        path = root / folder / f"{image_id}{ext}"
        if path.exists():
            return path
    return root / folder / f"{image_id}{extensions[0]}"


def _image(root: Path, image_id: str) -> Path:
    return _first(root, "images", image_id, (".jpg", ".png"))


def read_semseg(root: Path, image_id: str, size: tuple[int, int]) -> np.ndarray:
    """int64 [H,W]: PNG value ``v`` 1..40 -> ``v - 1``, 0 -> 255 (not labelled)."""
    path = root / "segmentation" / f"{image_id}.png"
    values = check_plane(path, read_index_png(path), size, "segmentation")
    if values.size and int(values.max()) > len(NYUD_40_CLASSES):
        bad = sorted({int(v) for v in np.unique(values[values > len(NYUD_40_CLASSES)])})[:5]
        raise DataFormatError(f"{path}: label values {bad} outside 0..40 (0 = not labelled)")
    labels = values.astype(np.int64) - 1
    labels[labels < 0] = 255
    return labels


def read_depth(root: Path, image_id: str, size: tuple[int, int]) -> np.ndarray:
    """float32 [H,W] meters, 0 = invalid."""
    path = root / "depth" / f"{image_id}.npy"
    return check_plane(path, read_depth_array(path), size, "depth")


def normals_from_png(path: Path) -> np.ndarray:
    """float32 [3,H,W] unit vectors of an RGB PNG holding ``255 (n + 1) / 2``."""
    image = read_rgb(path).astype(np.float64)
    n = np.moveaxis(2.0 * image / 255.0 - 1.0, -1, 0)
    # each channel is an odd multiple of 1/255 away from 0, so the norm is never 0
    return (n / np.sqrt((n**2).sum(axis=0))).astype(np.float32)


def read_normals_target(root: Path, image_id: str, size: tuple[int, int]) -> np.ndarray:
    path = _first(root, "normals", image_id, (".npy", ".png"))
    normals = read_normals(path) if path.suffix == ".npy" else normals_from_png(path)
    check_plane(path, normals[0], size, "normals")
    return normals


def read_edges(root: Path, image_id: str, size: tuple[int, int]) -> np.ndarray:
    """int64 [H,W] in {0, 1}."""
    path = _first(root, "edge", image_id, (".npy", ".png"))
    if path.suffix == ".npy":
        values = _load(path)
        if values.dtype.kind not in "fiub":
            raise DataFormatError(f"{path}: edge dtype {values.dtype}, expected numbers")
    else:
        values = read_index_png(path, ("L", "P", "1")).astype(np.float64) / 255.0
    return binary_from_fraction(path, check_plane(path, values, size, "edge map"), "edge map")


NYUD = Layout(
    name="nyud",
    markers=("gt_sets", "images"),
    split_list=lambda root, split: root / "gt_sets" / f"{split}.txt",
    image=_image,
    tasks={
        "semseg": BenchTask(
            {"kind": "segmentation", "classes": class_table(NYUD_40_CLASSES, first_color=1)},
            read_semseg,
        ),
        "depth": BenchTask(
            {"kind": "depth", "encoding": METERS16, "range_m": list(NYUD_DEPTH_RANGE_M)},
            read_depth,
        ),
        "normals": BenchTask({"kind": "normals"}, read_normals_target),
        "boundaries": BenchTask({"kind": "boundaries", "max_dist": MAX_DIST["nyud"]}, read_edges),
    },
    canvas=None,
)
"""The NYUD-v2 release: tasks in the papers' order (semseg, depth, normals, boundaries)."""
