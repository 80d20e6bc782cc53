"""Class tables. The default is the 19 Cityscapes training classes (cityscapesscripts).

A dataset's own table lives in its ``dataset.json`` ("classes": names and colours); the
segmentation task reads it from there. This module only knows the Cityscapes defaults
that the procedural generator and the Cityscapes converter write.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Any

CITYSCAPES_NUM_CLASSES = 19


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
