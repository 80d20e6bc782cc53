import csv

from scenemtl.runs import format_best, summarize_run


def write_run(run_dir, rows, max_epochs):
    run_dir.mkdir(parents=True)
    keys = ["epoch", "step", "train/loss", "val/semseg", "val/depth", "val/grader", "test/semseg",
            "test/depth", "test/grader"]
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


def test_unfinished_and_empty_runs_are_labelled(tmp_path):
    rows = [{"epoch": 0, "step": 4, "val/semseg": 55, "val/depth": 30, "val/grader": 25}]
    write_run(tmp_path / "a" / "version_0", rows, max_epochs=16)
    assert summarize_run(tmp_path / "a" / "version_0").status == "unfinished"
    (tmp_path / "b" / "version_0").mkdir(parents=True)
    assert summarize_run(tmp_path / "b" / "version_0").status == "no metrics"
