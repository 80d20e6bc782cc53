"""Two CPU processes (gloo) train a few steps; their validation equals a single process'."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.engine.conftest import tiny_config

REPO = Path(__file__).resolve().parents[2]


def scenemtl(*argv: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "scenemtl", *argv],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=900,
        check=False,
    )


def last_val_row(run_dir: Path) -> dict[str, str]:
    with open(run_dir / "metrics.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get("val/grader")]
    assert rows, f"no validation row in {run_dir}/metrics.csv"
    return rows[-1]


def test_ddp_two_processes_validate_like_one(tmp_path, tiny_root):
    cfg = tiny_config(tmp_path, tiny_root, **{"trainer.max_epochs": 1})
    ddp = scenemtl(
        "fit",
        "--config",
        str(cfg),
        "--trainer.devices",
        "2",
        "--trainer.strategy",
        "ddp",
    )
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    run_dir = tmp_path / "runs" / "tiny" / "version_0"
    assert not (tmp_path / "runs" / "tiny" / "version_1").exists()  # one run dir for 2 ranks
    ddp_row = last_val_row(run_dir)

    single = scenemtl(
        "validate",
        "--config",
        str(cfg),
        "--run.root",
        str(tmp_path / "single"),
        "--ckpt_path",
        str(run_dir / "checkpoints" / "last.ckpt"),
    )
    assert single.returncode == 0, single.stderr[-3000:]
    single_row = last_val_row(tmp_path / "single" / "tiny" / "version_0")
    for key in ("val/semseg", "val/depth", "val/grader", "val/depth_mae", "val/semseg_iou/road"):
        assert float(ddp_row[key]) == pytest.approx(float(single_row[key]), rel=1e-5, abs=1e-6), key
