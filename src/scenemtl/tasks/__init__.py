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
from collections.abc import Collection, Mapping, Sequence
from typing import Any, Protocol

from scenemtl.codecs.classes import cityscapes_class_table
from scenemtl.codecs.depth import DISPARITY8, DISPARITY8_MAX_M, DISPARITY8_MIN_M
from scenemtl.errors import UserError
from scenemtl.tasks.base import Task
from scenemtl.tasks.boundaries import BoundariesTask
from scenemtl.tasks.depth import DepthTask
from scenemtl.tasks.normals import NormalsTask
from scenemtl.tasks.saliency import SaliencyTask
from scenemtl.tasks.segmentation import SegmentationTask

TASK_KINDS: dict[str, type[Task]] = {
    "segmentation": SegmentationTask,
    "depth": DepthTask,
    "normals": NormalsTask,
    "boundaries": BoundariesTask,
    "saliency": SaliencyTask,
}

TaskSpecs = dict[str, dict[str, Any]]
"""Task name -> spec, in the order the network emits them."""

FLAT_TASK_OPTIONS: dict[str, tuple[str, str]] = {
    flat: (kind, option)
    for kind, cls in TASK_KINDS.items()
    for flat, option in cls.flat_options.items()
}
"""``model.<flat>`` -> (task kind, option): the flat spellings of task options that
configs and checkpoints used before tasks were data (``depth_space``, ``depth_loss``,
``silog_lambda``), each declared by its kind (:attr:`Task.flat_options`). They are
translated here, in :func:`options_of_learned_tasks`, and nowhere else."""


class ProvidesTasks(Protocol):
    """What a dataset description gives the registry: its tasks' specs, in order (a
    layout's :class:`~scenemtl.data.format.DatasetInfo` builds them from its files)."""

    @property
    def task_specs(self) -> Mapping[str, Mapping[str, Any]]: ...


def dataset_task_specs(info: ProvidesTasks) -> TaskSpecs:
    """The tasks a dataset provides, in its order (copies: the caller may edit them)."""
    return {name: dict(spec) for name, spec in info.task_specs.items()}


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


def legacy_heads() -> dict[str, int]:
    """Task name -> output channels of :func:`legacy_task_specs`' tasks: the network of
    a checkpoint without specs, and of a model built from its configuration alone."""
    return {task.name: task.channels for task in build_tasks(legacy_task_specs())}


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


def options_of_learned_tasks(
    learned: Mapping[str, Mapping[str, Any]],
    provided: Collection[str] | None = None,
    task_options: Mapping[str, Mapping[str, Any] | None] | None = None,
    flat_options: Mapping[str, Any] | None = None,
    loss_weights: Mapping[str, float] | None = None,
) -> tuple[dict[str, dict[str, Any]], dict[str, float]]:
    """A run's per-task settings reduced to the tasks it learns: ``(task_options,
    loss_weights)``, the flat options (:data:`FLAT_TASK_OPTIONS`, None = unset) merged
    over ``task_options``.

    A flat option goes to the learned task of the kind that declares it (the depth task,
    whatever its name), under ``task_options``' entry for that task if both are set.

    A setting for a task the run does not learn is dropped silently when the data
    provides that task (``provided``), and so is a flat option no learned task takes: a
    config written for semseg + depth serves the single-task baselines unchanged
    (``--data.tasks '[semseg]'``), and a study's baselines are such runs. A setting naming
    a task the data does not provide is a mistake (a typo, another dataset's task) and is
    refused.

    Args:
        learned: the specs of the tasks the run learns (name -> spec with its "kind").
        provided: the tasks the data provides (None: only ``learned`` are known).

    Raises:
        UserError: a task name neither learned nor provided, named with its key; a flat
            option two learned tasks could take.
    """
    known = set(learned) | set(provided or ())
    for key, per_task in (("task_options", task_options), ("loss_weights", loss_weights)):
        unknown = [name for name in per_task or {} if name not in known]
        if unknown:
            which = f"the data provides {', '.join(provided)}" if provided else ""
            raise UserError(
                f"model.{key} names an unknown task {unknown[0]!r}; "
                + (which or f"the run learns {', '.join(learned)}")
            )
    options = {
        name: dict(value or {}) for name, value in (task_options or {}).items() if name in learned
    }
    for flat, value in (flat_options or {}).items():
        kind, option = FLAT_TASK_OPTIONS[flat]
        takers = [name for name, spec in learned.items() if spec.get("kind") == kind]
        if value is None or not takers:
            continue
        if len(takers) > 1:
            raise UserError(
                f"model.{flat} could set {option!r} of {', '.join(takers)} ({kind} tasks); "
                f"set model.task_options.<task>.{option} instead"
            )
        options.setdefault(takers[0], {})[option] = value
    weights = {name: w for name, w in (loss_weights or {}).items() if name in learned}
    return options, weights


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
    "FLAT_TASK_OPTIONS",
    "TASK_KINDS",
    "BoundariesTask",
    "DepthTask",
    "NormalsTask",
    "SaliencyTask",
    "SegmentationTask",
    "Task",
    "TaskSpecs",
    "build_task",
    "build_tasks",
    "dataset_task_specs",
    "legacy_heads",
    "legacy_task_specs",
    "options_of_learned_tasks",
    "select_tasks",
]
