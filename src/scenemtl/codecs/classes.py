"""Class tables and label PNGs. The default table is the 19 Cityscapes training classes
(cityscapesscripts).

A dataset's own table lives in its ``dataset.json`` ("classes": names and colours); the
segmentation task reads it from there. This module only knows the Cityscapes defaults
that the procedural generator and the Cityscapes converter write, and how a label PNG
is read (values are checked against a table by the segmentation task).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from scenemtl.codecs.image import open_image
from scenemtl.errors import DataFormatError

IGNORE_INDEX = 255
"""Label value of pixels without a semantic class (Cityscapes convention)."""
MAX_CLASSES = IGNORE_INDEX
"""A class table holds at most 255 classes: labels are 8-bit and 255 means ignore."""
CITYSCAPES_NUM_CLASSES = 19

HUMAN_PART_CLASSES: tuple[dict[str, Any], ...] = (
    {"name": "background", "color": [0, 0, 0]},
    {"name": "head", "color": [220, 20, 60]},
    {"name": "torso", "color": [255, 160, 0]},
    {"name": "upper arm", "color": [70, 190, 70]},
    {"name": "lower arm", "color": [0, 120, 255]},
    {"name": "upper leg", "color": [190, 80, 255]},
    {"name": "lower leg", "color": [0, 220, 220]},
)
"""The human parts' 7 classes of Multi-Task-Learning-PyTorch's PASCAL-Context loader
(``num_human_parts=6``, left and right together, 0 = not a person's part): the table of
the ``human_parts`` task in PASCAL-Context and in the procedural streets."""


@dataclass(frozen=True)
class SemanticClass:
    train_id: int
    name: str
    color: tuple[int, int, int]


@cache
def semantic_classes() -> tuple[SemanticClass, ...]:
    """The 19 Cityscapes training classes, from cityscapesscripts' label table."""
    from cityscapesscripts.helpers.labels import labels

    n = CITYSCAPES_NUM_CLASSES
    by_id = {lab.trainId: lab for lab in labels if 0 <= lab.trainId < n}
    if sorted(by_id) != list(range(n)):
        raise RuntimeError("cityscapesscripts label table does not define trainIds 0..18")
    return tuple(
        SemanticClass(i, by_id[i].name, tuple(int(c) for c in by_id[i].color)) for i in range(n)
    )


def class_names() -> list[str]:
    return [c.name for c in semantic_classes()]


def class_colors() -> list[tuple[int, int, int]]:
    return [c.color for c in semantic_classes()]


def cityscapes_class_table() -> list[dict[str, Any]]:
    """The table as dataset.json holds it: ``[{"train_id", "name", "color"}, ...]``."""
    return [
        {"train_id": c.train_id, "name": c.name, "color": list(c.color)} for c in semantic_classes()
    ]


def train_id(name: str) -> int:
    """trainId of a Cityscapes class by name, e.g. ``train_id("traffic light") == 6``."""
    for c in semantic_classes():
        if c.name == name:
            return c.train_id
    raise KeyError(f"unknown class {name!r}")


def read_semseg(path: Path) -> np.ndarray:
    """HxW uint8 trainIds (a P image's palette indices are its trainIds)."""
    im = open_image(path)
    if im.mode not in ("L", "P"):
        raise DataFormatError(f"{path}: semseg PNG has mode {im.mode}; expected L or P")
    return np.asarray(im, dtype=np.uint8)
