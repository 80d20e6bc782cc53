"""Two CPU processes (gloo) train a few steps; their validation equals a single process'."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import read_metrics, run_scenemtl, tiny_config


def last_val_row(run_dir: Path) -> dict[str, str]:
    rows = [r for r in read_metrics(run_dir) if r.get("val/grader")]
    assert rows, f"no validation row in {run_dir}/metrics.csv"
    return rows[-1]


@pytest.mark.slow
@pytest.mark.float_paths
def test_ddp_two_processes_validate_like_one(tmp_path, tiny_root):
    cfg = tiny_config(tmp_path, tiny_root, **{"trainer.max_epochs": 1})
    ddp = run_scenemtl(
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

    single = run_scenemtl(
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
    # Each rank predicts half the batch: another float path (tests/floatpaths.py). Depth
    # metrics move by float32 rounding (~1e-6 relative); a label can flip at a near tie,
    # which moves an IoU by one pixel over the class's union (>= 1e3 pixels here: 1e-3).
    for key in ("val/depth", "val/depth_mae"):
        assert float(ddp_row[key]) == pytest.approx(float(single_row[key]), rel=1e-5, abs=1e-6), key
    for key in ("val/semseg", "val/grader", "val/semseg_iou/road"):
        assert float(ddp_row[key]) == pytest.approx(float(single_row[key]), rel=2e-3, abs=1e-6), key
