"""What a reported metric is: names, directions, labels and units, the grader and Δm.

Each task of a run is reported by its *headline* metric (logged as ``<stage>/<task>``).
How to show and rank it (:class:`Headline`: label, unit, direction) is a property of the
task's kind (:class:`~scenemtl.tasks.base.Task` class variables ``headline_label``,
``headline_unit``, ``higher_is_better``); ``fit`` writes it into ``run.json``
(:func:`scenemtl.reporting.run_dir.task_record`) and every report reads it from there,
so a report never needs to know a task kind. Runs written before ``run.json`` held
labels fall back to :data:`KNOWN_KINDS`, the kinds that existed then.

Torch-free (pure Python), like the rest of :mod:`scenemtl.reporting`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from scenemtl.errors import UserError

GRADER = "grader"
"""Column of the course metric."""
GRADER_TASKS = ("semseg", "depth")
"""The tasks whose headline metrics the course's grader combines."""


def _float64(x: Any) -> Any:
    # a tensor stays a tensor (duck-typed: this module never imports torch), in float64
    return x.double() if hasattr(x, "double") else float(x)


def _positive_part(x: Any) -> Any:
    # max(x, 0) with NaN kept: Python's max returns its first argument unless the second
    # is larger, and nothing is larger than NaN; clamp propagates NaN too
    return x.clamp(min=0) if hasattr(x, "clamp") else max(x, 0.0)


def grader(semseg: Any, depth: Any) -> Any:
    """The course's multi-task score: ``max(semseg - 50, 0) + max(50 - depth, 0)``.

    Args:
        semseg: mean IoU in [0, 100] (a float, or a tensor of any shape).
        depth: SI-logRMSE (x100), likewise.

    Returns:
        the score in [0, 100], a float64 tensor if either input is a tensor, else a
        float; NaN propagates.
    """
    return _positive_part(_float64(semseg) - 50.0) + _positive_part(50.0 - _float64(depth))


def delta_m(
    method: Mapping[str, float], baseline: Mapping[str, float], higher_is_better: Mapping[str, bool]
) -> float:
    """Δm in percent (Maninis et al. 2019; Vandenhende et al. 2021): the mean over the
    metrics of ``(-1)^{l_k} (M_k - B_k) / B_k * 100`` with ``l_k = 1`` when LOWER is
    better, so that a positive Δm is a gain over the baselines (single-task runs).

    The Nash-MTL, FAMO and Aligned-MTL tables print the same quantity with the opposite
    sign (lower is better there): their Δm% is ``-delta_m(...)``.

    Args:
        method: metric -> value of the compared method.
        baseline: metric -> value of the single-task baselines.
        higher_is_better: metric -> direction; its keys are the metrics averaged.

    Raises:
        UserError: no metric, a metric missing from either side, or a zero baseline.
    """
    if not higher_is_better:
        raise UserError("delta_m needs at least one metric")
    total = 0.0
    for name, higher in higher_is_better.items():
        if method.get(name) is None or baseline.get(name) is None:
            raise UserError(f"delta_m: metric {name!r} missing from the method or the baseline")
        base = float(baseline[name])
        if base == 0 or math.isnan(base):
            raise UserError(f"delta_m: baseline {name!r} is {base}; cannot divide by it")
        sign = 1.0 if higher else -1.0
        total += sign * (float(method[name]) - base) / base
    return 100.0 * total / len(higher_is_better)


# --------------------------------------------------------------------------------------
# how a headline metric is shown and ranked


@dataclass(frozen=True)
class Headline:
    """How a task's headline metric is shown and ranked.

    Attributes:
        label: what the metric is, e.g. "mean IoU (%)" (``Task.headline_label``).
        unit: its unit alone, e.g. "%", "deg"; "" for a dimensionless score
            (``Task.headline_unit``).
        higher_is_better: its direction (``Task.higher_is_better``).
    """

    label: str = ""
    unit: str = ""
    higher_is_better: bool = True

    @property
    def mode(self) -> str:
        """ "max" or "min", as ``run.json`` and checkpoint monitors write a direction."""
        return "max" if self.higher_is_better else "min"

    def title(self, name: str) -> str:
        """The metric's name with its label, for table headers and axes:
        ``"semseg mean IoU (%)"``."""
        return f"{name} {self.label}" if self.label else name


GRADER_HEADLINE = Headline("", "", True)
"""The grader: higher is better; shown by its name alone."""

KNOWN_KINDS: dict[str, Headline] = {
    "segmentation": Headline("mean IoU (%)", "%", True),
    "depth": Headline("SI-logRMSE (x100)", "", False),
    "normals": Headline("mean angular error (deg)", "deg", False),
}
"""The task kinds that existed before ``run.json`` recorded labels and units, as they
were then: for reading those older runs only. A new kind needs no entry (its runs
record their own); a test checks these against the kinds' class variables."""
LEGACY_KINDS = {"semseg": "segmentation", "depth": "depth"}
"""Task name -> kind for runs from before tasks were data (their names were fixed)."""


def fallback_headline(task: str) -> Headline:
    """How a run that did not record it shows ``task``: by the kind of the two built-in
    tasks, else the kind the task is named after (``normals``), else unlabelled and
    higher is better."""
    kind = LEGACY_KINDS.get(task, task)
    return KNOWN_KINDS.get(kind, Headline())


def headline_of(record: Mapping[str, Any], task: str) -> Headline:
    """How ``run.json`` (``record``) says ``task``'s headline is shown and ranked; what
    it does not say comes from :func:`fallback_headline`. ``record`` is assumed checked
    (:func:`scenemtl.reporting.runs.check_record`)."""
    fallback = GRADER_HEADLINE if task == GRADER else fallback_headline(task)
    directions = record.get("directions") or {}
    labels = record.get("labels") or {}
    units = record.get("units") or {}
    mode = directions.get(task)
    return Headline(
        label=labels.get(task, fallback.label),
        unit=units.get(task, fallback.unit),
        higher_is_better=fallback.higher_is_better if mode is None else mode == "max",
    )
