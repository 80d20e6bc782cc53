"""Callbacks: prediction grids for every logger and histograms in TensorBoard; the run record."""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger

from scenemtl.atomic import atomic_write_bytes
from scenemtl.data.dataset import SampleCollate
from scenemtl.data.transforms import prepare_eval_batch
from scenemtl.engine.loggers import log_image
from scenemtl.engine.precision import warn_if_bf16_slow
from scenemtl.errors import TrainingDiverged, one_line
from scenemtl.reporting.run_dir import RunDir, task_record
from scenemtl.tasks.labels import LABELLED
from scenemtl.visualize import prediction_panel, tile


class VisualizationCallback(L.Callback):
    """Every ``every_n_epochs`` validations, log a grid of fixed validation samples.

    Each row: RGB, then per task its ground truth and prediction in the task's colours
    (segmentation: the class table's colours; depth: log colormap, invalid black). Also
    logs histograms of the values of tasks that have them (depth in meters).

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
        loggers = trainer.loggers
        datamodule = getattr(trainer, "datamodule", None)
        if not loggers or datamodule is None:
            return
        dataset = datamodule.dataset("val")
        ids = [i for i in self.ids if 0 <= i < len(dataset)]
        if not ids:
            return
        # a sample may lack a task's label (partial labels): its panel shows the fill
        tasks = getattr(dataset, "tasks", ()) if getattr(dataset, "with_gt", True) else ()
        batch = SampleCollate(tasks)([dataset[i] for i in ids])
        batch.pop(LABELLED, None)
        batch = prepare_eval_batch({k: v.to(pl_module.device) for k, v in batch.items()})
        with torch.no_grad():
            preds = pl_module.predict_step(batch)
        tasks = pl_module.task_list

        def numpy(x: torch.Tensor) -> Any:
            return x.float().cpu().numpy() if x.is_floating_point() else x.cpu().numpy()

        rows = [
            prediction_panel(
                batch["rgb"][k].permute(1, 2, 0).cpu().numpy(),
                tasks,
                {t.name: numpy(preds[t.name][k]) for t in tasks},
                {t.name: numpy(batch[t.name][k]) for t in tasks if t.name in batch},
            )
            for k in range(len(ids))
        ]
        grid = tile(rows)
        for logger in loggers:
            log_image(logger, "val/predictions", grid, trainer.global_step)
            if not isinstance(logger, TensorBoardLogger):
                continue
            writer = logger.experiment
            for task in tasks:
                if task.name not in batch:
                    continue
                values = task.histogram_values(preds[task.name], batch[task.name])
                if values is not None:
                    writer.add_histogram(
                        f"val/{task.name}_pred", values[0].cpu(), trainer.global_step
                    )
                    writer.add_histogram(
                        f"val/{task.name}_gt", values[1].cpu(), trainer.global_step
                    )


class Bf16CostCallback(L.Callback):
    """At fit start, one line on stderr if the run computes in bf16 on a CPU that runs it
    slower than fp32 (:mod:`scenemtl.engine.precision`; rank 0 only, once per fit)."""

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero:
            warn_if_bf16_slow(trainer.precision, trainer.strategy.root_device.type)


class RunRecordCallback(L.Callback):
    """Keeps ``run.json`` in the run directory: status, parameters, training time.

    The run table reads it to tell finished, crashed and unfinished runs apart and to
    show their size and cost without loading checkpoints. Training time adds up over
    resumes.
    """

    def __init__(self, run_dir: RunDir, monitor: str | None = None, mode: str = "max") -> None:
        super().__init__()
        self.path = run_dir.record
        self.monitor = {"metric": monitor, "mode": mode} if monitor else None
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
        record = self._read()
        self._previous_seconds = float(record.get("train_seconds", 0.0))
        if "error" in record:  # a resume: the old failure is history, not the state
            record["previous_errors"] = [*record.get("previous_errors", []), record.pop("error")]
            atomic_write_bytes(self.path, (json.dumps(record, indent=2) + "\n").encode())
        net = getattr(pl_module, "net", pl_module)
        tasks = getattr(pl_module, "tasks", {})
        self._write(
            # what `runs` and `study report` need to show and rank a task's headline metric
            **task_record(tasks.values()),
            monitor=self.monitor,
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
        if not (trainer.is_global_zero and self._start):
            return
        if isinstance(exception, KeyboardInterrupt):
            # Ctrl-C is the user's decision, not a failure: nothing to report as an error
            self._write(status="interrupted", train_seconds=self._elapsed())
        elif isinstance(exception, TrainingDiverged):
            error = one_line(exception)[:300]
            self._write(status="diverged", error=error, train_seconds=self._elapsed())
        else:
            error = one_line(exception)[:300]
            self._write(status="crashed", error=error, train_seconds=self._elapsed())


class DivergenceGuard(L.Callback):
    """Stops training at the first optimizer step that leaves a non-finite weight.

    The loss is checked in ``training_step`` (before the step) and predictions where they
    are scored; this catches a finite loss whose update overflowed the weights. Raising
    here, before the checkpoint callbacks of the same step (Lightning runs them last),
    keeps ``last.ckpt`` and ``best.ckpt`` at the last state with finite weights.
    """

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, i: int
    ) -> None:
        params = [p for p in pl_module.parameters() if p.is_floating_point()]
        if not params:
            return
        # one reduction per tensor: a norm is non-finite iff some element is
        norms = torch.stack([torch.linalg.vector_norm(p.detach().float()) for p in params])
        if bool(torch.isfinite(norms).all()):
            return
        names = [n for n, p in pl_module.named_parameters() if p.is_floating_point()]
        bad = [n for n, ok in zip(names, torch.isfinite(norms).tolist(), strict=True) if not ok]
        more = f" and {len(bad) - 1} more" if len(bad) > 1 else ""
        raise TrainingDiverged(
            f"training diverged at step {trainer.global_step - 1} (epoch "
            f"{trainer.current_epoch}, batch {i}): non-finite weights after the optimizer "
            f"step ({bad[0]}{more}); lower the learning rate or check the data"
        )


class EvaluationRecordCallback(L.Callback):
    """Writes ``run.json`` of a ``validate``/``test`` run: what it evaluated.

    Evaluating a checkpoint logs into a run folder of its own, never into the run that
    trained the checkpoint; this record names the checkpoint, so that the run table can
    tell such folders from training runs.
    """

    def __init__(self, run_dir: RunDir, checkpoint: str | None, stage: str) -> None:
        super().__init__()
        self.path = run_dir.record
        self.checkpoint = checkpoint
        self.stage = stage

    def _record(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero or trainer.sanity_checking:
            return
        record = {
            "status": "evaluation",
            "stage": self.stage,
            "checkpoint": str(Path(self.checkpoint).resolve()) if self.checkpoint else None,
            **task_record(getattr(pl_module, "tasks", {}).values()),
            "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        atomic_write_bytes(self.path, (json.dumps(record, indent=2) + "\n").encode())

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._record(trainer, pl_module)

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._record(trainer, pl_module)
