"""The layout of a run directory, in one place.

::

    <root>/<name>/version_N/config.yaml       the configuration that trained it (fit only)
                            hparams.yaml      the module's hyperparameters (Lightning)
                            metrics.csv       every logged value (continued on resume)
                            run.json          status, tasks (their labels, units and
                                              directions), monitor, parameters, time
                            events.out.tfevents.*   TensorBoard
                            checkpoints/best.ckpt   by the run's monitor metric
                            checkpoints/last.ckpt   for resuming
                            submission.zip    predictions of best.ckpt on the test split

Versions are reserved by creating their folder (``mkdir`` fails if it exists), so two
runs started at the same moment with the same name never share a folder.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from scenemtl.errors import UserError
from scenemtl.names import check_name

_VERSION = re.compile(r"^version_(\d+)$")


class ReportedTask(Protocol):
    """What ``run.json`` records of a task (:class:`scenemtl.tasks.base.Task` has it)."""

    name: str
    headline_label: str
    headline_unit: str
    higher_is_better: bool


def task_record(tasks: Iterable[ReportedTask]) -> dict[str, Any]:
    """The ``run.json`` fields that describe a run's tasks, so that reports (``runs``,
    ``study report``) show and rank each task's headline metric without knowing its kind:
    ``tasks`` (names, in the network's order), ``directions`` (name -> "max"|"min"),
    ``labels`` (name -> e.g. "mean IoU (%)") and ``units`` (name -> e.g. "%")."""
    tasks = list(tasks)
    return {
        "tasks": [t.name for t in tasks],
        "directions": {t.name: "max" if t.higher_is_better else "min" for t in tasks},
        "labels": {t.name: t.headline_label for t in tasks},
        "units": {t.name: t.headline_unit for t in tasks},
    }


@dataclass(frozen=True)
class RunDir:
    """One ``<root>/<name>/version_N`` folder."""

    path: Path

    CONFIG = "config.yaml"
    HPARAMS = "hparams.yaml"
    METRICS = "metrics.csv"
    RECORD = "run.json"
    CHECKPOINTS = "checkpoints"
    BEST = "best"
    LAST = "last"
    CKPT_SUFFIX = ".ckpt"
    SUBMISSION = "submission.zip"

    @property
    def name(self) -> str:
        return self.path.parent.name

    @property
    def version(self) -> str:
        return self.path.name

    @property
    def config(self) -> Path:
        return self.path / self.CONFIG

    @property
    def hparams(self) -> Path:
        return self.path / self.HPARAMS

    @property
    def metrics(self) -> Path:
        return self.path / self.METRICS

    @property
    def record(self) -> Path:
        return self.path / self.RECORD

    @property
    def checkpoints(self) -> Path:
        return self.path / self.CHECKPOINTS

    @property
    def best_ckpt(self) -> Path:
        return self.checkpoints / f"{self.BEST}{self.CKPT_SUFFIX}"

    @property
    def last_ckpt(self) -> Path:
        return self.checkpoints / f"{self.LAST}{self.CKPT_SUFFIX}"

    @property
    def submission(self) -> Path:
        return self.path / self.SUBMISSION

    @classmethod
    def of_checkpoint(cls, ckpt: str | os.PathLike) -> RunDir | None:
        """The run a checkpoint file belongs to, if it lies in a run's ``checkpoints/``."""
        parent = Path(ckpt).resolve().parent
        if parent.name == cls.CHECKPOINTS and _VERSION.match(parent.parent.name):
            return cls(parent.parent)
        return None


@dataclass(frozen=True)
class RunFamily:
    """All versions of one run name: ``<root>/<name>/version_*``.

    ``name`` is checked by :func:`scenemtl.names.check_name` when the family is made, so
    no run folder is ever created outside ``root`` (``--run.name ../x`` is refused).
    """

    root: Path
    name: str

    def __post_init__(self) -> None:
        check_name(self.name, "run name (--run.name, or the config file's stem)")

    @property
    def path(self) -> Path:
        return self.root / self.name

    def versions(self) -> list[RunDir]:
        """Existing versions, oldest first."""
        if not self.path.is_dir():
            return []
        found = [(int(m.group(1)), p) for p in self.path.iterdir() if (m := _VERSION.match(p.name))]
        return [RunDir(p) for _, p in sorted(found)]

    def latest_resumable(self) -> RunDir:
        """The newest version that holds ``last.ckpt`` (for ``--ckpt_path last``)."""
        for run in reversed(self.versions()):
            if run.last_ckpt.is_file():
                return run
        raise UserError(
            f"--ckpt_path last: no {self.path}/version_*/checkpoints/last.ckpt to resume"
        )

    def reserve(self) -> RunDir:
        """Create and return the next free ``version_N`` (atomic: never shared)."""
        self.path.mkdir(parents=True, exist_ok=True)
        existing = self.versions()
        n = int(existing[-1].version.split("_")[1]) + 1 if existing else 0
        for _ in range(10_000):
            candidate = self.path / f"version_{n}"
            try:
                candidate.mkdir()
            except FileExistsError:
                n += 1
                continue
            except FileNotFoundError:
                # a run refused at start removes the (empty) folders it created
                self.path.mkdir(parents=True, exist_ok=True)
                continue
            return RunDir(candidate)
        raise UserError(f"{self.path}: could not reserve a new version folder")
