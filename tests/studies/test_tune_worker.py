"""`study tune`'s worker logic without training (fit_cell replaced): the seed of each
worker, diverged and busy runs, and a stored search of the other direction."""

from __future__ import annotations

import os
from pathlib import Path

import optuna
import pytest
import yaml

from scenemtl.errors import UserError
from scenemtl.studies import runner
from scenemtl.studies.spec import load_study


def tune_spec(tmp_path: Path, mode: str = "max"):
    (tmp_path / "base.yaml").write_text("trainer: {max_epochs: 1}\n")
    study = {
        "name": "t",
        "config": "base.yaml",
        "seeds": [0],
        "monitor": "val/grader",
        "monitor_mode": mode,
        "variants": [{"name": "base"}],
        "search": {"trials": 2, "seed": 3, "space": {"model.lr": {"low": 1e-4, "high": 1e-2}}},
    }
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(study))
    return load_study(tmp_path / "s.yaml")


def tune_trials(tmp_path: Path) -> list:
    storage = f"sqlite:///{tmp_path / 'runs' / 't' / 'study.db'}"
    return optuna.load_study(study_name="t-tune", storage=storage).get_trials()


def test_workers_get_different_seeds_from_one_search_seed(monkeypatch):
    seeds = {}
    for pid in (101, 102, 101):
        monkeypatch.setattr(os, "getpid", lambda pid=pid: pid)
        seeds.setdefault(pid, set()).add(runner.worker_seed(3))
    assert len(seeds[101]) == 1 and seeds[101] != seeds[102]


def test_a_run_without_a_finite_monitor_is_a_failure_and_stops_the_search(tmp_path, monkeypatch):
    def diverged(family, args, monitor, mode, announce):
        return runner.CellResult(run=family.path, value=None, resumed=False, seconds=1.0)

    monkeypatch.setattr(runner, "fit_cell", diverged)
    lines: list[str] = []
    failures = runner.tune_study(tune_spec(tmp_path), tmp_path / "runs", announce=lines.append)
    assert failures == 3
    assert "stopped: three trials in a row failed (see their fit.log)" in lines
    assert [t.state.name for t in tune_trials(tmp_path)] == ["FAIL"] * 3
    assert "no finite value of val/grader" in tune_trials(tmp_path)[0].user_attrs["error"]


def test_a_busy_run_is_pruned_not_a_traceback(tmp_path, monkeypatch):
    def busy(family, args, monitor, mode, announce):
        raise runner.CellBusy(f"{family.path} is being trained by another process")

    monkeypatch.setattr(runner, "fit_cell", busy)
    failures = runner.tune_study(tune_spec(tmp_path), tmp_path / "runs", announce=print)
    assert failures == 0
    assert [t.state.name for t in tune_trials(tmp_path)] == ["PRUNED", "PRUNED"]


def test_a_stored_search_of_the_other_direction_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(runner, "fit_cell", pytest.fail)
    study_dir = tmp_path / "runs" / "t"
    study_dir.mkdir(parents=True)
    optuna.create_study(
        study_name="t-tune", storage=f"sqlite:///{study_dir / 'study.db'}", direction="maximize"
    )
    with pytest.raises(UserError, match="made to maximize .* asks to minimize val/grader"):
        runner.tune_study(tune_spec(tmp_path, mode="min"), tmp_path / "runs", announce=print)


def test_a_failed_run_reports_the_error_of_its_last_attempt(tmp_path):
    log = tmp_path / "fit.log"
    log.write_text(
        f"\n{runner.ATTEMPT_MARK}--config a.yaml\nscenemtl: error: lr must be > 0\n"
        f"\n{runner.ATTEMPT_MARK}--config a.yaml\nEpoch 3: killed by the OOM killer\n"
    )
    assert runner._error_line(log) == "Epoch 3: killed by the OOM killer"
    log.write_text(f"{runner.ATTEMPT_MARK}x\nscenemtl: error: data root missing\nbye\n")
    assert runner._error_line(log) == "data root missing"
