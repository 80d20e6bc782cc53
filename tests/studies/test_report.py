"""Study reports from run folders: the aggregate, Δm, the Pareto front and the files."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest
import yaml
from PIL import Image

from scenemtl.studies.report import build_report, delta_against, pareto_front, write_report
from scenemtl.studies.spec import load_study


def test_delta_m_known_answer():
    lower = {"semseg": False, "depth": True}
    # +10% IoU and 10% less error: both 10% better
    assert delta_against({"semseg": 44.0, "depth": 0.9}, {"semseg": 40.0, "depth": 1.0}, lower) == (
        pytest.approx(10.0)
    )
    # better at one, as much worse at the other: zero
    assert delta_against({"semseg": 44.0, "depth": 1.1}, {"semseg": 40.0, "depth": 1.0}, lower) == (
        pytest.approx(0.0)
    )
    # a metric without a baseline does not count
    assert delta_against({"semseg": 30.0, "depth": 2.0}, {"semseg": 40.0}, lower) == pytest.approx(
        -25.0
    )
    assert delta_against({"semseg": 30.0}, {}, lower) is None


def test_pareto_front():
    # maximize x, minimize y
    points = [(1.0, 1.0), (2.0, 2.0), (2.0, 1.5), (0.5, 0.5), (1.5, 3.0), (0.5, 0.5)]
    assert pareto_front(points, (True, False)) == [3, 5, 0, 2]
    assert pareto_front(points, (True, True)) == [4, 1]
    assert pareto_front([], (True, True)) == []


def fake_run(folder: Path, curve: list[tuple[float, float]], status: str = "finished") -> None:
    """A run folder as `fit` leaves it: per epoch (semseg IoU, depth error)."""
    folder.mkdir(parents=True)
    rows = ["epoch,step,train/loss,val/semseg,val/depth,val/grader"]
    for epoch, (iou, err) in enumerate(curve):
        rows.append(f"{epoch},{epoch * 10},1.0,,,")
        rows.append(f"{epoch},{epoch * 10 + 9},,{iou},{err},{iou - err}")
    (folder / "metrics.csv").write_text("\n".join(rows) + "\n")
    record = {
        "tasks": ["semseg", "depth"],
        "monitor": {"metric": "val/grader", "mode": "max"},
        "status": status,
        "parameters": 1000,
        "train_seconds": 60.0,
        "max_epochs": len(curve),
    }
    (folder / "run.json").write_text(json.dumps(record))
    (folder / "config.yaml").write_text(yaml.safe_dump({"trainer": {"max_epochs": len(curve)}}))


def single_run(folder: Path, task: str, values: list[float]) -> None:
    folder.mkdir(parents=True)
    direction = "max" if task == "semseg" else "min"
    rows = [f"epoch,step,val/{task}"] + [f"{e},{e},{v}" for e, v in enumerate(values)]
    (folder / "metrics.csv").write_text("\n".join(rows) + "\n")
    (folder / "run.json").write_text(
        json.dumps(
            {
                "tasks": [task],
                "monitor": {"metric": f"val/{task}", "mode": direction},
                "status": "finished",
                "parameters": 500,
                "train_seconds": 30.0,
            }
        )
    )


@pytest.fixture
def study(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "name": "toy",
                "seeds": [0, 1],
                "monitor": "val/grader",
                "variants": [{"name": "a"}, {"name": "b"}, {"name": "c"}],
                "baselines": {"tasks": ["semseg", "depth"]},
            }
        )
    )
    runs = tmp_path / "runs" / "toy"
    # a: best grader at epoch 1 in both seeds
    fake_run(runs / "a/seed_0/version_0", [(30, 20), (40, 10), (41, 30)])
    fake_run(runs / "a/seed_1/version_0", [(30, 20), (44, 12), (40, 25)])
    # b: seed 1 crashed, then a finished resume would be version_1; here only the crash
    fake_run(runs / "b/seed_0/version_0", [(20, 15), (35, 14)])
    fake_run(runs / "b/seed_1/version_0", [(10, 30)], status="crashed")
    # c: no runs at all
    single_run(runs / "single_semseg/seed_0/version_0", "semseg", [30, 40])
    single_run(runs / "single_semseg/seed_1/version_0", "semseg", [38, 36])
    single_run(runs / "single_depth/seed_0/version_0", "depth", [12, 10])
    single_run(runs / "single_depth/seed_1/version_0", "depth", [9, 11])
    return path, tmp_path / "runs"


def test_aggregate_and_delta_against(study):
    path, runs = study
    report = build_report(load_study(path), runs)
    a, b, c = report.results[:3]
    assert a.values("semseg") == [40, 44] and a.values("depth") == [10, 12]
    assert a.mean("semseg") == 42 and a.std("semseg") == pytest.approx(statistics.stdev([40, 44]))
    assert b.values("semseg") == [35] and b.std("semseg") is None  # the crashed seed is out
    assert c.runs == {}
    assert report.metrics == ["semseg", "depth"]
    # baselines: best of each single-task run by its own monitor, then the mean over seeds
    assert report.baselines == {"semseg": 39.0, "depth": 9.5}
    expected = 100 * ((42 - 39) / 39 - (11 - 9.5) / 9.5) / 2
    assert report.delta["a"][0] == pytest.approx(expected)
    seeds = [
        100 * ((40 - 39) / 39 - (10 - 9.5) / 9.5) / 2,
        100 * ((44 - 39) / 39 - (12 - 9.5) / 9.5) / 2,
    ]
    assert report.delta["a"][1] == pytest.approx(statistics.stdev(seeds))


def test_report_files(study):
    path, runs = study
    _, out, table = write_report(load_study(path), runs)
    assert out == runs / "toy" / "report"
    text = (out / "report.md").read_text()
    assert "| a | 2/2 | 42.00 ± 2.83 |" in text and table in text
    assert "b seed 1: crashed" in text and "c seed 0: not run" in text
    csv_text = (out / "results.csv").read_text()
    assert csv_text.splitlines()[0].startswith("variant,runs,")
    assert "\\begin{tabular}" in (out / "results.tex").read_text()
    pngs = sorted(p.name for p in out.glob("*.png"))
    # no cost figure: these runs have no hparams.yaml to build the network from
    assert pngs == [
        "curves_depth.png",
        "curves_grader.png",
        "curves_semseg.png",
        "tradeoff_semseg_depth.png",
    ]
    for name in pngs:
        assert f"]({name})" in text
        with Image.open(out / name) as im:
            assert im.format == "PNG" and im.size[0] > 300


def two_task_run(folder: Path, iou: float, error: float, directions: dict | None) -> None:
    """A finished run of semseg and a task named ``surface`` (an angle error)."""
    folder.mkdir(parents=True)
    rows = ["epoch,step,val/semseg,val/surface", f"0,9,{iou},{error}"]
    (folder / "metrics.csv").write_text("\n".join(rows) + "\n")
    record = {"tasks": ["semseg", "surface"], "status": "finished", "max_epochs": 1}
    record["monitor"] = {"metric": "val/semseg", "mode": "max"}
    if directions is not None:
        record["directions"] = directions
    (folder / "run.json").write_text(json.dumps(record))


def test_delta_m_takes_each_task_direction_from_its_runs(tmp_path):
    """A lower error of a task the report knows only by name (its kind is recorded by
    the run) counts as better, in Δm and on the trade-off figure's axes."""
    path = tmp_path / "s.yaml"
    spec = {"name": "n", "seeds": [0], "variants": [{"name": "mtl"}]}
    spec["baselines"] = {"tasks": ["semseg", "surface"]}
    path.write_text(yaml.safe_dump(spec))
    runs = tmp_path / "runs" / "n"
    directions = {"semseg": "max", "surface": "min"}
    two_task_run(runs / "mtl/seed_0/version_0", 40.0, 20.0, directions)
    single_run(runs / "single_semseg/seed_0/version_0", "semseg", [40.0])
    (runs / "single_surface/seed_0/version_0").mkdir(parents=True)
    base = runs / "single_surface/seed_0/version_0"
    (base / "metrics.csv").write_text("epoch,step,val/surface\n0,0,25.0\n")
    record = {"tasks": ["surface"], "directions": {"surface": "min"}, "status": "finished"}
    (base / "run.json").write_text(json.dumps(record))
    report = build_report(load_study(path), tmp_path / "runs")
    assert report.baselines == {"semseg": 40.0, "surface": 25.0}
    assert not report.higher_is_better("surface") and report.higher_is_better("semseg")
    # semseg equal, surface 20 against 25 (lower is better): +20% / 2 tasks
    assert report.delta["mtl"][0] == pytest.approx(10.0)


def test_columns_are_labelled_as_the_runs_recorded_their_tasks(tmp_path):
    """A task kind the report has never heard of is labelled by its runs' run.json; the
    course tasks of runs that recorded no label by their kind."""
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"name": "n", "seeds": [0], "variants": [{"name": "mtl"}]}))
    folder = tmp_path / "runs" / "n" / "mtl/seed_0/version_0"
    two_task_run(folder, 40.0, 20.0, {"semseg": "max", "surface": "min"})
    record = json.loads((folder / "run.json").read_text())
    record.update(labels={"surface": "roughness (mm)"}, units={"surface": "mm"})
    (folder / "run.json").write_text(json.dumps(record))
    report = build_report(load_study(path), tmp_path / "runs")
    assert report.title("surface") == "surface roughness (mm)"
    assert report.title("semseg") == "semseg mean IoU (%)"
    assert list(report.rows()[0])[2:5] == [
        "semseg mean IoU (%)",
        "surface roughness (mm)",
        "grader",
    ]


def test_no_delta_m_when_a_baseline_is_missing(study):
    path, runs = study
    for seed_dir in (runs / "toy" / "single_depth").iterdir():
        record = seed_dir / "version_0" / "run.json"
        record.write_text(json.dumps({**json.loads(record.read_text()), "status": "crashed"}))
    report = build_report(load_study(path), runs)
    assert report.baselines == {"semseg": 39.0} and report.delta == {}
    _, out, _ = write_report(load_study(path), runs)
    text = (out / "report.md").read_text()
    assert "No Δm: no finished single-task baseline for depth" in text
    assert "| a | 2/2 | 42.00 ± 2.83 |" in text


def test_runs_without_recorded_directions_fall_back_to_the_task_kind(tmp_path):
    from scenemtl.reporting.runs import summarize_run

    folder = tmp_path / "r"
    folder.mkdir()
    (folder / "metrics.csv").write_text("epoch,step,val/normals\n0,0,30\n1,1,20\n2,2,25\n")
    (folder / "run.json").write_text(json.dumps({"tasks": ["normals"], "status": "finished"}))
    summary = summarize_run(folder)
    assert summary.directions == {"normals": "min"}
    assert summary.monitor == ("val/normals", "min") and summary.best_epoch == 1


def test_report_without_preset_skips_a_preset_that_does_not_load_here(study, capsys):
    from scenemtl.cli import main

    path, runs = study
    doc = yaml.safe_load(path.read_text())
    doc["presets"] = {"gpu": {"config": "missing_on_this_machine.yaml"}}
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(SystemExit) as done:
        main(["study", "report", str(path), "--runs", str(runs)])
    assert done.value.code == 0, capsys.readouterr().err
    assert "## toy" in capsys.readouterr().out
