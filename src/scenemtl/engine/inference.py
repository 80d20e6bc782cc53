"""Running a trained module over a DataLoader: ``Trainer.predict`` with a prediction writer.

Every prediction scenemtl makes goes through :meth:`MultiTaskModule.predict_step`
(TTA and decoding included); what happens to the predictions is the job of a
:class:`SamplePredictionWriter` subclass (PNG files for ``scenemtl predict``, zip members
for ``submission.zip``).
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from torch.utils.data import DataLoader

from scenemtl.engine.interrupts import interrupts_raise
from scenemtl.tasks.base import Task


class SamplePredictionWriter(BasePredictionWriter):
    """Calls :meth:`write_sample` once per image with its decoded predictions.

    Subclasses implement ``write_sample(index, predictions, tasks)`` where
    ``predictions`` maps task name -> numpy array [H,W] in the task's units.
    """

    def __init__(self) -> None:
        super().__init__(write_interval="batch")

    def write_on_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        prediction: Any,
        batch_indices: Sequence[int] | None,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        tasks: list[Task] = pl_module.task_list
        arrays = {
            t.name: prediction[t.name].float().cpu().numpy()
            if prediction[t.name].is_floating_point()
            else prediction[t.name].cpu().numpy()
            for t in tasks
        }
        for k, index in enumerate(prediction["index"].tolist()):
            self.write_sample(int(index), {n: a[k] for n, a in arrays.items()}, tasks)

    def write_sample(
        self, index: int, predictions: dict[str, np.ndarray], tasks: list[Task]
    ) -> None:
        raise NotImplementedError


def run_prediction(
    module: L.LightningModule,
    loader: DataLoader,
    writer: SamplePredictionWriter,
    device: torch.device | str = "cpu",
) -> None:
    """``Trainer.predict`` on one device, predictions handed to ``writer``, nothing kept.

    Args:
        module: a :class:`~scenemtl.engine.module.MultiTaskModule`.
        loader: batches ``{"rgb": uint8 [B,3,H,W], "index": [B]}`` (normalized by the
            module's ``on_after_batch_transfer``).
        writer: what to do with each image's predictions.
        device: where the network runs.
    """
    with _quiet_trainer():
        _predict(module, loader, writer, torch.device(device))


@contextlib.contextmanager
def _quiet_trainer() -> Iterator[None]:
    """No "GPU available: ..." lines and cloud-logger tips from an inner Trainer: the
    output of `predict` (and of fit's submission) is its own lines."""
    logger = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


def _predict(
    module: L.LightningModule,
    loader: DataLoader,
    writer: SamplePredictionWriter,
    device: torch.device,
) -> None:
    accelerator = {"cuda": "gpu"}.get(device.type, device.type)
    devices: Any = [device.index] if device.index is not None else 1
    trainer = L.Trainer(
        accelerator=accelerator,
        devices=devices,
        logger=False,
        callbacks=[writer],
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    with warnings.catch_warnings(), interrupts_raise():
        # one-batch loaders and num_workers=0 are deliberate here
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        # SameSizeBatches yields every index exactly once (batches of one size each)
        warnings.filterwarnings("ignore", message=".*custom batch sampler `SameSizeBatches`")
        # library deprecation chatter users can do nothing about (as in `fit`)
        warnings.filterwarnings("ignore", message=".*isinstance\\(treespec, LeafSpec\\)")
        trainer.predict(module, dataloaders=loader, return_predictions=False)
