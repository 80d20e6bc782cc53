"""Every registered architecture trains one step through the CLI (``--model.net.architecture``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from scenemtl.cli import main
from scenemtl.models import ARCHITECTURES
from tests.engine.conftest import tiny_config


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_one_step_fit_through_the_cli(architecture: str, tmp_path: Path, tiny_root: Path) -> None:
    cfg = tiny_config(
        tmp_path,
        tiny_root,
        **{
            "trainer.max_epochs": 1,
            # an int 1 for limit_train_batches reaches Lightning as 1.0 (= all batches)
            "trainer.max_steps": 1,
            "visualize.ids": [],
        },
    )
    with pytest.raises(SystemExit) as exc:
        main(["fit", "--config", str(cfg), "--model.net.architecture", architecture])
    assert exc.value.code == 0
    run = tmp_path / "runs" / "tiny" / "version_0"
    assert json.loads((run / "run.json").read_text())["status"] == "finished"
    state = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
    assert state["global_step"] == 1
    net = state["hyper_parameters"]["net"]
    assert (net["architecture"] if isinstance(net, dict) else net.architecture) == architecture
