"""The reporting layer: run.json carries each task's label, unit and direction; older run
folders fall back by task kind; the grader formula; no torch on the way."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from scenemtl.reporting.metrics import (
    GRADER,
    KNOWN_KINDS,
    LEGACY_KINDS,
    Headline,
    fallback_headline,
    grader,
)
from scenemtl.reporting.run_dir import RunDir, task_record
from scenemtl.reporting.runs import format_best, summarize_run

SRC = Path(__file__).resolve().parents[2] / "src"


def _trace(folder: Path, header: str, rows: list[str], record: dict | None) -> Path:
    folder.mkdir(parents=True)
    (folder / "metrics.csv").write_text("\n".join([header, *rows]) + "\n")
    if record is not None:
        (folder / "run.json").write_text(json.dumps(record))
    return folder


class ToyTask:
    """A task kind no report has heard of: only what run.json records of it."""

    name = "surface"
    headline_label = "toy roughness (mm)"
    headline_unit = "mm"
    higher_is_better = False


def test_fit_records_labels_and_reports_read_them_for_a_kind_they_do_not_know(tmp_path):
    from scenemtl.engine.callbacks import RunRecordCallback
    from scenemtl.tasks import build_tasks, legacy_task_specs

    tasks = {t.name: t for t in build_tasks(legacy_task_specs())}
    tasks["surface"] = ToyTask()
    run = RunDir(tmp_path / "toy" / "version_0")
    run.path.mkdir(parents=True)
    module = SimpleNamespace(tasks=tasks, net=torch.nn.Linear(2, 3))
    trainer = SimpleNamespace(is_global_zero=True, max_epochs=3)
    RunRecordCallback(run).on_fit_start(trainer, module)

    record = json.loads(run.record.read_text())
    assert record["tasks"] == ["semseg", "depth", "surface"]
    assert record["directions"] == {"semseg": "max", "depth": "min", "surface": "min"}
    assert record["labels"]["surface"] == "toy roughness (mm)"
    assert record["units"] == {"semseg": "%", "depth": "", "surface": "mm"}
    assert record["parameters"] == 9  # 2*3 weights + 3 biases

    # the surface error falls, then rises: its best (lowest) is epoch 1
    (run.metrics).write_text(
        "epoch,step,val/semseg,val/depth,val/surface\n0,0,40,30,5\n1,1,41,29,3\n2,2,42,28,4\n"
    )
    record["monitor"] = None  # no monitor: the first task's direction would decide
    record["tasks"] = ["surface", "semseg", "depth"]
    run.record.write_text(json.dumps(record))
    summary = summarize_run(run.path)
    assert summary.headline("surface") == Headline("toy roughness (mm)", "mm", False)
    assert summary.monitor == ("val/surface", "min") and summary.best_epoch == 1
    assert format_best(summary).splitlines()[0] == (
        "| split | epoch | surface toy roughness (mm) | semseg mean IoU (%) "
        "| depth SI-logRMSE (x100) |"
    )


@pytest.mark.parametrize("with_record", [True, False])
def test_older_run_folders_fall_back_by_task_kind(tmp_path, with_record):
    # run.json before labels: tasks and directions only; or no run.json at all
    record = {"tasks": ["depth", "normals", "surface"], "status": "finished"}
    if with_record:
        record["directions"] = {"depth": "min", "normals": "min", "surface": "min"}
    folder = _trace(
        tmp_path / "old",
        "epoch,step,val/depth,val/normals,val/surface",
        ["0,0,30,20,4", "1,1,25,22,3"],
        record if with_record else None,
    )
    summary = summarize_run(folder)
    assert summary.tasks == ["depth", "normals", "surface"]
    assert summary.headline("depth") == Headline("SI-logRMSE (x100)", "", False)
    assert summary.headline("normals") == Headline("mean angular error (deg)", "deg", False)
    # a name that is no kind: unlabelled, direction as recorded (else higher)
    assert summary.headline("surface") == Headline("", "", not with_record)
    assert summary.headline(GRADER) == Headline("", "", True)


def test_the_fallback_table_is_what_the_task_kinds_say():
    from scenemtl.tasks import TASK_KINDS, legacy_task_specs

    for kind, headline in KNOWN_KINDS.items():
        cls = TASK_KINDS[kind]
        assert headline == Headline(cls.headline_label, cls.headline_unit, cls.higher_is_better)
    assert {name: spec["kind"] for name, spec in legacy_task_specs().items()} == LEGACY_KINDS
    assert fallback_headline("semseg") == KNOWN_KINDS["segmentation"]


@pytest.mark.parametrize(
    ("semseg", "depth", "expected"),
    [(60.0, 30.0, 30.0), (40.0, 70.0, 0.0), (50.0, 50.0, 0.0), (75.5, 49.0, 26.5)],
)
def test_grader_closed_form(semseg, depth, expected):
    # every step is one float64 subtraction of numbers with few significant bits: exact
    assert grader(semseg, depth) == expected
    assert isinstance(grader(semseg, depth), float)
    mixed = grader(torch.tensor(semseg, dtype=torch.float32), depth)
    assert mixed.dtype == torch.float64 and mixed.item() == expected
    batch = grader(torch.tensor([semseg, 0.0]), torch.tensor([depth, 100.0]))
    assert batch.tolist() == [expected, 0.0]


def test_grader_propagates_nan():
    assert math.isnan(grader(math.nan, 30.0)) and math.isnan(grader(60.0, math.nan))
    assert torch.isnan(grader(torch.tensor(math.nan), 30.0))


def test_task_record_of_no_task_is_empty():
    assert task_record([]) == {"tasks": [], "directions": {}, "labels": {}, "units": {}}


@pytest.mark.slow
def test_reading_and_tabling_runs_loads_no_torch(tmp_path):
    _trace(
        tmp_path / "runs" / "demo" / "version_0",
        "epoch,step,train/loss,val/semseg,val/depth,val/grader",
        ["0,0,1.0,,,", "0,0,,40,30,10"],
        {"tasks": ["semseg", "depth"], "status": "finished", "labels": {"semseg": "mIoU"}},
    )
    code = (
        "import sys\n"
        "import scenemtl.reporting, scenemtl.reporting.metrics, scenemtl.reporting.runs\n"
        "import scenemtl.reporting.tables, scenemtl.reporting.run_dir, scenemtl.atomic\n"
        "from scenemtl.commands.runs import run_table\n"
        f"print(run_table({str(tmp_path / 'runs')!r}))\n"
        "heavy = sorted(m for m in ('torch', 'lightning', 'numpy') if m in sys.modules)\n"
        "print('HEAVY', heavy)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(SRC) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    ).stdout
    assert "HEAVY []" in out
    assert "| demo/version_0 | finished |" in out and "| 10.00 | 40.00 | 30.00 |" in out
