import csv

import pytest

from scenemtl.reporting.runs import format_best, summarize_run


def write_run(run_dir, rows, max_epochs):
    run_dir.mkdir(parents=True)
    keys = [
        "epoch",
        "step",
        "train/loss",
        "val/semseg",
        "val/depth",
        "val/grader",
        "test/semseg",
        "test/depth",
        "test/grader",
    ]
    with open(run_dir / "metrics.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        for r in rows:
            w.writerow(r)
    (run_dir / "config.yaml").write_text(f"trainer:\n  max_epochs: {max_epochs}\n")


def test_best_grader_reports_semseg_and_depth_of_that_validation(tmp_path):
    rows = [
        {"epoch": 0, "step": 3, "train/loss": 2.0},
        {"epoch": 0, "step": 4, "val/semseg": 55, "val/depth": 30, "val/grader": 25},
        # best semseg alone, but not best grader
        {"epoch": 1, "step": 8, "val/semseg": 70, "val/depth": 49, "val/grader": 21},
        {"epoch": 2, "step": 12, "val/semseg": 60, "val/depth": 25, "val/grader": 35},
        {"epoch": 2, "step": 12, "test/semseg": 58, "test/depth": 26, "test/grader": 32},
    ]
    write_run(tmp_path / "exp" / "version_0", rows, max_epochs=3)
    s = summarize_run(tmp_path / "exp" / "version_0")
    assert s.best == {"semseg": 60, "depth": 25, "grader": 35}
    assert s.best_epoch == 2 and s.status == "finished" and s.name == "exp"
    assert s.test["grader"] == 32
    assert "| val (best grader) | 2 | 60.00 | 25.00 | 35.00 |" in format_best(s)


def test_unfinished_empty_and_evaluation_runs_are_labelled(tmp_path):
    val = {"epoch": 0, "step": 4, "val/semseg": 55, "val/depth": 30, "val/grader": 25}
    write_run(tmp_path / "a" / "version_0", [{"epoch": 0, "step": 3, "train/loss": 1}, val], 16)
    assert summarize_run(tmp_path / "a" / "version_0").status == "unfinished"
    # `scenemtl validate` of a checkpoint: validation rows only, no training record
    write_run(tmp_path / "v" / "version_0", [val], max_epochs=16)
    assert summarize_run(tmp_path / "v" / "version_0").status == "evaluation"
    (tmp_path / "b" / "version_0").mkdir(parents=True)
    assert summarize_run(tmp_path / "b" / "version_0").status == "unfinished"


def test_run_table_lists_every_run_with_its_state(tmp_path, capsys):
    import json

    import pytest

    from scenemtl.cli import main

    ok = [{"epoch": 0, "step": 4, "val/semseg": 60, "val/depth": 25, "val/grader": 35}]
    write_run(tmp_path / "good" / "version_0", ok, max_epochs=1)
    (tmp_path / "good" / "version_0" / "run.json").write_text(
        json.dumps({"status": "finished", "parameters": 22_400_000, "train_seconds": 600})
    )
    (tmp_path / "config.yaml").write_text("model:\n  net:\n    architecture: branched\n")
    write_run(tmp_path / "boom" / "version_0", ok, max_epochs=1)
    (tmp_path / "boom" / "version_0" / "run.json").write_text(
        json.dumps({"status": "crashed", "error": "non-finite training loss at step 3"})
    )
    (tmp_path / "killed" / "version_2" / "checkpoints").mkdir(parents=True)
    for fmt in ("md", "csv", "latex"):
        with pytest.raises(SystemExit) as exc:
            main(["runs", str(tmp_path), "--format", fmt])
        assert exc.value.code == 0
        out = capsys.readouterr().out
        assert out.count("good") == 1 and out.count("boom") == 1 and out.count("killed") == 1
    lines = out.splitlines()
    assert "crashed" in next(line for line in lines if "boom" in line)
    assert "unfinished" in next(line for line in lines if "killed" in line)
    with pytest.raises(SystemExit):
        main(["runs", str(tmp_path), "--format", "csv"])
    rows = list(csv.DictReader(capsys.readouterr().out.splitlines()))
    good = next(r for r in rows if r["run"].startswith("good"))
    assert good["params (M)"] == "22.40" and good["train time"] == "10.0 min"
    assert good["grader"] == "35.00" and good["status"] == "finished"


@pytest.mark.parametrize("make", ["missing", "file"])
def test_a_runs_folder_that_is_none_is_one_line(tmp_path, capsys, make):
    from tests.hostile import assert_refused

    target = tmp_path / "runs"
    if make == "file":
        target.write_text("a file")
    phrase = "is not a folder" if make == "file" else "does not exist"
    assert_refused(["runs", target], capsys, [str(target), phrase], watch=[tmp_path])


# --------------------------------------------------------------------------------------
# tasks as data: the monitor picks the row, the tasks pick the columns


def write_trace(run_dir, rows, record=None):
    """metrics.csv with the union of the rows' keys (sorted, as Lightning writes it)."""
    import json

    run_dir.mkdir(parents=True, exist_ok=True)
    keys = sorted({k for r in rows for k in r})
    with open(run_dir / "metrics.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)
    if record is not None:
        (run_dir / "run.json").write_text(json.dumps(record))
    return run_dir


def test_the_run_monitor_picks_the_best_validation(tmp_path):
    rows = [
        {"epoch": 0, "step": 1, "train/loss": 1.0},
        {"epoch": 0, "step": 1, "val/semseg": 50, "val/depth": 20, "val/grader": 30},
        {"epoch": 1, "step": 2, "val/semseg": 60, "val/depth": 30, "val/grader": 30},
        {"epoch": 2, "step": 3, "val/semseg": 40, "val/depth": 25, "val/grader": 25},
    ]
    record = {
        "tasks": ["semseg", "depth"],
        "monitor": {"metric": "val/depth", "mode": "min"},
        "status": "finished",
    }
    s = summarize_run(write_trace(tmp_path / "r" / "version_0", rows, record))
    assert s.monitor == ("val/depth", "min") and s.best_epoch == 0
    assert s.best == {"semseg": 50, "depth": 20, "grader": 30}
    # ties keep the first validation, as the checkpoint callback does
    record["monitor"] = {"metric": "val/grader", "mode": "max"}
    s = summarize_run(write_trace(tmp_path / "r" / "version_0", rows, record))
    assert s.best_epoch == 0 and s.best["semseg"] == 50


def test_two_task_run_keeps_the_demo_table(tmp_path):
    rows = [
        {"epoch": 0, "step": 1, "train/loss": 1.0},
        {"epoch": 0, "step": 1, "val/semseg": 39.37, "val/depth": 27.85, "val/grader": 22.15},
        {"epoch": 0, "step": 1, "test/semseg": 40.42, "test/depth": 27.73, "test/grader": 22.27},
    ]
    record = {
        "tasks": ["semseg", "depth"],
        "monitor": {"metric": "val/grader", "mode": "max"},
        "status": "finished",
    }
    s = summarize_run(write_trace(tmp_path / "demo" / "version_0", rows, record))
    assert s.columns == ["semseg", "depth", "grader"]
    assert format_best(s).splitlines() == [
        "| split | epoch | semseg mean IoU (%) | depth SI-logRMSE (x100) | grader |",
        "|---|---|---|---|---|",
        "| val (best grader) | 0 | 39.37 | 27.85 | 22.15 |",
        "| test | | 40.42 | 27.73 | 22.27 |",
    ]


def test_single_task_runs_are_reported_by_their_own_metric(tmp_path):
    # no run.json (a `scenemtl validate`) and no grader: the task's headline decides,
    # in its direction (IoU: higher, SI-logRMSE: lower)
    sem = [
        {"epoch": 0, "step": 1, "val/semseg": 30, "val/semseg_iou/road": 80},
        {"epoch": 1, "step": 2, "val/semseg": 45, "val/semseg_iou/road": 85},
        {"epoch": 2, "step": 3, "val/semseg": 41, "val/semseg_iou/road": 90},
    ]
    s = summarize_run(write_trace(tmp_path / "sem" / "version_0", sem))
    assert s.tasks == ["semseg"] and s.columns == ["semseg"]
    assert s.monitor == ("val/semseg", "max") and s.best == {"semseg": 45} and s.best_epoch == 1
    assert s.status == "evaluation"
    depth = [
        {"epoch": 0, "step": 1, "val/depth": 30, "val/depth_mae": 3.0},
        {"epoch": 1, "step": 2, "val/depth": 25, "val/depth_mae": 4.0},
        {"epoch": 2, "step": 3, "val/depth": 28, "val/depth_mae": 2.0},
    ]
    s = summarize_run(write_trace(tmp_path / "depth" / "version_0", depth))
    assert s.tasks == ["depth"] and s.monitor == ("val/depth", "min")
    assert s.best == {"depth": 25} and s.best_epoch == 1
    assert format_best(s).splitlines()[0] == "| split | epoch | depth SI-logRMSE (x100) |"
    assert "| val (best depth) | 1 | 25.00 |" in format_best(s)


def test_run_table_columns_are_the_tasks_present_plus_grader(tmp_path, capsys):
    from scenemtl.cli import main

    both = [{"epoch": 0, "step": 1, "val/semseg": 60, "val/depth": 25, "val/grader": 35}]
    write_trace(tmp_path / "both" / "version_0", both, {"tasks": ["semseg", "depth"]})
    sem = [{"epoch": 0, "step": 1, "val/semseg": 70}]
    write_trace(
        tmp_path / "sem" / "version_0",
        sem,
        {"tasks": ["semseg"], "monitor": {"metric": "val/semseg", "mode": "max"}},
    )
    with pytest.raises(SystemExit) as exc:
        main(["runs", str(tmp_path), "--format", "csv"])
    assert exc.value.code == 0
    lines = capsys.readouterr().out.splitlines()
    header = lines[0].split(",")
    assert header[header.index("params (M)") + 1 :] == [
        "grader",
        "semseg",
        "depth",
        "best epoch",
        "train time",
    ]
    rows = list(csv.DictReader(lines))
    assert [r["run"] for r in rows] == ["both/version_0", "sem/version_0"]  # by grader
    assert rows[1]["semseg"] == "70.00" and rows[1]["depth"] == rows[1]["grader"] == ""
    assert rows[1]["weights"] == "1" and rows[0]["weights"] == "1/1"


# --------------------------------------------------------------------------------------
# issue 9: one malformed run folder must not take the table down

BAD_RUNS = {
    "record list": ("run.json", b"[1, 2]", "run.json: a list, not a JSON object"),
    "record garbage": ("run.json", b"{not json", "run.json: not valid JSON"),
    "metrics latin-1": (
        "metrics.csv",
        "epoch,step,val/semseg\n0,1,r\xe9sum\xe9\n".encode("latin-1"),
        "metrics.csv: not UTF-8 text",
    ),
    "epoch text": (
        "metrics.csv",
        b"epoch,step,val/semseg\n0,1,50\nlast,2,60\n",
        "metrics.csv line 3: epoch 'last' is not a number",
    ),
    "config list": ("config.yaml", b"- trainer\n- model\n", "config.yaml: a list, not a mapping"),
    "config section": (
        "config.yaml",
        b"trainer: 12\n",
        "config.yaml: 'trainer' is a number, not a mapping",
    ),
    "monitor": (
        "run.json",
        b'{"monitor": "val/grader"}',
        "run.json: 'monitor' is not {metric, mode: max|min}",
    ),
}


@pytest.mark.parametrize("name", list(BAD_RUNS))
def test_a_malformed_run_is_listed_as_unreadable(tmp_path, name):
    file, payload, reason = BAD_RUNS[name]
    run_dir = tmp_path / "bad" / "version_0"
    write_run(run_dir, [{"epoch": 0, "step": 1, "val/semseg": 50}], max_epochs=1)
    (run_dir / file).write_bytes(payload)
    s = summarize_run(run_dir)
    assert s.status == "unreadable" and s.reason == reason
    assert not s.best and s.best_epoch is None
    assert format_best(s) == f"{run_dir}: unreadable ({reason})"


def test_run_table_survives_every_malformed_run(tmp_path, capsys):
    from scenemtl.cli import main

    ok = [
        {"epoch": 0, "step": 3, "train/loss": 1.0},
        {"epoch": 0, "step": 4, "val/semseg": 60, "val/depth": 25, "val/grader": 35},
    ]
    write_run(tmp_path / "good" / "version_0", ok, max_epochs=1)
    for i, (file, payload, _) in enumerate(BAD_RUNS.values()):
        run_dir = tmp_path / f"bad{i}" / "version_0"
        write_run(run_dir, ok, max_epochs=1)
        (run_dir / file).write_bytes(payload)
    from tests.hostile import snapshot

    before = snapshot(tmp_path)
    for fmt in ("md", "csv", "latex"):
        with pytest.raises(SystemExit) as exc:
            main(["runs", str(tmp_path), "--format", fmt])
        assert exc.value.code == 0
        out, err = capsys.readouterr()
        assert out.count("unreadable") == len(BAD_RUNS) and err == ""
    assert snapshot(tmp_path) == before  # read-only
    with pytest.raises(SystemExit):
        main(["runs", str(tmp_path), "--format", "csv"])
    rows = {r["run"]: r for r in csv.DictReader(capsys.readouterr().out.splitlines())}
    assert rows["good/version_0"]["status"] == "finished"
    assert rows["good/version_0"]["grader"] == "35.00"
    for i, (_, _, reason) in enumerate(BAD_RUNS.values()):
        assert rows[f"bad{i}/version_0"]["status"] == f"unreadable: {reason}"
        assert rows[f"bad{i}/version_0"]["grader"] == ""
