"""Callbacks: prediction grids and depth histograms in TensorBoard; the run record."""

from __future__ import annotations

import json
import os
import time
from datetime import datetime, timezone
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from torch.utils.data import default_collate

from scenemtl.data.format import atomic_write_bytes
from scenemtl.data.transforms import prepare_eval_batch
from scenemtl.tasks import DEPTH, SEMSEG
from scenemtl.visualize import prediction_panel, tile


class VisualizationCallback(L.Callback):
    """Every ``every_n_epochs`` validations, log a grid of fixed validation samples.

    Each row: RGB, GT and predicted segmentation (Cityscapes colours), GT and predicted
    depth (log colormap, invalid black). Also logs histograms of predicted and GT depth.

    Args:
        ids: indices of the validation samples to show (ids beyond the split are skipped).
        every_n_epochs: interval in epochs; 0 disables the callback.
    """

    def __init__(self, ids: list[int] | None = None, every_n_epochs: int = 1) -> None:
        super().__init__()
        self.ids = list(ids) if ids is not None else [0, 1, 2, 3]
        self.every_n_epochs = every_n_epochs

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero or self.every_n_epochs <= 0:
            return
        if (trainer.current_epoch + 1) % self.every_n_epochs and not trainer.should_stop:
            return
        loggers = [lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)]
        datamodule = getattr(trainer, "datamodule", None)
        if not loggers or datamodule is None:
            return
        dataset = datamodule.dataset("val")
        ids = [i for i in self.ids if 0 <= i < len(dataset)]
        if not ids:
            return
        batch = default_collate([dataset[i] for i in ids])
        batch = prepare_eval_batch({k: v.to(pl_module.device) for k, v in batch.items()})
        with torch.no_grad():
            preds = pl_module.predict_batch(batch["image"])
        depth_range = datamodule.info.depth_range_m
        rows = [
            prediction_panel(
                batch["rgb"][k].permute(1, 2, 0).cpu().numpy(),
                preds[SEMSEG.name][k].cpu().numpy(),
                preds[DEPTH.name][k].float().cpu().numpy(),
                batch[SEMSEG.name][k].cpu().numpy(),
                batch[DEPTH.name][k].cpu().numpy(),
                depth_range,
            )
            for k in range(len(ids))
        ]
        grid = tile(rows)
        gt = batch[DEPTH.name]
        valid = gt > 0
        for logger in loggers:
            writer = logger.experiment
            writer.add_image("val/predictions", grid, trainer.global_step, dataformats="HWC")
            writer.add_histogram(
                "val/depth_pred_m", preds[DEPTH.name][valid].float().cpu(), trainer.global_step
            )
            writer.add_histogram("val/depth_gt_m", gt[valid].cpu(), trainer.global_step)


class RunRecordCallback(L.Callback):
    """Keeps ``run.json`` in the run directory: status, parameters, training time.

    The run table reads it to tell finished, crashed and unfinished runs apart and to
    show their size and cost without loading checkpoints. Training time adds up over
    resumes.
    """

    def __init__(self, run_dir: str | os.PathLike) -> None:
        super().__init__()
        self.path = Path(run_dir) / "run.json"
        self._start = 0.0
        self._previous_seconds = 0.0

    def _write(self, **fields: object) -> None:
        record = self._read()
        record.update(fields)
        atomic_write_bytes(self.path, (json.dumps(record, indent=2) + "\n").encode())

    def _read(self) -> dict:
        try:
            return json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}

    def _elapsed(self) -> float:
        return round(self._previous_seconds + time.monotonic() - self._start, 1)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        self._start = time.monotonic()
        self._previous_seconds = float(self._read().get("train_seconds", 0.0))
        net = getattr(pl_module, "net", pl_module)
        self._write(
            status="running",
            parameters=sum(p.numel() for p in net.parameters()),
            max_epochs=trainer.max_epochs,
            started=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        )

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero:
            self._write(train_seconds=self._elapsed(), epochs_done=trainer.current_epoch + 1)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero:
            self._write(status="finished", train_seconds=self._elapsed())

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        if trainer.is_global_zero and self._start:
            first = str(exception).splitlines()[0] if str(exception) else type(exception).__name__
            self._write(status="crashed", error=first[:300], train_seconds=self._elapsed())
