"""The LightningModule: one multi-task network, its losses, optimizer, schedule, metrics."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any

import lightning as L
import torch
from lightning.pytorch.plugins.precision import MixedPrecision
from lightning.pytorch.utilities.rank_zero import rank_zero_info
from torch import Tensor, nn

from scenemtl.balancing import BALANCERS, accepted_options, build_balancer
from scenemtl.balancing.base import TrainingStep, present_mask
from scenemtl.balancing.conflict import gradient_conflict
from scenemtl.data.transforms import prepare_eval_batch
from scenemtl.engine.checkpoint import check_tasks, migrate_checkpoint, read_checkpoint
from scenemtl.engine.finetune import (
    LoRAConfig,
    apply_finetuning,
    check_layer_decay,
    layer_decay_scales,
    no_weight_decay_names,
    set_frozen_modes,
    trainable_summary,
)
from scenemtl.engine.schedules import (
    CosineFactor,
    PolyFactor,
    StepFactor,
    check_warmup,
    warmup_steps,
)
from scenemtl.errors import TrainingDiverged, UserError, one_line
from scenemtl.losses import MultiTaskLoss
from scenemtl.metrics import GRADER, MultiTaskMetrics
from scenemtl.models.config import ModelConfig
from scenemtl.models.registry import build_model
from scenemtl.tasks import TaskSpecs, build_tasks, legacy_task_specs, options_of_learned_tasks
from scenemtl.tasks.base import Task
from scenemtl.tta import check_scales, is_identity, tta_outputs

OPTIMIZERS = ("sgd", "adam", "adamw")
LR_SCHEDULES = ("poly", "cosine", "step")


class MultiTaskModule(L.LightningModule):
    """Trains and evaluates one multi-task network.

    Args:
        net: the architecture (see :class:`scenemtl.models.config.ModelConfig`).
        task_specs: task name -> spec, the tasks this network learns (set from the data by
            the CLI, see ``data.tasks``; None = the course's semseg + depth).
        provided_tasks: the tasks the data provides (set from the data by the CLI; None =
            those of ``task_specs``). Options and loss weights of a provided task that the
            run does not learn are ignored, see
            :func:`~scenemtl.tasks.options_of_learned_tasks`.
        task_options: task name -> options of that task, e.g.
            ``{"depth": {"space": "log", "loss": "silog"}}``.
        optimizer: ``sgd``, ``adam`` or ``adamw``.
        lr: base learning rate.
        momentum: SGD momentum (ignored by Adam/AdamW).
        weight_decay: L2 (SGD, Adam) or decoupled (AdamW) weight decay.
        no_weight_decay_1d: no weight decay on the network's parameters of at most one
            dimension (biases, norm weights, layer scales) and a ViT's position, class and
            register tokens, as MAE, BEiT and timm fine-tune.
        lr_power: exponent of the poly schedule ``(1 - step / total) ** lr_power``.
        lr_floor: the learning rate never goes below this (poly schedule); the cosine
            schedule ends at it.
        lr_schedule: ``poly`` (per optimizer step, see ``lr_power``), ``cosine`` (per
            optimizer step, half a cosine from ``lr`` to ``lr_floor``) or ``step`` (per
            epoch: multiplied by ``lr_gamma`` at each epoch of ``lr_milestones``; the
            MTAN protocol is ``[100]`` and ``0.5`` over 200 epochs).
        lr_warmup_steps: optimizer steps of linear warm-up from 0 before the poly or
            cosine decay (0 = none).
        lr_warmup_fraction: the warm-up as a fraction of the run's optimizer steps, in
            [0, 1) (instead of ``lr_warmup_steps``).
        lr_milestones: epochs at which the step schedule multiplies the rate.
        lr_gamma: the step schedule's factor, in (0, 1].
        layer_decay: layer-wise learning-rate decay of a ViT encoder, in (0, 1]: a
            parameter of layer ``i`` (embeddings 0, block ``k`` ``k + 1``) learns at
            ``lr * layer_decay ** (depth + 1 - i)``; decoders and heads at ``lr``. 1 = off.
        freeze_encoder: the encoder's published weights get no gradient and run in eval
            mode (BatchNorm statistics frozen); decoders and heads train.
        lora: LoRA adapters on the encoder's linear layers, ``{"rank": 8, "alpha": 16,
            "targets": ["qkv", "proj", "fc1", "fc2"], "dropout": 0}`` (any subset); the
            base weights are frozen (None = no adapters).
        depth_space: the depth task's ``space`` (``meters``, ``log``, ``inverse``).
        depth_loss: the depth task's ``loss`` (``l1``, ``l2``, ``silog``).
        silog_lambda: the depth task's ``silog_lambda``.
        loss_weighting: the balancing method, a key of
            :data:`scenemtl.balancing.BALANCERS` (loss level: ``fixed``, ``uncertainty``,
            ``dwa``, ``rlw``, ...; gradient level: ``mean``, ``pcgrad``, ``upgrad``, ...).
        loss_weights: task name -> constant weight of its loss; missing tasks weigh 1.
        weighting_options: the method's options (e.g. ``{"temperature": 2}`` for dwa,
            ``{"wrt": "representation"}`` for a gradient-level method).
        grad_monitor_every: every this many training steps, log the cosine similarity and
            norm ratio of each pair of tasks' gradients on the shared parameters (0 = never).
        channels_last: run convolutions in channels-last memory format.
        tta_scales: test-time augmentation for validation/test/predict: input scales
            whose predictions are merged (None = a single plain pass).
        tta_flip: also merge horizontally mirrored views.
    """

    def __init__(
        self,
        net: ModelConfig | None = None,
        task_specs: dict[str, dict[str, Any]] | None = None,
        provided_tasks: list[str] | None = None,
        task_options: dict[str, dict[str, Any]] | None = None,
        optimizer: str = "sgd",
        lr: float = 0.01,
        momentum: float = 0.9,
        weight_decay: float = 1e-4,
        no_weight_decay_1d: bool = False,
        lr_power: float = 0.9,
        lr_floor: float = 1e-6,
        lr_schedule: str = "poly",
        lr_milestones: list[int] | None = None,
        lr_gamma: float = 0.5,
        lr_warmup_steps: int = 0,
        lr_warmup_fraction: float = 0.0,
        layer_decay: float = 1.0,
        freeze_encoder: bool = False,
        lora: dict[str, Any] | None = None,
        depth_space: str | None = None,
        depth_loss: str | None = None,
        silog_lambda: float | None = None,
        loss_weighting: str = "fixed",
        loss_weights: dict[str, float] | None = None,
        weighting_options: dict[str, Any] | None = None,
        grad_monitor_every: int = 50,
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
        if lr_schedule not in LR_SCHEDULES:
            raise UserError(
                f"model.lr_schedule {lr_schedule!r} unknown; choose one of {LR_SCHEDULES}"
            )
        if not (math.isfinite(lr_gamma) and 0 < lr_gamma <= 1):
            raise UserError(f"model.lr_gamma must be in (0, 1], got {lr_gamma}")
        if any(isinstance(m, bool) or not isinstance(m, int) or m < 1 for m in lr_milestones or []):
            raise UserError(f"model.lr_milestones must be epochs >= 1, got {lr_milestones}")
        check_warmup(lr_schedule, lr_warmup_steps, lr_warmup_fraction)
        check_layer_decay(layer_decay)
        for name, flag in (
            ("freeze_encoder", freeze_encoder),
            ("no_weight_decay_1d", no_weight_decay_1d),
        ):
            if not isinstance(flag, bool):
                raise UserError(f"model.{name} must be true or false, got {flag!r}")
        lora_cfg = LoRAConfig.parse(lora)
        if tta_scales is not None:
            check_scales(tta_scales)
        if isinstance(grad_monitor_every, bool) or not (
            isinstance(grad_monitor_every, int) and grad_monitor_every >= 0
        ):
            raise UserError(
                f"model.grad_monitor_every must be an integer >= 0, got {grad_monitor_every!r}"
            )
        self.save_hyperparameters()
        specs: TaskSpecs = dict(task_specs) if task_specs is not None else legacy_task_specs()
        options, loss_weights = options_of_learned_tasks(
            specs,
            provided_tasks,
            task_options,
            {"depth_space": depth_space, "depth_loss": depth_loss, "silog_lambda": silog_lambda},
            loss_weights,
        )
        self.tasks = nn.ModuleDict({t.name: t for t in build_tasks(specs, options)})
        self.net = build_model(net, {t.name: t.channels for t in self.task_list})
        apply_finetuning(self.net, freeze_encoder, lora_cfg)
        layer_decay_scales(self.net, layer_decay)  # refuses a family without layer ids now
        self.criterion = MultiTaskLoss(
            self.task_list,
            weighting=build_balancer(
                loss_weighting, loss_weights, tasks=self.task_list, **(weighting_options or {})
            ),
        )
        if (
            self.balancer.level == "gradient"
            and self.net.has_shared_representation
            and not self.net.shared_parameters()
        ):
            # it would silently reduce to the weighted sum
            raise UserError(
                f"model.loss_weighting {loss_weighting!r} combines the task gradients on the "
                f"shared part of the network; with the encoder frozen, {net.architecture} "
                "shares nothing that trains: use a loss-level method or LoRA adapters"
            )
        self._step: _StepRecord | None = None
        self.val_metrics = MultiTaskMetrics(self.task_list)
        self.test_metrics = MultiTaskMetrics(self.task_list)
        # several datasets in one run (data.datasets): each one's metrics on its own tasks,
        # beside the combined ones above; set up from the DataModule (see setup)
        self.dataset_names: list[str] = []
        self.val_metrics_by = nn.ModuleDict()
        self.test_metrics_by = nn.ModuleDict()
        self.register_buffer("stats_adopted", torch.tensor(False), persistent=True)
        if channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)

    @property
    def task_list(self) -> list[Task]:
        """The run's tasks, in the order the network emits them."""
        return list(self.tasks.values())

    def current_task_specs(self) -> TaskSpecs:
        return {t.name: t.spec() for t in self.task_list}

    def monitor(self) -> tuple[str, str]:
        """(metric key, "max"|"min") that picks the best checkpoint: ``val/grader`` when the
        run has the grader's tasks, else the single (first) task's headline metric."""
        if self.val_metrics.has_grader:
            return f"val/{GRADER}", "max"
        first = self.task_list[0]
        return f"val/{first.name}", "max" if first.higher_is_better else "min"

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, map_location: str = "cpu") -> MultiTaskModule:
        """The trained network of a checkpoint, in eval mode, without unpickling anything.

        The encoder is built without its initialization weights (the checkpoint has them),
        so loading never reaches for the network.
        """
        ckpt = read_checkpoint(path, cls, map_location)
        hparams = dict(ckpt["hyper_parameters"])
        hparams.pop("_instantiator", None)
        net = dict(hparams.pop("net", None) or {})
        net["weights"] = None
        # Predictions never use the balancing method: options it no longer takes (MGDA's
        # epsilon and max_iters, before its exact solver) must not refuse a trained network.
        method, options = hparams.get("loss_weighting"), hparams.get("weighting_options")
        if isinstance(method, str) and method in BALANCERS and isinstance(options, dict):
            accepted = accepted_options(method)
            hparams["weighting_options"] = {k: v for k, v in options.items() if k in accepted}
        try:
            module = cls(net=net, **hparams)
        except (TypeError, UserError) as e:
            # TypeError: a key the constructor does not take (the types were checked)
            raise UserError(
                f"{path}: hyperparameters do not fit this scenemtl ({one_line(e)})"
            ) from None
        migrate_checkpoint(ckpt)
        try:
            module.load_state_dict(ckpt["state_dict"], strict=True)
        except RuntimeError as e:
            first = str(e).splitlines()[0]
            raise UserError(
                f"{path}: weights do not fit the configured network ({first})"
            ) from None
        return module.eval()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        check_tasks(checkpoint, self.current_task_specs())
        migrate_checkpoint(checkpoint)

    # ----------------------------------------------------------------------------------
    # data statistics

    def adopt_dataset_stats(self, stats: dict[str, Any]) -> None:
        """Take the tasks' normalization from ``dataset.json`` statistics.

        Called once when training starts from scratch; a checkpoint carries the
        statistics its weights were trained with, so resuming or evaluating a
        checkpoint keeps them even on a dataset with other statistics.
        """
        for task in self.task_list:
            task.adopt_stats(stats)
        self.stats_adopted.fill_(True)

    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer else None
        if datamodule is not None and not bool(self.stats_adopted):
            self.adopt_dataset_stats(datamodule.info.stats)
        if datamodule is not None and getattr(datamodule, "dataset_names", None):
            self.set_datasets(datamodule.dataset_tasks())

    def set_datasets(self, dataset_tasks: dict[str, list[str]]) -> None:
        """Score each of several datasets on its own (``data.datasets``): dataset name ->
        the run's tasks it has labels for, in the order of the validation loaders."""
        self.dataset_names = list(dataset_tasks)
        for store in (self.val_metrics_by, self.test_metrics_by):
            store.clear()
            for name, tasks in dataset_tasks.items():
                store[name] = MultiTaskMetrics([self.tasks[t] for t in tasks]).to(self.device)

    # ----------------------------------------------------------------------------------
    # steps

    def forward(self, image: Tensor) -> dict[str, list[Tensor]]:
        """``image`` [B,3,H,W] normalized -> task name -> outputs at input resolution."""
        if self.hparams.channels_last:
            image = image.contiguous(memory_format=torch.channels_last)
        return self.net(image)

    def eval_outputs(self, image: Tensor) -> dict[str, list[Tensor]]:
        """Outputs for validation/test/predict: a plain forward, or merged TTA views."""
        scales = self.hparams.get("tta_scales")
        flip = bool(self.hparams.get("tta_flip", False))
        if is_identity(scales, flip):
            return self(image)
        merged = tta_outputs(self, image, self.task_list, scales or [1.0], flip)
        return {task: [out] for task, out in merged.items()}

    def decode(self, outputs: dict[str, Any]) -> dict[str, Tensor]:
        """Final predictions in metric units (each task's :meth:`Task.decode` of the last
        output): e.g. semseg labels int64 [B,H,W], depth meters float32 [B,H,W]."""
        return {t.name: t.decode(_last(outputs[t.name])) for t in self.task_list}

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        # Batches from a bare DataLoader (predict, submissions) arrive as uint8 RGB; the
        # DataModule's own hook has already normalized the batches it serves.
        if isinstance(batch, dict) and "image" not in batch and "rgb" in batch:
            return prepare_eval_batch(batch)
        return batch

    def predict_step(self, batch: dict[str, Tensor], batch_idx: int = 0) -> dict[str, Tensor]:
        """The one way predictions are made (predict, submissions, pictures, export checks).

        Args:
            batch: ``{"image": float [B,3,H,W] normalized, "index": [B], ...}``.

        Returns:
            task name -> decoded prediction [B,H,W], plus ``"index"`` when the batch has it.
        """
        preds = self.decode(self.eval_outputs(batch["image"]))
        if "index" in batch:
            preds["index"] = batch["index"]
        return preds

    @property
    def balancer(self) -> Any:
        """The run's balancing method (:class:`scenemtl.balancing.base.LossBalancer`)."""
        return self.criterion.weighting

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        image = batch["image"]
        if self.hparams.channels_last:
            image = image.contiguous(memory_format=torch.channels_last)
        shared = self.net.shared_forward(image)
        # what the tasks' branches read: the method decides (gradient-level methods take
        # the task gradients at leaf copies of the representation)
        cut = self.balancer.cut(shared)
        outputs = self.net.resize_outputs(self.net.decode(cut), image.shape[-2:])
        losses = self.criterion(outputs, batch)
        if not torch.isfinite(losses.total):
            # Raising stops the run before any checkpoint of this state is written.
            raise TrainingDiverged(
                f"non-finite training loss at step {self.global_step} (epoch "
                f"{self.current_epoch}, batch {batch_idx}): "
                + ", ".join(f"{k}={float(v.detach()):.4g}" for k, v in losses.tasks.items())
                + "; lower the learning rate or check the data"
            )
        batch_size = image.shape[0]
        self.log("train/loss", losses.total.detach(), prog_bar=True, batch_size=batch_size)
        for name, value in losses.tasks.items():
            # a task's epoch mean is over its labelled samples (partial labels)
            if losses.labelled[name]:
                self.log(f"train/loss_{name}", value.detach(), batch_size=losses.labelled[name])
        self.log("lr", self.optimizers().param_groups[0]["lr"], on_step=True, batch_size=batch_size)
        every = self.hparams.get("grad_monitor_every", 0)
        monitor = len(self.tasks) > 1 and every > 0 and self.global_step % every == 0
        self._step = _StepRecord(
            step=TrainingStep(
                losses=self.balancer.weighted_losses(losses.tasks),
                representation=list(shared.values()),
                cut=list(cut.values()),
                monitor=monitor,
                present=present_mask(list(self.tasks), losses.present, image.device),
            ),
            weights=losses.weights,
            monitor=monitor,
            batch_size=batch_size,
            present=losses.present,
        )
        return losses.total

    def backward(self, loss: Tensor, *args: Any, **kwargs: Any) -> None:
        """The balancing method performs the backward step
        (:meth:`~scenemtl.balancing.base.LossBalancer.backward_step`)."""
        record = self._step
        if record is None or record.step is None:
            loss.backward(*args, **kwargs)
            return
        done = self.balancer.backward_step(loss, record.step, self.net, *args, **kwargs)
        if done.weights is not None:
            record.weights = dict(zip(self.tasks, done.weights, strict=True))
        record.gramian = done.gramian
        record.step = None  # free the graph

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        record, self._step = self._step, None
        if record is None:
            return
        for name, value in record.weights.items():
            if record.present.get(name, True):  # an absent task has no weight this step
                self.log(f"train/weight_{name}", float(value), batch_size=record.batch_size)
        if record.monitor and record.gramian is not None:
            for key, value in gradient_conflict(record.gramian, list(self.tasks)).items():
                self.log(f"train/{key}", value, batch_size=record.batch_size)

    def on_fit_start(self) -> None:
        rank_zero_info(trainable_summary(self))
        self.balancer.check_setup(
            self.trainer.world_size,
            str(self.trainer.precision),
            self.net.has_shared_representation,
        )
        # A method that averages the per-task gradients over processes itself (before
        # combining them) must not get DDP's own gradient averaging on top.
        wrapped = self.trainer.strategy.model
        if self.balancer.averages_gradients and hasattr(wrapped, "require_backward_grad_sync"):
            wrapped.require_backward_grad_sync = False

    def on_train_start(self) -> None:
        # Lightning keeps the modes the module has at fit start (and warns about modules
        # in eval mode there): the frozen parts are switched off just after that check.
        if self.training:
            self._set_frozen_modes()

    def on_train_epoch_start(self) -> None:
        self.criterion.weighting.on_epoch_start(self.current_epoch)

    def on_train_epoch_end(self) -> None:
        self.criterion.weighting.on_epoch_end()

    def _evaluate(
        self, batch: dict[str, Tensor], metrics: MultiTaskMetrics, stage: str, loader: int = 0
    ) -> None:
        if not all(name in batch for name in self.tasks):
            return  # a split without ground truth: nothing to score
        outputs = self.eval_outputs(batch["image"])
        losses = self.criterion(outputs, batch)
        size = batch["image"].shape[0]
        if self.dataset_names:  # one loader per dataset: its loss under its name
            name = self.dataset_names[loader]
            self.log(
                f"{stage}/{name}/loss", losses.total, batch_size=size, sync_dist=True,
                add_dataloader_idx=False,
            )  # fmt: skip
        else:
            self.log(f"{stage}/loss", losses.total, batch_size=size, sync_dist=True)
        preds = self.decode(outputs)
        for name, pred in preds.items():
            # the metrics would refuse them with a bug's traceback; this is the weights'
            if pred.is_floating_point() and not bool(torch.isfinite(pred).all()):
                raise TrainingDiverged(
                    f"non-finite {name} prediction in {stage} at step {self.global_step} "
                    f"(epoch {self.current_epoch}): the weights overflow; lower the learning "
                    "rate or check the data"
                )
        metrics.update(preds, batch)
        if self.dataset_names:
            by = self.val_metrics_by if stage == "val" else self.test_metrics_by
            own = by[self.dataset_names[loader]]
            own.update({k: preds[k] for k in own.tasks}, batch)

    def validation_step(
        self, batch: dict[str, Tensor], batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        self._evaluate(batch, self.val_metrics, "val", dataloader_idx)

    def test_step(self, batch: dict[str, Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        self._evaluate(batch, self.test_metrics, "test", dataloader_idx)

    def _log_metrics(self, metrics: MultiTaskMetrics, stage: str, prefix: str = "") -> None:
        if not metrics.update_count:
            return
        values = metrics.compute()
        # Metrics are already synced by torchmetrics; the headline metrics go to the bar.
        shown = {*self.tasks, GRADER} if not prefix else set()
        for key, value in values.items():
            self.log(
                f"{stage}/{prefix}{key}", value.float(), prog_bar=key in shown, sync_dist=False
            )
        metrics.reset()

    def on_validation_epoch_end(self) -> None:
        self._log_metrics(self.val_metrics, "val")
        for name, metrics in self.val_metrics_by.items():
            self._log_metrics(metrics, "val", prefix=f"{name}/")

    def on_test_epoch_end(self) -> None:
        self._log_metrics(self.test_metrics, "test")
        for name, metrics in self.test_metrics_by.items():
            self._log_metrics(metrics, "test", prefix=f"{name}/")

    # ----------------------------------------------------------------------------------
    # optimization

    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        # Lightning refuses gradient clipping with a fused optimizer under mixed
        # precision (with fp16's GradScaler the kernel would unscale after the clip)
        clips = bool(self.trainer.gradient_clip_val)
        mixed = isinstance(self.trainer.precision_plugin, MixedPrecision)
        opt = self.make_optimizer(fused=not (clips and mixed))
        kind = hp.get("lr_schedule", "poly")
        if kind == "step":
            step = torch.optim.lr_scheduler.LambdaLR(
                opt, StepFactor(hp.get("lr_milestones") or [], hp.get("lr_gamma", 0.5))
            )
            return {"optimizer": opt, "lr_scheduler": {"scheduler": step, "interval": "epoch"}}
        total = int(self.trainer.estimated_stepping_batches)
        warmup = warmup_steps(
            hp.get("lr_warmup_steps", 0), hp.get("lr_warmup_fraction", 0.0), total
        )
        floor = hp.lr_floor / hp.lr
        factor: CosineFactor | PolyFactor = (
            CosineFactor(total, floor, warmup)
            if kind == "cosine"
            else PolyFactor(total, hp.lr_power, floor, warmup)
        )
        schedule = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    def make_optimizer(self, fused: bool = True) -> torch.optim.Optimizer:
        """The configured optimizer over the network's (and the balancer's) trainable
        parameters, with its fused kernel where torch has one for the device (``fused``).

        Groups: 0 the network at the base rate (logged as ``lr``), 1 the balancer's
        learned weights (no weight decay), then (if any) the network's mixing parameters
        at ``net.mixing_lr_multiplier`` times the base rate, then one group per pair of
        rate multiplier (``layer_decay`` < 1: a ViT layer below the top) and weight decay
        (``no_weight_decay_1d``) other than (1, ``weight_decay``). Frozen parameters
        (``freeze_encoder``, LoRA's base weights) are in none."""
        hp = self.hparams
        # Learned task weights (uncertainty) must not be decayed towards zero; parameters a
        # method updates itself (FAMO's logits) are not the optimizer's.
        balancer = {id(p) for p in self.balancer.parameters()}
        # The mixing units of cross-stitch / NDDR learn at a multiple of the rate (the
        # authors' 100x by default), with the same weight decay as in the authors' code;
        # the schedules scale every group's own initial rate.
        mixing = [p for p in self.net.mixing_parameters() if id(p) not in balancer]
        apart = balancer | {id(p) for p in mixing}
        # layer-wise decay (a rate multiplier for each encoder parameter below the top)
        # and MAE's rule for weight decay: each (multiplier, decay) pair is one group
        scales = layer_decay_scales(self.net, hp.get("layer_decay", 1.0))
        undecayed = no_weight_decay_names(self.net) if hp.get("no_weight_decay_1d") else set()
        others: dict[tuple[float, float], list[nn.Parameter]] = {}
        for name, p in self.net.named_parameters():
            key = (scales.get(name, 1.0), 0.0 if name in undecayed else hp.weight_decay)
            if key != (1.0, hp.weight_decay) and p.requires_grad and id(p) not in apart:
                others.setdefault(key, []).append(p)
        apart |= {id(p) for ps in others.values() for p in ps}
        params = [
            {"params": [p for p in self.parameters() if p.requires_grad and id(p) not in apart]},
            {"params": self.balancer.trainable_parameters(), "weight_decay": 0.0},
        ]
        if mixing:
            params.append({"params": mixing, "lr": hp.lr * self.net.mixing_lr_multiplier})
        for scale, decay in sorted(others, reverse=True):
            params.append(
                {"params": others[scale, decay], "lr": hp.lr * scale, "weight_decay": decay}
            )
        options: dict[str, Any] = {"lr": hp.lr, "weight_decay": hp.weight_decay}
        if hp.optimizer == "sgd":
            kind: type[torch.optim.Optimizer] = torch.optim.SGD
            options["momentum"] = hp.momentum
        else:
            kind = torch.optim.Adam if hp.optimizer == "adam" else torch.optim.AdamW
        return fused_if_supported(kind, params, **options) if fused else kind(params, **options)

    def train(self, mode: bool = True) -> MultiTaskModule:
        """Train/eval mode; a frozen encoder (``freeze_encoder``, LoRA's base) keeps its
        frozen parts in eval mode while training (see
        :func:`~scenemtl.engine.finetune.set_frozen_modes`)."""
        super().train(mode)
        if mode:
            self._set_frozen_modes()
        return self

    def _set_frozen_modes(self) -> None:
        hp = self.hparams
        set_frozen_modes(self.net, bool(hp.get("freeze_encoder")), hp.get("lora") is not None)


def fused_if_supported(
    kind: type[torch.optim.Optimizer], params: list[dict[str, Any]], **options: Any
) -> torch.optim.Optimizer:
    """``kind`` with its fused kernel, one pass over all parameters: on 2 CPU cores
    Adam's step over the demo network's 12.2 M parameters takes 4.9 ms fused against
    41.6 ms per tensor (25.7 ms foreach), a fifth of a bf16 training step. A torch or
    device without the kernel gets the default implementation."""
    try:
        return kind(params, fused=True, **options)
    except (RuntimeError, TypeError, ValueError):
        return kind(params, **options)


@dataclass
class _StepRecord:
    """What a training step hands to :meth:`MultiTaskModule.backward` and then to logging."""

    step: TrainingStep | None  # for the method's backward step (None once done)
    weights: dict[str, Any]  # task -> effective weight (logged)
    monitor: bool  # log the gradient conflict of this step
    batch_size: int
    present: dict[str, bool] = field(default_factory=dict)  # task -> labelled in the batch
    gramian: Tensor | None = None  # [K, K] Gram matrix of the task gradients


def _last(out: Any) -> Tensor:
    return out[-1] if isinstance(out, (list, tuple)) else out
