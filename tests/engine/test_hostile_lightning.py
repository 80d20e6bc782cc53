"""`fit`, `validate`, `test` under hostile input: one line, non-zero exit, nothing rewritten.

Also: evaluating a checkpoint never rewrites the run that trained it, and a checkpoint
of another network is refused rather than silently trained or evaluated.
"""

from __future__ import annotations

import io
import json
import shutil
import zipfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from scenemtl.data.format import label_path, rgb_path
from scenemtl.data.stats import write_stats
from scenemtl.reporting.runs import summarize_run
from tests.helpers import read_metrics, slow_fixture, tiny_config, write_random_dataset
from tests.hostile import assert_refused, run, snapshot


def _dataset(root: Path, seed: int = 0) -> Path:
    write_random_dataset(
        root, sizes={"train": 4, "val": 2, "test": 2}, image_size=(32, 48), seed=seed
    )
    write_stats(root)
    return root


@slow_fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny fit with its submission: the run every evaluation must leave alone."""
    base = tmp_path_factory.mktemp("hostile_fit")
    root = _dataset(base / "ds")
    cfg = tiny_config(base, root, **{"trainer.max_epochs": 1, "submission.enabled": True})
    from scenemtl.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["fit", "--config", str(cfg)])
    assert exc.value.code == 0
    run_dir = base / "runs" / "tiny" / "version_0"
    assert (run_dir / "submission.zip").is_file()
    return SimpleNamespace(
        base=base, root=root, cfg=cfg, run=run_dir, best=run_dir / "checkpoints" / "best.ckpt"
    )


# --------------------------------------------------------------------------------------
# evaluation writes into a folder of its own


@pytest.mark.slow
@pytest.mark.parametrize("sub, which", [("test", "best"), ("validate", "last")])
def test_evaluating_a_checkpoint_never_rewrites_its_run(trained, tmp_path, capsys, sub, which):
    other = _dataset(tmp_path / "other", seed=5)  # the case: another data root
    before = snapshot(trained.run)
    ckpt = trained.best if which == "best" else "last"
    # `last`: the newest run of the config's name, so the same runs folder
    runs = tmp_path / "runs" if which == "best" else trained.run.parents[1]
    argv = [sub, "--config", trained.cfg, "--ckpt_path", ckpt, "--data.root", other]
    argv += ["--run.root", runs, "--run.name", "null"]
    result = run(argv, capsys)
    assert result.code == 0, result.err[-3000:]
    after = snapshot(trained.run)
    assert after == before  # submission.zip, hparams.yaml, metrics.csv, config: all as they were
    # the evaluation's own run: <config stem>-<command>/version_0, its metrics and record
    own = runs / f"tiny-{sub}" / "version_0"
    stage = "test" if sub == "test" else "val"
    assert [r for r in read_metrics(own) if r.get(f"{stage}/grader")]
    record = json.loads((own / "run.json").read_text())
    assert record["status"] == "evaluation" and record["stage"] == sub
    evaluated = trained.best if which == "best" else trained.run / "checkpoints" / "last.ckpt"
    assert record["checkpoint"] == str(evaluated.resolve())
    assert summarize_run(own).status == "evaluation"
    assert (own / "submission.zip").is_file() == (sub == "test")


# --------------------------------------------------------------------------------------
# checkpoints that are not checkpoints, or of another network


def _not_a_checkpoint(folder: Path, best: Path, kind: str) -> Path:
    """A file given as a checkpoint that is none: garbage, text, empty, a truncated
    checkpoint, a zip of something else, a bare tensor."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{kind}.ckpt"
    if kind == "zip":
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as zf:
            zf.writestr("hello.txt", "not a checkpoint")
        path.write_bytes(buffer.getvalue())
    elif kind == "tensor":
        torch.save(torch.zeros(3), path)
    else:
        payload = {
            "garbage": b"\x00\x01garbage" * 50,
            "text": b"model: resnet\n",
            "empty": b"",
            "truncated": best.read_bytes()[: best.stat().st_size // 2],
        }[kind]
        path.write_bytes(payload)
    return path


@pytest.mark.slow
@pytest.mark.parametrize(
    "sub, kind",
    [
        ("test", "garbage"),
        ("test", "text"),
        ("test", "empty"),
        ("test", "truncated"),
        ("test", "zip"),
        ("test", "tensor"),
        ("validate", "truncated"),
        ("fit", "zip"),
    ],
)
def test_a_file_that_is_not_a_checkpoint_is_one_line(trained, tmp_path, capsys, sub, kind):
    bad = _not_a_checkpoint(tmp_path / "bad", trained.best, kind)
    argv = [sub, "--config", trained.cfg, "--ckpt_path", bad, "--run.root", tmp_path / "runs"]
    line = assert_refused(
        argv, capsys, [str(bad), "not a scenemtl checkpoint"], watch=[tmp_path, trained.run]
    )
    assert "weights_only" not in line
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
@pytest.mark.parametrize(
    "sub, argv, culprits",
    [
        (
            "test",
            ["--model.net.architecture", "branched"],
            ["'joint'", "'branched'", "architecture"],
        ),
        ("validate", ["--model.net.architecture=distillation"], ["'joint'", "'distillation'"]),
        ("test", ["--model.net.channels", "32"], ["channels=16", "channels=32"]),
        ("fit", ["--model.net.encoder", "resnet34"], ["'resnet18'", "'resnet34'"]),
        ("test", ["--model.net.dilation", "[false, true, true]"], ["dilation"]),
    ],
)
def test_a_checkpoint_of_another_network_is_refused(trained, tmp_path, capsys, sub, argv, culprits):
    full = [sub, "--config", trained.cfg, "--ckpt_path", trained.best, *argv]
    full += ["--run.root", tmp_path / "runs"]
    assert_refused(full, capsys, [str(trained.best), *culprits], watch=[tmp_path, trained.run])
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("*.*"))


@pytest.mark.slow
def test_network_options_of_the_config_file_count_and_defaults_do_not(trained, tmp_path, capsys):
    # a config file that sets another width is a request for another network
    data = yaml.safe_load(trained.cfg.read_text())
    data["model"]["net"]["channels"] = 24
    wide = tmp_path / "wide.yaml"
    wide.write_text(yaml.safe_dump(data))
    argv = ["test", "--config", wide, "--ckpt_path", trained.best, "--run.root", tmp_path / "runs"]
    assert_refused(argv, capsys, ["channels=16", "channels=24"], watch=[tmp_path, trained.run])
    # a config without the network section evaluates the checkpoint's network
    del data["model"]["net"]
    bare = tmp_path / "bare.yaml"
    bare.write_text(yaml.safe_dump(data))
    argv[2] = bare
    assert run(argv, capsys).code == 0


@pytest.mark.slow
def test_resuming_last_with_another_network_is_refused(trained, tmp_path, capsys):
    runs = tmp_path / "runs"
    shutil.copytree(trained.run, runs / "tiny" / "version_0")
    argv = ["fit", "--config", trained.cfg, "--run.root", runs, "--ckpt_path", "last"]
    assert_refused(
        [*argv, "--model.net.skip_channels", "12"],
        capsys,
        ["last.ckpt", "skip_channels=8", "skip_channels=12"],
        watch=[tmp_path],
    )


# --------------------------------------------------------------------------------------
# options Lightning or torch would refuse with a traceback


@pytest.mark.slow
@pytest.mark.parametrize(
    "argv, culprits",
    [
        (["--trainer.accelerator", "gpu"], ["trainer.accelerator gpu", "no usable GPU"]),
        (["--trainer.max_epochs", "-5"], ["trainer.max_epochs", "-5"]),
        (["--trainer.devices", "0"], ["trainer options", "devices"]),
        (["--ckpt_path", "last"], ["--ckpt_path last", "last.ckpt"]),
        (["--ckpt_path", "{tmp}/nope.ckpt"], ["nope.ckpt", "not found"]),
        (
            ["--data.batch_size", "1", "--data.crop_size", "[32, 32]"],
            ["data.batch_size 1", "32x32", "BatchNorm"],
        ),
        (
            ["--data.train_limit", "1", "--data.crop_size", "[24, 32]"],
            ["training split of 1 image", "24x32", "BatchNorm"],
        ),
        (
            [
                "--data.batch_size",
                "1",
                "--data.crop_size",
                "[16, 16]",
                "--model.net.dilation",
                "[false, false, true]",
            ],
            ["1/16 resolution"],
        ),
    ],
)
def test_bad_trainer_and_data_options_are_one_line(trained, tmp_path, capsys, argv, culprits):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    full = ["fit", "--config", trained.cfg, "--run.root", tmp_path / "runs", *argv]
    assert_refused(full, capsys, culprits, watch=[tmp_path, trained.root])
    # nothing left behind: not even the empty version folder reserved for the run
    assert not list((tmp_path / "runs").rglob("version_*"))


@pytest.mark.slow
def test_a_dataset_without_statistics_is_refused_before_any_run_folder(trained, tmp_path, capsys):
    root = tmp_path / "nostats"
    write_random_dataset(root, sizes={"train": 2, "val": 1, "test": 1}, image_size=(32, 48))
    argv = ["fit", "--config", trained.cfg, "--data.root", root, "--run.root", tmp_path / "runs"]
    assert_refused(argv, capsys, [str(root), "scenemtl data stats"], watch=[tmp_path])
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
@pytest.mark.parametrize(
    "argv, culprits",
    [
        (["--model.lr", "abc"], ["model.lr", "abc"]),
        (["--data.crop_size", "big"], ["data.crop_size", "invalid value big"]),
        (["--nonsense", "1"], ["unrecognized arguments: --nonsense"]),
        (["--config", "{tmp}/nope.yaml"], ["nope.yaml", "does not exist"]),
    ],
)
def test_a_command_line_that_does_not_parse_is_one_line_and_status_2(
    trained, tmp_path, capsys, argv, culprits
):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    full = ["validate", "--config", trained.cfg, "--run.root", tmp_path / "runs", *argv]
    line = assert_refused(
        full, capsys, [*culprits, "see scenemtl validate --help"], watch=[tmp_path]
    )
    assert "usage:" not in line
    assert run(full, capsys).code == 2


@pytest.mark.slow
def test_batch_size_one_trains_where_batchnorm_sees_more_than_one_value(trained, tmp_path, capsys):
    # 64x64 crops leave a 2x2 map at 1/32: batch size 1 is fine (the procedural default
    # images, 128x256, never come close)
    argv = ["fit", "--config", trained.cfg, "--run.root", tmp_path / "runs"]
    argv += ["--data.batch_size", "1", "--data.crop_size", "[64, 33]", "--data.train_limit", "1"]
    argv += ["--trainer.limit_val_batches", "1", "--visualize.every_n_epochs", "0"]
    result = run(argv, capsys)
    assert result.code == 0, result.err[-3000:]


# --------------------------------------------------------------------------------------
# broken data met by DataLoader workers


def _corrupt_image(root: Path) -> Path:
    path = rgb_path(root, "train", 2, ".png")
    path.write_bytes(path.read_bytes()[:80])
    return path


def _labels_outside_the_table(root: Path) -> Path:
    path = label_path(root, "train", "semseg", 1)
    labels = np.asarray(Image.open(path)).copy()
    labels[3, 5] = 77
    Image.fromarray(labels).save(path)
    return path


@pytest.mark.slow
@pytest.mark.parametrize(
    "damage, phrase",
    [(_corrupt_image, "cannot decode image"), (_labels_outside_the_table, "label values [77]")],
)
@pytest.mark.parametrize("workers", [0, 1])
def test_broken_training_data_is_one_line_naming_the_file(
    trained, tmp_path, capsys, damage, phrase, workers
):
    root = tmp_path / "ds"
    shutil.copytree(trained.root, root)
    culprit = damage(root)
    argv = ["fit", "--config", trained.cfg, "--data.root", root, "--run.root", tmp_path / "runs"]
    argv += ["--data.num_workers", str(workers)]
    line = assert_refused(argv, capsys, [str(culprit), phrase], watch=[root])
    assert "DataLoader worker" not in line and "Original Traceback" not in line
    record = json.loads(next((tmp_path / "runs").rglob("run.json")).read_text())
    assert record["status"] == "crashed" and record["error"] in line
