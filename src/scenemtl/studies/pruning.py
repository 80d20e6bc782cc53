"""Optuna pruning inside a study's run (the child process of ``study tune``).

Wraps optuna-integration's ``PyTorchLightningPruningCallback``: the run reports its
monitor after every validation to the trial in the shared storage; when the pruner says
the trial is hopeless, the run stops cleanly at that epoch (a finished, shorter run with
its checkpoints and metrics) and the trial is marked, so that the worker reports it to
Optuna as pruned.
"""

from __future__ import annotations

from typing import Any

import lightning as L


class OptunaPruning(L.Callback):
    """Report ``monitor`` to trial ``trial_id`` of ``study_name`` and stop when pruned.

    Args:
        storage: the study's Optuna storage URL.
        study_name: the Optuna study.
        trial_id: the storage's id of the trial this run belongs to.
        monitor: the metric reported after each validation, e.g. ``val/grader``.
        startup_trials, warmup_epochs: the median pruner's settings (the study's
            ``search`` section): Optuna keeps no pruner in its storage.
    """

    def __init__(
        self,
        storage: str,
        study_name: str,
        trial_id: int,
        monitor: str,
        startup_trials: int = 3,
        warmup_epochs: int = 1,
    ) -> None:
        import optuna
        from optuna_integration import PyTorchLightningPruningCallback

        from scenemtl.studies.runner import median_pruner, open_storage, storage_errors

        optuna.logging.set_verbosity(optuna.logging.ERROR)
        with storage_errors(storage):
            study = optuna.load_study(
                study_name=study_name,
                storage=open_storage(storage, None),
                pruner=median_pruner(startup_trials, warmup_epochs),
            )
            self.trial = optuna.trial.Trial(study, trial_id)
        self.inner = PyTorchLightningPruningCallback(self.trial, monitor)
        self.pruned_at: int | None = None

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.inner.on_fit_start(trainer, pl_module)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        import optuna

        from scenemtl.studies.runner import PRUNED_ATTR

        try:
            self.inner.on_validation_end(trainer, pl_module)
        except optuna.TrialPruned:
            self.pruned_at = pl_module.current_epoch
            self.trial.set_user_attr(PRUNED_ATTR, self.pruned_at)
            trainer.should_stop = True

    def state_dict(self) -> dict[str, Any]:
        return {"pruned_at": self.pruned_at}
