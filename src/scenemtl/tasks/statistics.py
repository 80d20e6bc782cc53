"""What ``scenemtl data stats`` and ``scenemtl data check`` ask of a task kind's files.

A task kind that has dataset statistics (the depth normalization, the class
frequencies) returns a :class:`TargetStatistics` from
:meth:`~scenemtl.tasks.base.Task.statistics`; the statistics command only sums them over
a split and stores each task's entries in dataset.json "stats".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Histogram:
    """One histogram to plot: ``counts`` [K], bin ``edges`` [K+1], what the x axis is."""

    counts: np.ndarray
    edges: np.ndarray
    xlabel: str


class TargetStatistics:
    """Running statistics of one task's targets over a split (float64/int64 sums, so
    merging the statistics of two halves is exact up to rounding)."""

    def add(self, target: np.ndarray) -> None:
        """Count one image's target, as :meth:`~scenemtl.tasks.base.Task.read_target`
        returns it: [H,W] (or [C,H,W])."""
        raise NotImplementedError

    def merge(self, other: TargetStatistics) -> None:
        """Add the counts of ``other`` (of the same class) to these."""
        raise NotImplementedError

    def result(self, where: str) -> dict[str, Any]:
        """The entries of dataset.json "stats" (JSON-able, keys unique to the kind).

        Raises:
            DataFormatError: ``<where> ...`` when the split cannot give them (e.g. no
                valid pixel).
        """
        raise NotImplementedError

    def histograms(self) -> dict[str, Histogram]:
        """Histograms worth a picture, by a name for their file (default: none)."""
        return {}
