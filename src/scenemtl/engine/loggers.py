"""Loggers of a run directory."""

from __future__ import annotations

import csv
import io
import os
from typing import Any

from lightning.pytorch.loggers import CSVLogger

from scenemtl.atomic import atomic_write_bytes


class AppendingCSVLogger(CSVLogger):
    """CSVLogger that keeps the rows already in metrics.csv.

    Lightning's writer deletes an existing metrics.csv when it starts, and starts from an
    empty header. A resumed fit, or `test` logging into the run of its checkpoint, must
    extend the trace instead: the old file is put back and the writer continues from its
    header (new columns make the writer rewrite the file with the old rows kept).
    """

    @property
    def experiment(self) -> Any:
        if self._experiment is not None:
            return self._experiment
        path = os.path.join(self.log_dir, "metrics.csv")
        previous = None
        if self._fs.isfile(path):
            with self._fs.open(path, "rb") as f:
                previous = f.read()
        writer = super().experiment
        if previous:
            atomic_write_bytes(path, previous)
            header = next(csv.reader(io.StringIO(previous.decode("utf-8"))), [])
            writer.metrics_keys = sorted(set(header))
        return writer
