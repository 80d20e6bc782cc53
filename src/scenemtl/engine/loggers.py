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

    Args:
        resume_step: the ``global_step`` of the checkpoint a fit resumes from. Rows of
            later steps were logged by the run that died before it saved its next
            checkpoint; the resumed fit trains those steps again and logs them anew, so
            they are dropped (the row of optimizer step ``g`` has ``step == g - 1``;
            validation rows carry the step of their epoch's last batch).
        **kwargs: :class:`CSVLogger`'s.
    """

    def __init__(self, *args: Any, resume_step: int | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.resume_step = resume_step

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
            header, rows = _read_csv(previous)
            if self.resume_step is not None:
                rows = [r for r in rows if not _logged_after(r, header, self.resume_step)]
                previous = _write_csv(header, rows)
            atomic_write_bytes(path, previous)
            writer.metrics_keys = sorted(set(header))
        return writer


def _read_csv(data: bytes) -> tuple[list[str], list[list[str]]]:
    table = list(csv.reader(io.StringIO(data.decode("utf-8"))))
    return (table[0], table[1:]) if table else ([], [])


def _write_csv(header: list[str], rows: list[list[str]]) -> bytes:
    out = io.StringIO()
    csv.writer(out).writerows([header, *rows])  # "\r\n" lines, as Lightning's writer
    return out.getvalue().encode("utf-8")


def _logged_after(row: list[str], header: list[str], global_step: int) -> bool:
    """Whether ``row`` was logged after optimizer step ``global_step`` (a row without a
    readable step is kept)."""
    if "step" not in header:
        return False
    at = header.index("step")
    try:
        return at < len(row) and int(float(row[at])) >= global_step
    except ValueError:
        return False


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
