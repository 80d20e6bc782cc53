"""Kill a run mid-epoch with SIGKILL, resume it, and compare with an uninterrupted run."""

from __future__ import annotations

import csv
import signal
from pathlib import Path

import pytest
import torch

from tests.helpers import run_scenemtl, tiny_config


def fit(cfg: Path, *extra: str):
    return run_scenemtl("fit", "--config", str(cfg), *extra)


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def training_steps(path: Path) -> list[int]:
    return [int(r["step"]) for r in _rows(path) if r.get("train/loss")]


def validated_epochs(path: Path) -> list[int]:
    return [int(r["epoch"]) for r in _rows(path) if r.get("val/grader")]


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_matches_uninterrupted(tmp_path, tiny_root):
    common = {"trainer.max_epochs": 3, "run.checkpoint_every_n_steps": 2}
    ref_cfg = tiny_config(tmp_path / "ref", tiny_root, **common)
    assert fit(ref_cfg).returncode == 0
    ref = torch.load(
        tmp_path / "ref/runs/tiny/version_0/checkpoints/last.ckpt",
        weights_only=True,
        map_location="cpu",
    )

    # 4 batches per epoch; last.ckpt is refreshed at step 6, the kill comes at step 8
    # before that step's refresh, just after the trace was flushed: metrics.csv holds a
    # row (step index 6) that the checkpoint has not seen
    cfg = tiny_config(
        tmp_path / "crash",
        tiny_root,
        **common,
        **{
            "trainer.callbacks": [
                {
                    "class_path": "tests.engine.killer.KillAtStep",
                    "init_args": {"step": 8, "flush": True},
                }
            ]
        },
    )
    crashed = fit(cfg)
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr[-2000:]
    run_dir = tmp_path / "crash/runs/tiny/version_0"
    mid = torch.load(run_dir / "checkpoints/last.ckpt", weights_only=True, map_location="cpu")
    assert mid["global_step"] == 6 and mid["epoch"] == 1
    assert 6 in training_steps(run_dir / "metrics.csv")

    resumed = fit(cfg, "--ckpt_path", "last", "--trainer.callbacks", "[]")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert not (tmp_path / "crash/runs/tiny/version_1").exists()  # resumed in place
    final = torch.load(run_dir / "checkpoints/last.ckpt", weights_only=True, map_location="cpu")
    assert final["global_step"] == ref["global_step"] == 12
    assert final["epoch"] == ref["epoch"]
    sched, ref_sched = final["lr_schedulers"][0], ref["lr_schedulers"][0]
    # the trace logs each step and each epoch's validation once, as the uninterrupted one
    ref_csv = tmp_path / "ref/runs/tiny/version_0/metrics.csv"
    assert training_steps(run_dir / "metrics.csv") == training_steps(ref_csv) == list(range(12))
    assert validated_epochs(run_dir / "metrics.csv") == validated_epochs(ref_csv) == [0, 1, 2]
    assert sched["last_epoch"] == ref_sched["last_epoch"] == 12
    assert sched["_last_lr"] == ref_sched["_last_lr"]
    assert sched["lr_lambdas"] == ref_sched["lr_lambdas"]  # same total steps and power
    assert (
        final["optimizer_states"][0]["param_groups"][0]["lr"]
        == (ref["optimizer_states"][0]["param_groups"][0]["lr"])
    )
