"""Writes ``submission.zip`` into the run directory at the end of fit and of a test."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger

from scenemtl.commands.submission import write_submission
from scenemtl.reporting.run_dir import RunDir

BEST_FILENAME = RunDir.BEST


def best_checkpoint_callback(trainer: L.Trainer) -> ModelCheckpoint | None:
    """The ModelCheckpoint that keeps ``best.ckpt`` (filename "best"), if the run has one."""
    for cb in trainer.checkpoint_callbacks:
        if isinstance(cb, ModelCheckpoint) and cb.filename == BEST_FILENAME:
            return cb
    return None


class SubmissionCallback(L.Callback):
    """Packs ``submission.zip`` (see :mod:`scenemtl.commands.submission`) on global rank zero.

    * end of ``fit``: predictions of the best checkpoint (``checkpoints/best.ckpt``, the
      best ``val/grader``), not of the weights the run ended with; if there is no best
      checkpoint (no validation ran) it says so and writes nothing.
    * end of ``test`` with a checkpoint (``--ckpt_path``): predictions of that checkpoint.

    Args:
        run_dir: where to write; default: the folder holding ``checkpoints/`` (the run
            directory of the scenemtl CLI layout), else the trainer's log_dir.
        batch_size: images per forward pass (default: the datamodule's evaluation batch).
        enabled: ``False`` turns the callback off (e.g. for quick experiments).
    """

    def __init__(
        self,
        run_dir: str | os.PathLike | None = None,
        batch_size: int | None = None,
        enabled: bool = True,
    ) -> None:
        super().__init__()
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.batch_size = batch_size
        self.enabled = enabled
        self.written: Path | None = None

    def _run_dir(self, trainer: L.Trainer) -> Path | None:
        if self.run_dir is not None:
            return self.run_dir
        best = best_checkpoint_callback(trainer)
        if best is not None and best.dirpath:
            return Path(best.dirpath).parent
        return Path(trainer.log_dir) if trainer.log_dir else None

    def _write(self, trainer: L.Trainer, ckpt: Path, what: str) -> None:
        datamodule = getattr(trainer, "datamodule", None)
        run_dir = self._run_dir(trainer)
        if datamodule is None or not hasattr(datamodule, "info"):
            _say(f"submission: no scenemtl datamodule, {what} not packed")
            return
        if run_dir is None:
            _say("submission: no run directory known, nothing written")
            return
        if "test" not in datamodule.info.splits:
            _say(f"submission: dataset {datamodule.info.name!r} has no test split, nothing written")
            return
        # on_test_end runs before the loggers are finalized: flush the metric trace first
        for logger in trainer.loggers:
            if isinstance(logger, CSVLogger):
                logger.save()
        config = RunDir(run_dir).config
        self.written = write_submission(
            run_dir,
            ckpt,
            datamodule,
            config_path=config if config.is_file() else None,
            batch_size=self.batch_size,
            device=trainer.strategy.root_device,
        )
        print(f"submission ({what}) written to {self.written}", flush=True)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.enabled or not trainer.is_global_zero:
            return
        cb = best_checkpoint_callback(trainer)
        path = Path(cb.best_model_path) if cb is not None and cb.best_model_path else None
        if (path is None or not path.is_file()) and cb is not None and cb.dirpath:
            # a resumed run restores best_model_path only if the monitor saw a value
            candidate = Path(cb.dirpath) / f"{BEST_FILENAME}{cb.FILE_EXTENSION}"
            path = candidate if candidate.is_file() else None
        if path is None or not path.is_file():
            _say("submission: no best checkpoint (did validation run?): submission.zip not written")
            return
        self._write(trainer, path, f"best checkpoint {path.name}")

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.enabled or not trainer.is_global_zero:
            return
        ckpt = trainer.ckpt_path
        if not ckpt or not Path(ckpt).is_file():
            return  # testing in-memory weights: nothing that names a checkpoint to pack
        self._write(trainer, Path(ckpt), f"checkpoint {Path(ckpt).name}")


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
