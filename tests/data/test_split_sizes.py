"""Split sizes in dataset.json are claims: nothing may be sized by them before the disk
backs them (a 1e12 once made `data check` grow past 19 GB and `fit` ask for terabytes)."""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import tracemalloc
from pathlib import Path

import pytest

from scenemtl.data.check import check_dataset
from scenemtl.data.dataset import SceneDataset
from scenemtl.data.format import MAX_SPLIT_SIZE, read_info
from scenemtl.errors import DataFormatError


def _claim(root: Path, split: str, size: int) -> None:
    data = json.loads((root / "dataset.json").read_text())
    data["splits"][split]["size"] = size
    (root / "dataset.json").write_text(json.dumps(data))


@pytest.mark.parametrize(
    ("size", "message"),
    [
        (10**12, f"split 'train' claims {10**12} images, more than {MAX_SPLIT_SIZE}"),
        (5_000_000, "split 'train' declares 5000000 images but {root}/train/rgb holds 4"),
        (5, "split 'train' declares 5 images but {root}/train/rgb holds 4"),
    ],
)
def test_readers_refuse_claims_the_disk_does_not_back(random_dataset, size, message) -> None:
    _claim(random_dataset, "train", size)
    message = message.format(root=random_dataset)
    tracemalloc.start()
    try:
        with pytest.raises(DataFormatError, match=message) as info:
            read_info(random_dataset)
        with pytest.raises(DataFormatError, match=message):
            SceneDataset(random_dataset, "train")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 5 << 20
    assert "\n" not in str(info.value)


def test_datamodule_refuses_before_training(random_dataset) -> None:
    from scenemtl.data.datamodule import SceneDataModule

    _claim(random_dataset, "val", 10**9)
    with pytest.raises(DataFormatError, match="split 'val'"):
        SceneDataModule(root=str(random_dataset), crop_size=None)


def test_sizes_within_the_files_are_fine(random_dataset) -> None:
    _claim(random_dataset, "train", 3)  # fewer than on disk: the extra file is reported
    assert read_info(random_dataset).split_size("train") == 3
    assert len(SceneDataset(random_dataset, "train")) == 3
    assert check_dataset(random_dataset) == [
        f"{random_dataset}/train/{m}/3.png: index beyond split size 3"
        for m in ("rgb", "semseg", "depth")
    ]


def test_check_names_a_few_missing_files_but_not_a_billion(random_dataset) -> None:
    _claim(random_dataset, "val", 3)  # one more than on disk: the files are named
    problems = check_dataset(random_dataset)
    assert problems == [
        f"{random_dataset}/val/{m}/2.png: file not found" for m in ("rgb", "semseg", "depth")
    ]
    _claim(random_dataset, "val", 10**6)
    tracemalloc.start()
    try:
        problems = check_dataset(random_dataset, workers=1)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert problems == [
        f"{random_dataset}/dataset.json: split 'val' declares {10**6} images but "
        f"{random_dataset}/val/rgb holds 2"
    ]
    assert peak < 5 << 20


def _limit_memory() -> None:
    # the heap (brk and anonymous mmaps), not the address space torch's libraries map
    resource.setrlimit(resource.RLIMIT_DATA, (768 << 20, 768 << 20))


@pytest.mark.slow
def test_data_check_command_stays_small(random_dataset) -> None:
    """The command itself, in a process whose heap is capped at 768 MiB: one line on
    stdout, a count on stderr, exit status 1, no traceback."""
    size = MAX_SPLIT_SIZE  # the largest claim dataset.json may make, on 2 files
    _claim(random_dataset, "test", size)
    proc = subprocess.run(
        [sys.executable, "-m", "scenemtl", "data", "check", "--root", str(random_dataset)],
        capture_output=True,
        text=True,
        preexec_fn=_limit_memory,
        timeout=300,
    )
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr and "MemoryError" not in proc.stderr
    assert len(proc.stdout.splitlines()) == 1
    assert "split 'test'" in proc.stdout and str(size) in proc.stdout
    assert proc.stderr.strip() == f"1 problem(s) in {random_dataset}"
