"""configs/nyud.yaml and configs/pascal_context.yaml train one step on test-written trees.

The protocol configs run as shipped (data, tasks, loss weights, optimizer, schedule,
augmentation) except for the network's width (the 16-wide ResNet-18 every fitting test
uses), the batch size and the step count, which only make the step cheap."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from scenemtl.cli import main
from tests.data.mtl_trees import write_nyud_tree, write_pascal_tree

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def _one_step(tmp_path: Path, config: str, root: Path) -> Path:
    run = tmp_path / "runs"
    args = [
        "fit",
        "--config",
        str(CONFIGS / config),
        "--data.root",
        str(root),
        "--data.batch_size=2",
        "--data.val_batch_size=2",
        "--data.num_workers=0",
        "--model.net.weights=null",
        "--model.net.encoder_width=16",
        "--model.net.channels=16",
        "--model.net.skip_channels=8",
        "--trainer.max_steps=1",
        "--trainer.limit_val_batches=1",
        "--trainer.check_val_every_n_epoch=1",
        "--trainer.accelerator=cpu",
        "--trainer.devices=1",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        f"--run.root={run}",
        "--run.name=bench",
        "--submission.enabled=false",
    ]
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code in (0, None)
    return run / "bench" / "version_0" / "checkpoints" / "last.ckpt"


def _check(ckpt: Path, config: str, root: Path) -> None:
    """The checkpoint learned the config's tasks with its weights, and every task's loss
    on a validation batch of the tree is finite and positive (each target reached it)."""
    from scenemtl.data.datamodule import SceneDataModule
    from scenemtl.engine.module import MultiTaskModule

    cfg = yaml.safe_load((CONFIGS / config).read_text())
    weights = cfg["model"]["loss_weights"]
    module = MultiTaskModule.from_checkpoint(ckpt)
    assert list(module.tasks) == list(weights)
    assert module.criterion.weighting.base_weights.tolist() == list(weights.values())
    dm = SceneDataModule(root=str(root), num_workers=0, val_batch_size=2)
    dm.setup("validate")
    batch = dm.on_after_batch_transfer(next(iter(dm.val_dataloader())), 0)
    with torch.no_grad():
        out = module(batch["image"])
    for name, task in module.tasks.items():
        if name in batch:
            loss = task.loss(out[name][-1], batch[name])  # the last is the final output
            assert torch.isfinite(loss) and loss > 0, name


@pytest.mark.slow
def test_nyud_config_trains_one_step(tmp_path):
    root = tmp_path / "NYUD_MT"
    write_nyud_tree(root, {"train": 2, "val": 2}, size=(425, 560))
    _check(_one_step(tmp_path, "nyud.yaml", root), "nyud.yaml", root)


@pytest.mark.slow
def test_pascal_context_config_trains_one_step(tmp_path):
    root = tmp_path / "PASCAL_MT"
    write_pascal_tree(root, {"train": 2, "val": 2}, image_sizes=((375, 500), (500, 375)))
    _check(_one_step(tmp_path, "pascal_context.yaml", root), "pascal_context.yaml", root)
