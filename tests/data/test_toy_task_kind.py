"""A task kind the data tools have never heard of is checked and counted by its own
methods: one class and one registry entry, nothing in scenemtl.data touched."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from scenemtl.codecs.classes import read_semseg
from scenemtl.data.check import check_dataset
from scenemtl.data.format import read_info, write_info
from scenemtl.data.stats import compute_stats
from scenemtl.errors import DataFormatError
from scenemtl.tasks import TASK_KINDS
from scenemtl.tasks.base import Task
from scenemtl.tasks.statistics import TargetStatistics
from tests.helpers import write_random_dataset


class MaskShare(TargetStatistics):
    def __init__(self) -> None:
        self.ones = 0
        self.pixels = 0

    def add(self, target: np.ndarray) -> None:
        self.ones += int(target.sum())
        self.pixels += int(target.size)

    def merge(self, other: TargetStatistics) -> None:
        assert isinstance(other, MaskShare)
        self.ones += other.ones
        self.pixels += other.pixels

    def result(self, where: str) -> dict[str, Any]:
        return {"mask_share": self.ones / self.pixels}


class MaskTask(Task):
    """A binary mask in an L PNG: 0 or 1."""

    kind = "toy_mask"

    def __init__(self, name: str) -> None:
        super().__init__(name, 1)

    def read_target(self, path: Path) -> np.ndarray:
        values = read_semseg(path)
        if (values > 1).any():
            raise DataFormatError(f"{path}: mask values above 1")
        return values.astype(np.int64)

    def statistics(self) -> MaskShare:
        return MaskShare()


@pytest.fixture
def mask_root(tmp_path, monkeypatch):
    monkeypatch.setitem(TASK_KINDS, MaskTask.kind, MaskTask)
    write_random_dataset(tmp_path, sizes={"train": 3})
    rng = np.random.default_rng(5)
    for i in range(3):
        (tmp_path / "train/mask").mkdir(exist_ok=True)
        mask = (rng.random((24, 40)) < 0.3).astype(np.uint8)
        Image.fromarray(mask).save(tmp_path / f"train/mask/{i}.png")
    info = read_info(tmp_path)
    write_info(tmp_path, dataclasses.replace(info, extra_tasks={"mask": {"kind": "toy_mask"}}))
    return tmp_path


def test_a_new_kind_is_checked_by_its_own_reader(mask_root):
    assert check_dataset(mask_root) == []
    Image.fromarray(np.full((24, 40), 2, np.uint8)).save(mask_root / "train/mask/1.png")
    assert check_dataset(mask_root) == [f"{mask_root}/train/mask/1.png: mask values above 1"]


def test_a_new_kind_brings_its_own_statistics(mask_root):
    stats, _ = compute_stats(mask_root)
    masks = [np.asarray(Image.open(mask_root / f"train/mask/{i}.png")) for i in range(3)]
    expected = sum(int(m.sum()) for m in masks) / sum(m.size for m in masks)
    assert stats["mask_share"] == expected  # integer counts: one division, the same one
    assert stats["num_images"] == 3 and "depth_m" in stats and "class_pixel_frequency" in stats
