"""Every registered architecture trains one step through the CLI (``--model.net.architecture``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from scenemtl.cli import main
from scenemtl.models import ARCHITECTURES
from tests.helpers import read_metrics, tiny_config
from tests.models.nets import SMALL_OPTIONS


@pytest.mark.slow
@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_one_step_fit_through_the_cli(architecture: str, tmp_path: Path, tiny_root: Path) -> None:
    cfg = tiny_config(
        tmp_path,
        tiny_root,
        **{
            "trainer.max_epochs": 1,
            # fractions: an int 1 reaches Lightning as 1.0 (= all batches). The tiny
            # dataset has 4 training and 2 validation batches: one step, one validation
            "trainer.limit_train_batches": 0.25,
            "trainer.limit_val_batches": 0.5,
            "visualize.ids": [],
        },
    )
    argv = ["fit", "--config", str(cfg), "--model.net.architecture", architecture]
    if architecture in SMALL_OPTIONS:  # InvPT's defaults are the authors' 576-wide stages
        argv += ["--model.net.options", json.dumps(SMALL_OPTIONS[architecture])]
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 0
    run = tmp_path / "runs" / "tiny" / "version_0"
    assert json.loads((run / "run.json").read_text())["status"] == "finished"
    state = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
    assert state["global_step"] == 1
    rows = read_metrics(run)
    assert any(r.get("val/grader") for r in rows) and any(r.get("train/loss") for r in rows)
    net = state["hyper_parameters"]["net"]
    assert (net["architecture"] if isinstance(net, dict) else net.architecture) == architecture


@pytest.mark.slow
@pytest.mark.parametrize("space", ["inverse", "log"])
def test_adaptive_bins_fit_in_other_depth_spaces(
    space: str, tmp_path: Path, tiny_root: Path
) -> None:
    cfg = tiny_config(
        tmp_path,
        tiny_root,
        **{
            "trainer.limit_train_batches": 0.25,
            "trainer.limit_val_batches": 0.5,
            "trainer.max_epochs": 1,
            "visualize.ids": [],
        },
    )
    argv = ["fit", "--config", str(cfg), "--model.net.architecture", "branched"]
    argv += ["--model.net.depth_bins", "{depth: 8}", "--model.depth_space", space]
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 0
    run = tmp_path / "runs" / "tiny" / "version_0"
    state = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
    assert any(".bins.bin_tokens" in k for k in state["state_dict"])
    assert any(r.get("val/depth") for r in read_metrics(run))
