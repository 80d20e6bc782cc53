"""A tiny dataset and config shared by the engine tests (a few seconds per fit)."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import yaml


def tiny_config(tmp_path: Path, root: Path, **overrides) -> Path:
    """Write a YAML config for a 2-epoch run of a narrow ResNet-18 joint model (16 wide)."""
    cfg = {
        "seed_everything": 0,
        "trainer": {
            "max_epochs": 2,
            "accelerator": "cpu",
            "devices": 1,
            "log_every_n_steps": 1,
            "enable_model_summary": False,
            "enable_progress_bar": False,
        },
        "model": {
            "net": {
                "architecture": "joint",
                "encoder": "resnet18",
                # a 16-wide ResNet-18 (0.8 M parameters instead of 11.4 M) tests the same
                # paths; its checkpoints are ~9 MB instead of 135 MB, which most fits save
                "encoder_width": 16,
                "channels": 16,
                "skip_channels": 8,
            },
            "optimizer": "adam",
            "lr": 0.001,
        },
        "data": {
            "root": str(root),
            "batch_size": 2,
            "val_batch_size": 2,
            "num_workers": 0,
            "crop_size": [32, 32],
            "scale_min": 0.75,
            "scale_max": 1.25,
        },
        "run": {"root": str(tmp_path / "runs"), "name": "tiny"},
        "visualize": {"ids": [0, 1], "every_n_epochs": 1},
        # a submission packs the checkpoint: only the tests about it pay for that
        "submission": {"enabled": False},
    }
    for dotted, value in overrides.items():
        node = cfg
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


REPO = Path(__file__).resolve().parents[2]


def run_scenemtl(*argv: str) -> subprocess.CompletedProcess:
    """`python -m scenemtl ...` in a child process (for crashes and DDP workers)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO)])}
    return subprocess.run(
        [sys.executable, "-m", "scenemtl", *argv],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=900,
        check=False,
    )


def read_metrics(run_dir: Path) -> list[dict[str, str]]:
    """The rows of a run's metrics.csv."""
    with open(run_dir / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))
