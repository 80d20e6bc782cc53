"""The pruning callback a tuned run carries: it reports to the trial in the shared
storage and stops the run cleanly when Optuna's pruner says so."""

from __future__ import annotations

from types import SimpleNamespace

import optuna
import torch

from scenemtl.studies.pruning import OptunaPruning
from scenemtl.studies.runner import PRUNED_ATTR


def fake_trainer(value: float) -> SimpleNamespace:
    return SimpleNamespace(
        sanity_checking=False,
        should_stop=False,
        callback_metrics={"val/grader": torch.tensor(value)},
        _accelerator_connector=SimpleNamespace(is_distributed=False),
    )


def test_a_trial_behind_the_median_is_stopped_and_marked(tmp_path):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.create_study(
        study_name="s",
        storage=url,
        direction="maximize",
        pruner=optuna.pruners.MedianPruner(n_startup_trials=1, n_warmup_steps=0),
    )
    leader = study.ask()
    leader.report(10.0, step=0)
    leader.report(12.0, step=1)
    study.tell(leader, 12.0)

    # the run builds the study's pruner from the same settings (none is stored)
    good = OptunaPruning(url, "s", study.ask()._trial_id, "val/grader", 1, 0)
    bad = OptunaPruning(url, "s", study.ask()._trial_id, "val/grader", 1, 0)
    module = SimpleNamespace(current_epoch=0)
    for callback, value in ((good, 11.0), (bad, 1.0)):
        trainer = fake_trainer(value)
        callback.on_fit_start(trainer, module)
        callback.on_validation_end(trainer, module)
        callback.last_trainer = trainer

    assert good.last_trainer.should_stop is False and good.pruned_at is None
    assert bad.last_trainer.should_stop is True and bad.pruned_at == 0
    stored = {t._trial_id: t for t in study.get_trials()}
    assert stored[good.trial._trial_id].intermediate_values == {0: 11.0}
    assert stored[bad.trial._trial_id].intermediate_values == {0: 1.0}
    assert stored[bad.trial._trial_id].user_attrs == {PRUNED_ATTR: 0}
    assert PRUNED_ATTR not in stored[good.trial._trial_id].user_attrs


def test_sanity_check_validation_is_not_reported(tmp_path):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.create_study(study_name="s", storage=url, direction="maximize")
    callback = OptunaPruning(url, "s", study.ask()._trial_id, "val/grader")
    trainer = fake_trainer(1.0)
    trainer.sanity_checking = True
    callback.on_fit_start(trainer, SimpleNamespace(current_epoch=0))
    callback.on_validation_end(trainer, SimpleNamespace(current_epoch=0))
    assert study.get_trials()[0].intermediate_values == {}
