"""Values read back from a study's Optuna storage, corrupted by the test in SQLite: one
line or a skipped trial, never a traceback, a run outside the study or an extra run.

The runs themselves are replaced by a recorder (``fit_cell``): what is checked is what
the worker does with what it reads, not training."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import optuna
import pytest
import yaml

import scenemtl.studies.runner as runner
from scenemtl.studies.spec import load_study
from tests.hostile import assert_refused


@pytest.fixture(scope="module")
def template_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A study database made once (Optuna creates its schema in about a second): study
    ``t`` with one queued cell (variant a, seed 0), study ``t-tune`` with one complete
    trial and one queued (a retry's trial, whose system attributes a test corrupts)."""
    db = tmp_path_factory.mktemp("template") / runner.STORAGE_FILE
    url = f"sqlite:///{db}"
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    cells = optuna.create_study(study_name="t", storage=url, direction="maximize")
    cells.enqueue_trial({}, user_attrs={runner.VARIANT_ATTR: "a", runner.SEED_ATTR: 0})
    tune = optuna.create_study(study_name="t-tune", storage=url, direction="maximize")
    lr = optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True)
    tune.tell(tune.ask({"model.lr": lr}), 0.3)
    tune.enqueue_trial({})
    return db


@pytest.fixture
def study(tmp_path: Path, template_db: Path, monkeypatch: pytest.MonkeyPatch):
    """(spec file, runs folder, database, the folders fit_cell was asked to train)."""
    (tmp_path / "c.yaml").write_text("model: {lr: 0.001}\n")
    spec_file = tmp_path / "s.yaml"
    space = {"model.lr": {"low": 1e-4, "high": 1e-2, "log": True}, "model.optimizer": ["a", "b"]}
    spec_file.write_text(
        yaml.safe_dump(
            {
                "name": "t",
                "config": "c.yaml",
                "seeds": [0],
                "variants": [{"name": "a"}, {"name": "b"}],
                "monitor": "val/grader",
                "search": {"trials": 3, "space": space},
            }
        )
    )
    runs = tmp_path / "runs"
    (runs / "t").mkdir(parents=True)
    db = runs / "t" / runner.STORAGE_FILE
    shutil.copyfile(template_db, db)
    trained: list[Path] = []

    def fake_fit(family, args, monitor, mode, announce):
        trained.append(family.path)
        return runner.CellResult(family.path, 0.5, False, 1.0)

    monkeypatch.setattr(runner, "fit_cell", fake_fit)
    return spec_file, runs, db, trained


def _corrupt(db: Path, *statements: str) -> None:
    with sqlite3.connect(db) as con:
        for statement in statements:
            con.execute(statement)


def _attr(key: str, value_json: str) -> str:
    return f"update trial_user_attributes set value_json='{value_json}' where key='{key}'"


# a cell's attributes that name no cell of the study: skipped (pruned), the real cells run
@pytest.mark.parametrize(
    ("key", "value_json"),
    [
        (runner.VARIANT_ATTR, '"../../evil"'),  # a path
        (runner.VARIANT_ATTR, '"' + "v" * 100_000 + '"'),  # huge
        (runner.SEED_ATTR, '"x"'),  # was: ValueError traceback from int()
        (runner.SEED_ATTR, "NaN"),  # was: ValueError traceback
        (runner.SEED_ATTR, "1e308"),  # a float: was int(1e308), a 309-digit seed folder
        (runner.SEED_ATTR, "true"),  # a bool is no seed
        (runner.SEED_ATTR, "7"),  # not a seed of the study: was trained as seed_7
    ],
)
def test_cells_the_study_does_not_have_are_skipped(study, key, value_json) -> None:
    spec_file, runs, db, trained = study
    _corrupt(db, _attr(key, value_json))
    lines: list[str] = []
    failed = runner.run_study(load_study(spec_file), runs, announce=lines.append)
    assert failed == 0
    assert sorted(trained) == [runs / "t" / "a" / "seed_0", runs / "t" / "b" / "seed_0"]
    skipped = [line for line in lines if line.startswith("skipped trial 0 ")]
    assert len(skipped) == 1 and len(skipped[0]) < 250, lines
    assert sorted(p.name for p in runs.iterdir()) == ["t"]


BROKEN = {
    "json": "update trial_user_attributes set value_json='{' where key='seed'",
    "state": "update trials set state='BOGUS'",
    "direction": "update study_directions set direction='BOGUS'",
    "no value": "update trial_values set value=NULL",  # a complete trial without it
    "distribution": "update trial_params set distribution_json='{'",
    # a categorical parameter whose stored index is outside its choices
    "index": "update trial_params set distribution_json="
    '\'{"name": "CategoricalDistribution", "attributes": {"choices": [1]}}\', param_value=5',
}


@pytest.mark.parametrize(
    ("command", "broken"),
    [
        ("run", "json"),
        ("run", "state"),
        ("run", "direction"),
        ("tune", "state"),
        ("tune", "no value"),
        ("tune", "distribution"),
        ("tune", "index"),
    ],
)
def test_undecodable_storage_data_is_one_line(study, capsys, command, broken) -> None:
    spec_file, runs, db, trained = study
    _corrupt(db, BROKEN[broken])
    assert_refused(
        ["study", command, str(spec_file), "--runs", str(runs)],
        capsys,
        culprit=["--storage", str(db), "unreadable study data"],
        watch=[db.parent],
        new_files=True,  # the schema lock file beside the database
    )
    assert trained == []


def test_a_retry_number_from_the_storage_names_no_folder_elsewhere(study) -> None:
    spec_file, runs, db, trained = study
    for value in ('"../../x"', "1e300", "-1", "99", "true"):
        assert runner.retried_number(3, json.loads(value)) == 3
    assert runner.retried_number(3, 1) == 1  # an earlier trial: its folder is resumed
    # the queued trial (number 1) claims to retry trial "1e300"
    _corrupt(
        db,
        "insert into trial_system_attributes(trial_id, key, value_json) "
        "select max(trial_id), 'failed_trial', '1e300' from trials",
    )
    runner.tune_study(load_study(spec_file), runs, announce=lambda line: None)
    assert trained and all(p.parent == runs / "t" / "tune" for p in trained)
    assert sorted(p.name for p in trained) == ["trial_1", "trial_2"]  # not trial_1e+300
