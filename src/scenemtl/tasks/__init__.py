"""Tasks as data: the registry of task kinds and the builders that turn specs into tasks.

A *spec* is the JSON-able description of one task that a dataset provides (its kind and
what the data says about it: the class table, the depth encoding). A run learns the
tasks named by ``data.tasks`` (default: all the dataset provides); the network, the
losses, metrics and files follow from the specs, which checkpoints carry in their
hyperparameters. Per-run choices for a task (depth space, depth loss) are its *options*
(``model.task_options``).

Adding a kind: one file with a :class:`~scenemtl.tasks.base.Task` subclass and one line
in :data:`TASK_KINDS`.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from scenemtl.data.classes import cityscapes_class_table
from scenemtl.data.format import DISPARITY8, DISPARITY8_MAX_M, DISPARITY8_MIN_M
from scenemtl.errors import UserError
from scenemtl.tasks.base import Task
from scenemtl.tasks.depth import DepthTask
from scenemtl.tasks.normals import NormalsTask
from scenemtl.tasks.segmentation import SegmentationTask

if TYPE_CHECKING:
    from scenemtl.data.format import DatasetInfo

TASK_KINDS: dict[str, type[Task]] = {
    "segmentation": SegmentationTask,
    "depth": DepthTask,
    "normals": NormalsTask,
}

TaskSpecs = dict[str, dict[str, Any]]
"""Task name -> spec, in the order the network emits them."""


def dataset_task_specs(info: DatasetInfo) -> TaskSpecs:
    """The tasks a dataset provides. A MiniScapes-layout dataset: its ``semseg/`` and
    ``depth/``, then the ``extra_tasks`` its dataset.json lists (e.g. ``normals``), in that
    order; an info of another layout lists its own (its ``task_specs``, e.g. the MTAN
    layout)."""
    own = getattr(info, "task_specs", None)
    if own:
        return {k: dict(v) for k, v in own.items()}
    specs: TaskSpecs = {
        "semseg": {"kind": "segmentation", "classes": info.classes},
        "depth": {
            "kind": "depth",
            "encoding": info.depth_encoding,
            "range_m": list(info.depth_range_m),
        },
    }
    specs.update({name: dict(spec) for name, spec in info.extra_tasks.items()})
    return specs


def legacy_task_specs() -> TaskSpecs:
    """The two tasks every run had before tasks were data (checkpoints without specs)."""
    return {
        "semseg": {"kind": "segmentation", "classes": cityscapes_class_table()},
        "depth": {
            "kind": "depth",
            "encoding": DISPARITY8,
            "range_m": [DISPARITY8_MIN_M, DISPARITY8_MAX_M],
        },
    }


def select_tasks(
    available: Mapping[str, Mapping[str, Any]], names: Sequence[str] | None
) -> TaskSpecs:
    """The specs of the tasks a run learns, in the dataset's order.

    Raises:
        UserError: an unknown or repeated name, or an empty selection.
    """
    if names is None:
        return {k: dict(v) for k, v in available.items()}
    if isinstance(names, str) or not all(isinstance(n, str) for n in names):
        raise UserError(f"data.tasks must be a list of task names, got {names!r}")
    if not names:
        raise UserError("data.tasks is empty; name at least one task")
    if len(set(names)) != len(names):
        raise UserError(f"data.tasks names a task twice: {list(names)}")
    unknown = [n for n in names if n not in available]
    if unknown:
        raise UserError(
            f"data.tasks: the dataset has no task {unknown[0]!r}; it provides "
            f"{', '.join(available)}"
        )
    return {k: dict(v) for k, v in available.items() if k in names}


def build_task(
    name: str, spec: Mapping[str, Any], options: Mapping[str, Any] | None = None
) -> Task:
    """A task object from its spec and the run's options for it.

    Raises:
        UserError: unknown kind, or an option the kind does not have (one line).
    """
    if not isinstance(spec, Mapping) or spec.get("kind") not in TASK_KINDS:
        kind = spec.get("kind") if isinstance(spec, Mapping) else spec
        raise UserError(f"task {name!r}: unknown kind {kind!r}; known: {', '.join(TASK_KINDS)}")
    cls = TASK_KINDS[spec["kind"]]
    kwargs = {k: v for k, v in spec.items() if k != "kind"}
    options = dict(options or {})
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self", "name"}
    for key in options:
        if key not in accepted or key in kwargs:
            choices = sorted(accepted - set(kwargs))
            raise UserError(
                f"model.task_options.{name}: unknown option {key!r}; "
                f"{cls.kind} tasks take {', '.join(choices) or 'none'}"
            )
    try:
        return cls(name, **kwargs, **options)
    except (TypeError, ValueError) as e:
        raise UserError(f"task {name!r}: malformed spec or option value ({e})") from None


def build_tasks(
    specs: Mapping[str, Mapping[str, Any]], options: Mapping[str, Mapping[str, Any]] | None = None
) -> list[Task]:
    """Task objects for every spec, in order.

    Raises:
        UserError: options for a task that is not learned, or see :func:`build_task`.
    """
    options = dict(options or {})
    unknown = sorted(set(options) - set(specs))
    if unknown:
        raise UserError(
            f"model.task_options names task {unknown[0]!r}, which this run does not learn "
            f"(tasks: {', '.join(specs)})"
        )
    if not specs:
        raise UserError("a run needs at least one task")
    return [build_task(name, spec, options.get(name)) for name, spec in specs.items()]


__all__ = [
    "TASK_KINDS",
    "DepthTask",
    "NormalsTask",
    "SegmentationTask",
    "Task",
    "TaskSpecs",
    "build_task",
    "build_tasks",
    "dataset_task_specs",
    "legacy_task_specs",
    "select_tasks",
]
