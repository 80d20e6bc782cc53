"""A split of an on-disk dataset as a ``torch.utils.data.Dataset``.

Decoding (JPEG/PNG -> tensors) happens here, i.e. in DataLoader workers; augmentation
does not (see :mod:`scenemtl.data.transforms`, applied to whole batches on the device).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from scenemtl.data.format import (
    DatasetInfo,
    find_rgb,
    label_path,
    read_depth,
    read_info,
    read_rgb,
    read_semseg,
)
from scenemtl.errors import DataFormatError

Sample = dict[str, torch.Tensor]


class SceneDataset(Dataset[Sample]):
    """One split of a MiniScapes-layout dataset.

    Each item is a dict:

    * ``rgb``: uint8 ``[3, H, W]``
    * ``semseg``: int64 ``[H, W]``, trainIds 0..18, 255 = ignore (only with GT)
    * ``depth``: float32 ``[H, W]`` meters, ``0.0`` = invalid (only with GT)
    * ``index``: int64 scalar, the sample's file index

    Args:
        root: dataset root (holding ``dataset.json``).
        split: ``train``, ``val`` or ``test``.
        with_gt: load semseg and depth; ``None`` follows ``dataset.json`` (a test split
            without GT then yields RGB only).
        info: an already-read ``dataset.json`` (saves re-reading it).
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: str,
        with_gt: bool | None = None,
        info: DatasetInfo | None = None,
    ) -> None:
        self.root = Path(root)
        self.split = split
        self.info = info if info is not None else read_info(self.root)
        self.size = self.info.split_size(split)
        if with_gt is None:
            with_gt = self.info.has_gt(split)
        elif with_gt and not self.info.has_gt(split):
            raise DataFormatError(f"{self.root}: split {split!r} has no ground truth")
        self.with_gt = with_gt

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> Sample:
        if not 0 <= index < self.size:
            raise IndexError(index)
        rgb = read_rgb(find_rgb(self.root, self.split, index, self.info.rgb_extension))
        sample: Sample = {
            "rgb": torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1))),
            "index": torch.tensor(index, dtype=torch.int64),
        }
        if self.with_gt:
            semseg = read_semseg(label_path(self.root, self.split, "semseg", index))
            depth = read_depth(label_path(self.root, self.split, "depth", index))
            for name, arr in (("semseg", semseg), ("depth", depth)):
                if arr.shape != rgb.shape[:2]:
                    raise DataFormatError(
                        f"{self.root / self.split / name / f'{index}.png'}: size "
                        f"{arr.shape[1]}x{arr.shape[0]} differs from its RGB "
                        f"{rgb.shape[1]}x{rgb.shape[0]}"
                    )
            sample["semseg"] = torch.from_numpy(semseg.astype(np.int64))
            sample["depth"] = torch.from_numpy(depth)
        return sample
