"""The four-task procedural run (semseg, depth, normals, boundaries) through the command
line: synth, check, fit, test, grade (odsF from the edge PNGs), predict, export."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest
import yaml
from PIL import Image

from scenemtl.cli import main
from scenemtl.commands.grader import grade
from tests.helpers import read_metrics

pytestmark = pytest.mark.slow

TINY_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "four_task_tiny.yaml"


def run_cli(argv):
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in argv])
    return exc.value.code


def test_four_task_procedural_run_fits_tests_grades_predicts_and_exports(tmp_path, capsys):
    root = tmp_path / "four"
    synth = ["data", "synth", "--root", root, "--train", "4", "--val", "2", "--test", "2"]
    synth += ["--size", "32x48", "--workers", "1", "--tasks"]
    assert run_cli([*synth, "semseg", "depth", "normals", "boundaries"]) == 0
    assert run_cli(["data", "check", "--root", root]) == 0

    cfg = yaml.safe_load(TINY_CONFIG.read_text())
    cfg["data"]["root"] = str(root)
    cfg["run"] = {"root": str(tmp_path / "runs"), "name": "four"}
    cfg["submission"] = {"enabled": True}
    config = tmp_path / "four.yaml"
    config.write_text(yaml.safe_dump(cfg))
    assert run_cli(["fit", "--config", config]) == 0
    run = tmp_path / "runs" / "four" / "version_0"
    record = json.loads((run / "run.json").read_text())
    assert record["tasks"] == ["semseg", "depth", "normals", "boundaries"]
    assert record["directions"]["boundaries"] == "max"
    assert record["labels"]["boundaries"] == "odsF (%)"
    columns = set(read_metrics(run)[0])
    assert {"val/boundaries", "val/boundaries_oisF", "val/boundaries_AP"} <= columns
    assert "train/loss_boundaries" in columns
    best = run / "checkpoints" / "best.ckpt"
    assert run_cli(["test", "--config", config, "--ckpt_path", best]) == 0
    tested = [r for r in read_metrics(run.parent / "version_1") if r]
    live = float(next(r["test/boundaries"] for r in tested if r.get("test/boundaries")))

    # the submission holds 8-bit probability PNGs; the grader scores them with odsF
    with zipfile.ZipFile(run / "submission.zip") as archive:
        assert "predictions/boundaries/1.png" in archive.namelist()
        with archive.open("predictions/boundaries/0.png") as f:
            png = Image.open(f)
            png.load()
    assert png.mode == "L" and png.size == (48, 32)
    capsys.readouterr()
    assert run_cli(["grade", run / "submission.zip", "--gt", root, "--split", "test"]) == 0
    graded = capsys.readouterr().out
    line = next(row for row in graded.splitlines() if row.startswith("boundaries"))
    assert "odsF (%)" in line
    assert 0.0 <= float(line.split()[1]) <= 100.0
    # same checkpoint, same images: the PNGs hold floor(255 p), which the live metric
    # uses too, so the integer counts agree; the logged value is float32 (rel. 6e-8)
    scores = grade(run / "submission.zip", root, split="test")
    assert scores["boundaries"] == pytest.approx(live, abs=1e-5)
    assert {"boundaries_oisF", "boundaries_AP"} <= set(scores)

    out = tmp_path / "pred"
    image = root / "test" / "rgb" / "0.jpg"
    argv = ["predict", "--ckpt_path", best, "--input", image, "--output", out, "--tta-flip"]
    assert run_cli(argv) == 0
    edges = Image.open(out / "0_boundaries.png")
    assert edges.mode == "L" and edges.size == (48, 32)
    assert "boundaries:" in capsys.readouterr().out

    onnx = tmp_path / "four.onnx"
    export = ["export", "onnx", "--ckpt_path", best, "--out", onnx, "--size", "32x48"]
    assert run_cli([*export, "--runs", "1"]) == 0
    assert capsys.readouterr().out.count("boundaries logits max |diff|") == 2
    import onnx as onnx_lib

    names = [o.name for o in onnx_lib.load(str(onnx), load_external_data=False).graph.output]
    assert names[-2:] == ["boundaries_logits", "boundaries"]


def test_a_four_task_study_reports_delta_m_against_single_task_baselines(tmp_path, capsys):
    """studies/four_task.yaml in miniature: one variant, four single-task baselines, one
    seed, one epoch each; the report's Δm averages over all four tasks."""
    root = tmp_path / "four"
    synth = ["data", "synth", "--root", root, "--train", "4", "--val", "2", "--test", "2"]
    synth += ["--size", "32x48", "--workers", "1", "--tasks"]
    assert run_cli([*synth, "semseg", "depth", "normals", "boundaries"]) == 0
    cfg = yaml.safe_load(TINY_CONFIG.read_text())
    cfg["data"]["root"] = str(root)
    cfg["visualize"] = {"every_n_epochs": 1000}
    (tmp_path / "four.yaml").write_text(yaml.safe_dump(cfg))
    tasks = ["semseg", "depth", "normals", "boundaries"]
    study = yaml.safe_load((TINY_CONFIG.parents[1] / "studies" / "four_task.yaml").read_text())
    study.update(config="four.yaml", seeds=[0], variants=[{"name": "joint"}], presets={})
    assert study["baselines"] == {"variant": "joint", "tasks": tasks}
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(study))
    runs = tmp_path / "study_runs"
    assert run_cli(["study", "run", tmp_path / "study.yaml", "--runs", runs]) == 0
    capsys.readouterr()
    assert run_cli(["study", "report", tmp_path / "study.yaml", "--runs", runs]) == 0
    report = capsys.readouterr().out
    assert "No Δm" not in report
    row = next(line for line in report.splitlines() if line.startswith("| joint |"))
    header = next(line for line in report.splitlines() if "Δm (%)" in line)
    cells = dict(zip(header.split("|"), row.split("|"), strict=True))
    delta = cells[" Δm (%) "].split("±")[0].strip()
    assert delta.startswith(("+", "-")) and float(delta) == float(delta)
    assert "odsF (%)" in report and all(f"single_{t}" in report for t in tasks)
