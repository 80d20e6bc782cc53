"""Sizes and counts from options and files are checked against their stated maximum
before anything of that size is made (docs/reliability.md, "Maxima").

Each case asks for far more than any machine has: without the bound it would allocate
(or start threads, or queue runs) until memory ran out. The bound itself is tested at
its edge: the maximum passes the check, one more is refused."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from scenemtl.api import MAX_PIXELS
from scenemtl.argtypes import MAX_WORKERS
from scenemtl.codecs.image import MAX_IMAGE_PIXELS
from scenemtl.commands.lightning import MAX_EPOCHS, MAX_STEPS
from scenemtl.data.cityscapes import convert_cityscapes
from scenemtl.data.datamodule import MAX_BATCH_PIXELS, MAX_BATCH_SIZE, SceneDataModule
from scenemtl.data.transforms import BatchAugment
from scenemtl.errors import UserError
from scenemtl.models.config import MAX_CHANNELS, ModelConfig
from scenemtl.studies.spec import MAX_SEED, MAX_STUDY_RUNS, MAX_TRIALS, load_study
from tests.helpers import tiny_config, write_random_dataset
from tests.hostile import assert_refused


@pytest.mark.parametrize(
    ("argv", "culprit"),
    [
        (
            ["data", "cityscapes", "--src", "s", "--out", "o", "--size", "40000x40000"],
            "40000x40000",
        ),
        (["data", "cityscapes", "--src", "s", "--out", "o", "--size", "8193x8192"], "8193x8192"),
        (["complexity", "--config", "c.yaml", "--size", "40000x40000"], "40000x40000"),
        (["complexity", "--config", "c.yaml", "--size", "4097x4096"], "4097x4096"),
        (["data", "check", "--root", "r", "--workers", str(10**9)], str(10**9)),
        (["data", "synth", "--print-root", "--workers", str(MAX_WORKERS + 1)], "--workers"),
        (["study", "tune", "s.yaml", "--trials", str(MAX_TRIALS + 1)], "--trials"),
    ],
)
def test_option_sizes_are_bounded_while_parsing(tmp_path, capsys, argv, culprit) -> None:
    line = assert_refused(argv, capsys, culprit, watch=[tmp_path])
    assert "usage" not in line


def test_the_size_bounds_are_the_readers() -> None:
    from scenemtl.argtypes import size_at_most

    assert size_at_most(MAX_IMAGE_PIXELS)("8192x8192") == (8192, 8192)
    assert size_at_most(MAX_PIXELS)("4096x4096") == (4096, 4096)
    assert size_at_most(MAX_PIXELS)("1x16777216") == (1, 16777216)


def test_cityscapes_size_is_refused_before_the_source_is_read(tmp_path) -> None:
    with pytest.raises(UserError, match="--size 9000x9000"):
        convert_cityscapes(tmp_path / "no such tree", tmp_path / "out", size=(9000, 9000))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "crop", [(MAX_IMAGE_PIXELS, 2), 10**6, (8193, 8192), (float("inf"), 2), (float("nan"), 2)]
)
def test_crop_sizes_are_bounded(crop) -> None:
    with pytest.raises(UserError, match="crop_size"):
        BatchAugment(crop_size=crop)
    assert BatchAugment(crop_size=(8192, 8192)).crop_size == (8192, 8192)


@pytest.mark.parametrize(
    "options",
    [
        {"batch_size": MAX_BATCH_SIZE + 1},
        {"val_batch_size": 10**12},
        {"num_workers": MAX_WORKERS + 1},
    ],
)
def test_datamodule_counts_are_bounded(options) -> None:
    key = next(iter(options))
    with pytest.raises(UserError, match=f"data.{key} must be in"):
        SceneDataModule(**options)


@pytest.mark.parametrize("field", ["channels", "skip_channels", "se_reduction"])
def test_decoder_widths_are_bounded(field) -> None:
    with pytest.raises(UserError, match=f"model.net.{field}: expected an integer in 1..4096"):
        ModelConfig.from_dict({field: 10**9}).validate()
    ModelConfig.from_dict({field: MAX_CHANNELS}).validate()


@pytest.fixture
def small_root(tmp_path: Path) -> Path:
    from scenemtl.data.stats import write_stats

    root = tmp_path / "ds"
    write_random_dataset(root, sizes={"train": 2, "val": 1}, image_size=(16, 24))
    write_stats(root)
    return root


@pytest.mark.parametrize(
    ("overrides", "culprit"),
    [
        (["--data.batch_size", "4096", "--data.crop_size", "[8192, 8192]"], "data.batch_size"),
        (["--data.val_batch_size", "4096"], None),  # val images of 16x24: allowed
        (["--trainer.max_epochs", str(MAX_EPOCHS + 1)], "trainer.max_epochs"),
        (["--trainer.max_steps", str(MAX_STEPS + 1)], "trainer.max_steps"),
        (["--model.net.channels", str(10**9)], "model.net.channels"),
    ],
)
def test_fit_sizes_are_refused_before_a_run_folder(
    tmp_path, capsys, small_root, overrides, culprit
) -> None:
    config = tiny_config(tmp_path / "cfg", small_root)
    if culprit is None:
        # the check alone, not a fit: the batch bound at its edge
        from scenemtl.commands.lightning import _check_batch_pixels

        _check_batch_pixels("data.val_batch_size", MAX_BATCH_PIXELS // (16 * 24), (16, 24), "")
        with pytest.raises(UserError, match="more than the maximum"):
            _check_batch_pixels("k", MAX_BATCH_PIXELS // (16 * 24) + 1, (16, 24), "")
        return
    argv = ["fit", "--config", str(config), "--run.root", str(tmp_path / "runs"), *overrides]
    assert_refused(argv, capsys, culprit, watch=[tmp_path])
    assert not (tmp_path / "runs").exists()


def _study(tmp_path: Path, **doc) -> Path:
    (tmp_path / "c.yaml").write_text("model: {lr: 0.001}\n")
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"config": "c.yaml", "variants": [{"name": "a"}], **doc}))
    return path


@pytest.mark.parametrize(
    ("doc", "culprit"),
    [
        ({"seeds": [MAX_SEED + 1]}, "seeds"),
        ({"seeds": list(range(MAX_STUDY_RUNS + 1))}, "runs, more than the maximum"),
        (
            {"variants": [{"name": f"v{i}"} for i in range(101)], "seeds": list(range(100))},
            "101 variant(s) x 100 seed(s)",
        ),
        (
            {"search": {"trials": MAX_TRIALS + 1, "space": {"model.lr": [0.1]}}},
            "search.trials must be an integer in 1..100000",
        ),
        (
            {"search": {"seed": MAX_SEED + 1, "space": {"model.lr": [0.1]}}},
            "search.seed",
        ),
    ],
)
def test_study_counts_are_bounded(tmp_path, doc, culprit) -> None:
    with pytest.raises(UserError) as e:
        load_study(_study(tmp_path, **doc))
    assert culprit in str(e.value)


def test_a_study_of_the_maximum_size_loads(tmp_path) -> None:
    edge = _study(tmp_path, seeds=list(range(MAX_STUDY_RUNS)))
    assert len(load_study(edge).cells()) == MAX_STUDY_RUNS
