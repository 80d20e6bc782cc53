"""The two tasks, described once.

Everything that loops over tasks (models, losses, metrics, visualization, submission)
reads this module instead of spelling out "semseg" and "depth" itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

IGNORE_INDEX = 255
"""Label value of pixels without a semantic class (Cityscapes convention)."""

INVALID_DEPTH = 0.0
"""Depth value (meters) of pixels without valid depth: sky, missing disparity, padding."""


@dataclass(frozen=True)
class Task:
    """One dense prediction task.

    Attributes:
        name: key of the task in batches, model outputs, metric names and file layouts.
        channels: number of output channels a model emits for the task.
        kind: "classification" (logits over ``channels`` classes) or "regression".
    """

    name: str
    channels: int
    kind: str


SEMSEG = Task(name="semseg", channels=19, kind="classification")
DEPTH = Task(name="depth", channels=1, kind="regression")
TASKS: tuple[Task, ...] = (SEMSEG, DEPTH)
TASK_NAMES: tuple[str, ...] = tuple(t.name for t in TASKS)


def get_task(name: str) -> Task:
    for task in TASKS:
        if task.name == name:
            return task
    raise KeyError(f"unknown task {name!r}; known: {', '.join(TASK_NAMES)}")


@dataclass(frozen=True)
class SemanticClass:
    train_id: int
    name: str
    color: tuple[int, int, int]


@cache
def semantic_classes() -> tuple[SemanticClass, ...]:
    """The 19 Cityscapes training classes, from cityscapesscripts' label table."""
    from cityscapesscripts.helpers.labels import labels

    by_id = {lab.trainId: lab for lab in labels if 0 <= lab.trainId < SEMSEG.channels}
    if sorted(by_id) != list(range(SEMSEG.channels)):
        raise RuntimeError("cityscapesscripts label table does not define trainIds 0..18")
    return tuple(
        SemanticClass(i, by_id[i].name, tuple(int(c) for c in by_id[i].color))
        for i in range(SEMSEG.channels)
    )


def class_names() -> list[str]:
    return [c.name for c in semantic_classes()]


def class_colors() -> list[tuple[int, int, int]]:
    return [c.color for c in semantic_classes()]


def train_id(name: str) -> int:
    """trainId of a Cityscapes class by name, e.g. ``train_id("traffic light") == 6``."""
    for c in semantic_classes():
        if c.name == name:
            return c.train_id
    raise KeyError(f"unknown class {name!r}")
