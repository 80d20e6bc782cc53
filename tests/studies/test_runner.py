"""`scenemtl study run|tune` with real runs in child processes: the ledger, failures,
skipping, two workers sharing a study, and a SIGKILLed worker's run resumed."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest
import yaml

from scenemtl.reporting.run_dir import RunFamily
from tests.helpers import read_metrics
from tests.studies.workers import (
    kill_after_first_checkpoint,
    scenemtl,
    write_long_study,
    write_study,
)

pytestmark = pytest.mark.slow


def trials(runs: Path, name: str = "t") -> list:
    """The trials of Optuna study ``name`` (``t``: study run, ``t-tune``: study tune)."""
    storage = f"sqlite:///{runs / 't' / 'study.db'}"
    return optuna.load_study(study_name=name, storage=storage).get_trials()


def test_run_records_failures_skips_finished_and_retries_failed(tmp_path, tiny_root):
    runs = tmp_path / "runs"
    study = write_study(
        tmp_path,
        tiny_root,
        [
            {"name": "good"},
            {"name": "bad", "overrides": {"model.net.encoder": "resnet7"}},
        ],
    )
    first = scenemtl("study", "run", study, "--runs", runs)
    assert first.returncode == 1, first.stdout + first.stderr
    assert "Traceback" not in first.stdout + first.stderr
    assert "FAILED bad seed 0" in first.stdout and "resnet7" in first.stdout
    good = RunFamily(runs / "t" / "good", "seed_0").versions()
    assert len(good) == 1 and json.loads(good[0].record.read_text())["status"] == "finished"
    states = {t.user_attrs["variant"]: t.state.name for t in trials(runs)}
    assert states == {"good": "COMPLETE", "bad": "FAIL"}
    assert "resnet7" in next(t for t in trials(runs) if t.state.name == "FAIL").user_attrs["error"]

    # the finished run is not trained again; the failed one is tried again
    before = good[0].metrics.read_bytes()
    second = scenemtl("study", "run", study, "--runs", runs)
    assert second.returncode == 1
    assert "1 queued now" in second.stdout and "FAILED bad seed 0" in second.stdout
    assert RunFamily(runs / "t" / "good", "seed_0").versions() == good
    assert good[0].metrics.read_bytes() == before

    report = scenemtl("study", "report", study, "--runs", runs)
    assert report.returncode == 0, report.stderr
    assert "| good | 1/1 |" in report.stdout and "| bad | 0/1 |" in report.stdout


def test_two_workers_share_one_study(tmp_path, tiny_root):
    runs = tmp_path / "runs"
    names = ["a", "b", "c"]  # more trials than workers: one worker takes a second
    study = write_study(tmp_path, tiny_root, [{"name": n} for n in names])
    workers = [scenemtl("study", "run", study, "--runs", runs, wait=False) for _ in range(2)]
    outputs = [w.communicate(timeout=600)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], outputs
    for name in names:
        versions = RunFamily(runs / "t" / name, "seed_0").versions()
        assert len(versions) == 1, f"{name} trained {len(versions)} times"
        assert json.loads(versions[0].record.read_text())["status"] == "finished"
    done = [t for t in trials(runs) if t.state.name == "COMPLETE"]
    assert sorted(t.user_attrs["variant"] for t in done) == names
    trained = [sum(f"finished {n} seed 0" in out for n in names) for out in outputs]
    assert sum(trained) == len(names), outputs


def test_killed_worker_trial_is_retried_and_resumes_its_run(tmp_path, tiny_root):
    runs = tmp_path / "runs"
    study, family = write_long_study(tmp_path, tiny_root, epochs=4)
    kill_after_first_checkpoint(("study", "run", study, "--runs", runs, "--heartbeat", "1"), family)
    epochs_before = {r["epoch"] for r in read_metrics(family.versions()[0].path)}
    assert json.loads(family.versions()[0].record.read_text())["status"] == "running"

    again = scenemtl("study", "run", study, "--runs", runs, "--heartbeat", "1")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "resuming from last.ckpt" in again.stdout
    versions = family.versions()
    assert len(versions) == 1
    record = json.loads(versions[0].record.read_text())
    assert record["status"] == "finished" and record["epochs_done"] == 4
    epochs = [r["epoch"] for r in read_metrics(versions[0].path) if r.get("val/grader")]
    assert epochs == [str(e) for e in range(4)]
    assert epochs_before <= {r["epoch"] for r in read_metrics(versions[0].path)}
    states = sorted(t.state.name for t in trials(runs))
    assert states == ["COMPLETE", "FAIL"]  # the dead worker's trial, then its retry


def test_tune_searches_the_space_and_records_trials(tmp_path, tiny_root):
    runs = tmp_path / "runs"
    study = write_study(
        tmp_path,
        tiny_root,
        [{"name": "base"}],
        monitor="val/grader",
        search={
            "trials": 2,
            "seed": 1,
            "space": {
                "model.lr": {"low": 1e-4, "high": 1e-2, "log": True},
                "model.optimizer": ["sgd", "adam"],
            },
        },
    )
    result = scenemtl("study", "tune", study, "--runs", runs)
    assert result.returncode == 0, result.stdout + result.stderr
    done = trials(runs, "t-tune")
    assert [t.state.name for t in done] == ["COMPLETE", "COMPLETE"]
    for t in done:
        config = yaml.safe_load((Path(t.user_attrs["run"]) / "config.yaml").read_text())
        assert config["model"]["lr"] == pytest.approx(t.params["model.lr"])
        assert config["model"]["optimizer"] == t.params["model.optimizer"]
        assert t.intermediate_values  # reported by the pruning callback after validation
    assert "best trial" in result.stdout
    # the budget is met: a second worker has nothing to do
    again = scenemtl("study", "tune", study, "--runs", runs)
    assert again.returncode == 0 and len(trials(runs, "t-tune")) == 2
