"""Callbacks: prediction grids and depth histograms in TensorBoard."""

from __future__ import annotations

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from torch.utils.data import default_collate

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
