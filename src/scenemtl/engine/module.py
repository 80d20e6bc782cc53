"""The LightningModule: one multi-task network, its losses, optimizer, schedule, metrics."""

from __future__ import annotations

import math
import os
import pickle
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import Tensor

from scenemtl.depth_space import DEPTH_SPACES, DepthSpace, decode_predictions
from scenemtl.engine.schedules import PolyFactor
from scenemtl.errors import UserError
from scenemtl.losses import MultiTaskLoss
from scenemtl.metrics import MultiTaskMetrics
from scenemtl.models.registry import ModelConfig, build_model
from scenemtl.tasks import TASK_NAMES, TASKS
from scenemtl.tta import check_scales, is_identity, tta_outputs
from scenemtl.weighting import build_weighting

OPTIMIZERS = ("sgd", "adam", "adamw")

# Placeholder statistics until the dataset's are adopted in setup() or restored from a
# checkpoint; never used for a real forward.
_UNSET_STATS = {k: {"mean": 0.0, "std": 1.0} for k in ("depth_m", "depth_log", "depth_inv")}


class MultiTaskModule(L.LightningModule):
    """Trains and evaluates one multi-task network.

    Args:
        net: the architecture (see :class:`scenemtl.models.registry.ModelConfig`).
        optimizer: ``sgd``, ``adam`` or ``adamw``.
        lr: base learning rate.
        momentum: SGD momentum (ignored by Adam/AdamW).
        weight_decay: L2 (SGD, Adam) or decoupled (AdamW) weight decay.
        lr_power: exponent of the poly schedule ``(1 - step / total) ** lr_power``.
        lr_floor: the learning rate never goes below this.
        depth_space: ``meters``, ``log`` or ``inverse`` (each normalized with dataset stats).
        depth_loss: ``l1``, ``l2`` or ``silog``.
        silog_lambda: variance weight of the SILog loss.
        loss_weighting: ``fixed``, ``uncertainty`` or ``dwa``.
        loss_weights: task name -> fixed (or initial) weight; missing tasks weigh 1.
        weighting_options: extra options of the weighting method.
        channels_last: run convolutions in channels-last memory format.
        tta_scales: test-time augmentation for validation/test/predict: input scales
            whose predictions are merged (None = a single plain pass).
        tta_flip: also merge horizontally mirrored views.
    """

    def __init__(
        self,
        net: ModelConfig | None = None,
        optimizer: str = "sgd",
        lr: float = 0.01,
        momentum: float = 0.9,
        weight_decay: float = 1e-4,
        lr_power: float = 0.9,
        lr_floor: float = 1e-6,
        depth_space: str = "meters",
        depth_loss: str = "l1",
        silog_lambda: float = 0.85,
        loss_weighting: str = "fixed",
        loss_weights: dict[str, float] | None = None,
        weighting_options: dict[str, float] | None = None,
        channels_last: bool = False,
        tta_scales: list[float] | None = None,
        tta_flip: bool = False,
    ) -> None:
        super().__init__()
        if net is None:
            net = ModelConfig()
        elif isinstance(net, dict):  # hyper_parameters of a checkpoint hold plain dicts
            net = ModelConfig(**net)
        if optimizer not in OPTIMIZERS:
            raise UserError(f"model.optimizer {optimizer!r} unknown; choose one of {OPTIMIZERS}")
        for name, value in (("lr", lr), ("lr_floor", lr_floor)):
            if not (math.isfinite(value) and value > 0):
                raise UserError(f"model.{name} must be a positive number, got {value}")
        for name, value in (("momentum", momentum), ("weight_decay", weight_decay)):
            if not (math.isfinite(value) and value >= 0):
                raise UserError(f"model.{name} must be >= 0, got {value}")
        if not (math.isfinite(lr_power) and lr_power >= 0):
            raise UserError(f"model.lr_power must be >= 0, got {lr_power}")
        if depth_space not in DEPTH_SPACES:
            raise UserError(
                f"model.depth_space {depth_space!r} unknown; choose one of {DEPTH_SPACES}"
            )
        unknown = set(loss_weights or {}) - {t.name for t in TASKS}
        if unknown:
            raise UserError(f"model.loss_weights names unknown task(s) {sorted(unknown)}")
        if tta_scales is not None:
            check_scales(tta_scales)
        self.save_hyperparameters()
        self.net = build_model(net)
        self.depth_space = DepthSpace(depth_space, _UNSET_STATS)
        self.criterion = MultiTaskLoss(
            self.depth_space,
            depth_loss=depth_loss,
            silog_lambda=silog_lambda,
            weighting=build_weighting(loss_weighting, loss_weights, **(weighting_options or {})),
        )
        self.val_metrics = MultiTaskMetrics()
        self.test_metrics = MultiTaskMetrics()
        self.register_buffer("stats_adopted", torch.tensor(False), persistent=True)
        if channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, map_location: str = "cpu") -> MultiTaskModule:
        """The trained network of a checkpoint, in eval mode, without unpickling anything.

        The encoder is built without its initialization weights (the checkpoint has them),
        so loading never reaches for the network.
        """
        path = Path(path)
        if not path.is_file():
            raise UserError(f"checkpoint {path} not found")
        try:
            ckpt = torch.load(path, map_location=map_location, weights_only=True)
            hparams = dict(ckpt["hyper_parameters"])
            state = ckpt["state_dict"]
        except (
            OSError,
            RuntimeError,
            KeyError,
            TypeError,
            EOFError,
            ValueError,
            pickle.UnpicklingError,
        ) as e:
            raise UserError(f"{path}: not a scenemtl checkpoint ({type(e).__name__})") from None
        hparams.pop("_instantiator", None)
        net = dict(hparams.pop("net", None) or {})
        net["weights"] = None
        module = cls(net=net, **hparams)
        try:
            module.load_state_dict(state, strict=True)
        except RuntimeError as e:
            first = str(e).splitlines()[0]
            raise UserError(
                f"{path}: weights do not fit the configured network ({first})"
            ) from None
        return module.eval()

    # ----------------------------------------------------------------------------------
    # data statistics

    def adopt_dataset_stats(self, stats: dict[str, Any]) -> None:
        """Take the depth normalization from ``dataset.json`` statistics.

        Called once when training starts from scratch; a checkpoint carries the
        statistics its weights were trained with, so resuming or evaluating a
        checkpoint keeps them even on a dataset with other statistics.
        """
        self.depth_space.set_stats(stats)
        self.stats_adopted.fill_(True)

    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer else None
        if datamodule is not None and not bool(self.stats_adopted):
            self.adopt_dataset_stats(datamodule.info.stats)

    # ----------------------------------------------------------------------------------
    # steps

    def forward(self, image: Tensor) -> dict[str, list[Tensor]]:
        """``image`` [B,3,H,W] normalized -> task name -> outputs at input resolution."""
        if self.hparams.channels_last:
            image = image.contiguous(memory_format=torch.channels_last)
        return self.net(image)

    def eval_outputs(self, image: Tensor) -> dict[str, list[Tensor]]:
        """Outputs for validation/test/predict: a plain forward, or merged TTA views."""
        scales = self.hparams.get("tta_scales") or [1.0]
        flip = bool(self.hparams.get("tta_flip", False))
        if is_identity(scales, flip):
            return self(image)
        merged = tta_outputs(self, image, scales, flip, depth_space=self.depth_space)
        return {task: [out] for task, out in merged.items()}

    def predict_batch(self, image: Tensor) -> dict[str, Tensor]:
        """Final predictions in metric units: semseg labels [B,H,W], depth meters [B,H,W]."""
        return decode_predictions(self.eval_outputs(image), self.depth_space)

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        outputs = self(batch["image"])
        losses = self.criterion(outputs, batch)
        if not torch.isfinite(losses.total):
            # Raising stops the run before any checkpoint of this state is written.
            raise UserError(
                f"non-finite training loss at step {self.global_step} (epoch "
                f"{self.current_epoch}, batch {batch_idx}): "
                + ", ".join(f"{k}={float(v.detach()):.4g}" for k, v in losses.tasks.items())
                + "; lower the learning rate or check the data"
            )
        batch_size = batch["image"].shape[0]
        for key, value in losses.log_dict().items():
            self.log(f"train/{key}", value, prog_bar=key == "loss", batch_size=batch_size)
        self.log("lr", self.optimizers().param_groups[0]["lr"], on_step=True, batch_size=batch_size)
        return losses.total

    def on_train_epoch_start(self) -> None:
        self.criterion.weighting.on_epoch_start(self.current_epoch)

    def on_train_epoch_end(self) -> None:
        self.criterion.weighting.on_epoch_end()

    def _evaluate(self, batch: dict[str, Tensor], metrics: MultiTaskMetrics, stage: str) -> None:
        if not all(t.name in batch for t in TASKS):
            return  # a split without ground truth: nothing to score
        outputs = self.eval_outputs(batch["image"])
        losses = self.criterion(outputs, batch)
        self.log(f"{stage}/loss", losses.total, batch_size=batch["image"].shape[0], sync_dist=True)
        metrics.update(decode_predictions(outputs, self.depth_space), batch)

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._evaluate(batch, self.val_metrics, "val")

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._evaluate(batch, self.test_metrics, "test")

    def _log_metrics(self, metrics: MultiTaskMetrics, stage: str) -> None:
        if not any(m.update_count for m in metrics.tasks.values()):
            return
        values = metrics.compute()
        # Metrics are already synced by torchmetrics; the three course metrics go to the bar.
        for key, value in values.items():
            shown = key in (*TASK_NAMES, "grader")
            self.log(f"{stage}/{key}", value.float(), prog_bar=shown, sync_dist=False)
        metrics.reset()

    def on_validation_epoch_end(self) -> None:
        self._log_metrics(self.val_metrics, "val")

    def on_test_epoch_end(self) -> None:
        self._log_metrics(self.test_metrics, "test")

    def predict_step(self, batch: dict[str, Tensor], batch_idx: int) -> dict[str, Tensor]:
        preds = self.predict_batch(batch["image"])
        preds["index"] = batch["index"]
        return preds

    # ----------------------------------------------------------------------------------
    # optimization

    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        # Learned task weights (uncertainty) must not be decayed towards zero.
        weighting = {id(p) for p in self.criterion.weighting.parameters()}
        params = [
            {
                "params": [
                    p for p in self.parameters() if p.requires_grad and id(p) not in weighting
                ]
            },
            {"params": list(self.criterion.weighting.parameters()), "weight_decay": 0.0},
        ]
        if hp.optimizer == "sgd":
            opt = torch.optim.SGD(
                params, lr=hp.lr, momentum=hp.momentum, weight_decay=hp.weight_decay
            )
        elif hp.optimizer == "adam":
            opt = torch.optim.Adam(params, lr=hp.lr, weight_decay=hp.weight_decay)
        else:
            opt = torch.optim.AdamW(params, lr=hp.lr, weight_decay=hp.weight_decay)
        total = int(self.trainer.estimated_stepping_batches)
        schedule = torch.optim.lr_scheduler.LambdaLR(
            opt, PolyFactor(total, hp.lr_power, hp.lr_floor / hp.lr)
        )
        return {"optimizer": opt, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}
