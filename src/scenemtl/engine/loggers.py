"""Loggers of a run directory, and what every logger of a run receives beyond metrics."""

from __future__ import annotations

import csv
import io
import os
from typing import Any

import numpy as np
from lightning.pytorch.loggers import CSVLogger, Logger, TensorBoardLogger

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


def log_image(logger: Logger, key: str, image: np.ndarray, step: int) -> bool:
    """Send one uint8 RGB image [H,W,3] to ``logger`` in the way its service stores images.

    Lightning's ``Logger`` has no image method (each service has its own), so the
    loggers a user can add with ``--trainer.logger`` are served here by what they offer:
    TensorBoard's ``add_image``, a ``log_image(key, images, step)`` method (W&B, Neptune),
    or an MLflow run's image artifacts. Loggers of metrics only (CSV) get none.

    Returns:
        whether the logger took the image.
    """
    if isinstance(logger, TensorBoardLogger):
        logger.experiment.add_image(key, image, step, dataformats="HWC")
        return True
    run_id = getattr(logger, "run_id", None)
    experiment = logger.experiment
    if run_id is not None and hasattr(experiment, "log_image"):  # an MLflow client
        experiment.log_image(run_id, image, key=key.replace("/", "_"), step=step)
        return True
    if callable(getattr(logger, "log_image", None)):
        logger.log_image(key, [image], step=step)
        return True
    return False
