import csv

from scenemtl.commands.runs import format_best, summarize_run


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


def test_missing_runs_folder_is_one_line(tmp_path, capsys):
    import pytest

    from scenemtl.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["runs", str(tmp_path / "nope")])
    assert exc.value.code == 1
    assert "does not exist" in capsys.readouterr().err
