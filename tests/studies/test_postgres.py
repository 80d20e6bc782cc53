"""Studies on a real PostgreSQL server (docs/studies.md: workers on many machines share a
study through ``--storage postgresql://...``): two workers share one study, a SIGKILLed
worker's trial is retried by the next worker, and the report reads the runs as with
SQLite. Skips, with its reason, where no server can be started."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import optuna
import pytest

from scenemtl.errors import UserError
from scenemtl.reporting.run_dir import RunFamily
from scenemtl.studies.runner import database_url
from tests.helpers import slow_fixture
from tests.studies.postgres_server import create_database, postgres_server, why_no_server
from tests.studies.workers import (
    kill_after_first_checkpoint,
    scenemtl,
    write_long_study,
    write_study,
)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(why_no_server() is not None, reason=str(why_no_server())),
]


@slow_fixture(scope="module")
def server() -> str:
    # the server runs as another user when the tests run as root: a folder it can enter
    folder = Path(tempfile.mkdtemp(prefix="scenemtl-pg-"))
    os.chmod(folder, 0o755)
    try:
        with postgres_server(folder / "pg") as url_template:
            yield url_template
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def trials(url: str) -> list:
    return optuna.load_study(study_name="t", storage=database_url(url)).get_trials()


def test_two_workers_share_one_study_on_postgres(tmp_path, tiny_root, server):
    url = create_database(server, "share")
    runs = tmp_path / "runs"
    names = ["a", "b"]
    study = write_study(tmp_path, tiny_root, [{"name": n} for n in names])
    workers = [
        scenemtl("study", "run", study, "--runs", runs, "--storage", url, wait=False)
        for _ in range(2)
    ]
    outputs = [w.communicate(timeout=600)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], outputs
    for name in names:
        versions = RunFamily(runs / "t" / name, "seed_0").versions()
        assert len(versions) == 1, f"{name} trained {len(versions)} times"
    done = [t for t in trials(url) if t.state.name == "COMPLETE"]
    assert sorted(t.user_attrs["variant"] for t in done) == names
    assert not (runs / "t" / "study.db").exists()  # the ledger is on the server

    report = scenemtl("study", "report", study, "--runs", runs)
    assert report.returncode == 0, report.stderr
    for name in names:
        assert f"| {name} | 1/1 |" in report.stdout


def test_killed_worker_trial_is_retried_on_postgres(tmp_path, tiny_root, server):
    url = create_database(server, "killed")
    runs = tmp_path / "runs"
    study, family = write_long_study(tmp_path, tiny_root, epochs=4)
    argv = ("study", "run", study, "--runs", runs, "--storage", url, "--heartbeat", "1")
    kill_after_first_checkpoint(argv, family)

    again = scenemtl(*argv)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "resuming from last.ckpt" in again.stdout
    record = json.loads(family.versions()[0].record.read_text())
    assert record["status"] == "finished" and record["epochs_done"] == 4
    assert sorted(t.state.name for t in trials(url)) == ["COMPLETE", "FAIL"]


def test_a_url_without_driver_goes_to_psycopg_and_a_named_driver_is_kept():
    assert database_url("postgresql://u@h/db").startswith("postgresql+psycopg://")
    assert database_url("postgresql+psycopg2://u@h/db") == "postgresql+psycopg2://u@h/db"
    assert database_url("sqlite:///x.db") == "sqlite:///x.db"


def test_an_unreachable_server_is_one_line(tmp_path):
    from scenemtl.studies.runner import open_storage

    with pytest.raises(UserError, match="--storage"):
        open_storage(f"postgresql://nobody@/nodb?host={tmp_path}", None)
