"""A split of an on-disk dataset as a ``torch.utils.data.Dataset``.

Decoding (JPEG/PNG -> tensors) happens here, i.e. in DataLoader workers; augmentation
does not (see :mod:`scenemtl.data.transforms`, applied to whole batches on the device).

**Partial labels.** A sample without a label for a task lacks the task's key. In a
MiniScapes root, a task listed in dataset.json's ``"partial_tasks"`` may miss its file
for any sample (human parts only on images with people): the sample then has no label
for it. A task not listed must have every file (``scenemtl data check`` reports a missing
one, and reading it fails). :class:`SampleCollate` batches such samples.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, default_collate

from scenemtl.data.format import DatasetInfo, find_rgb, label_path, read_info, read_rgb
from scenemtl.errors import DataFormatError
from scenemtl.tasks import build_tasks, dataset_task_specs, select_tasks
from scenemtl.tasks.base import Task
from scenemtl.tasks.labels import LABELLED

Sample = dict[str, torch.Tensor]


class SceneDataset(Dataset[Sample]):
    """One split of a MiniScapes-layout dataset.

    Each item is a dict:

    * ``rgb``: uint8 ``[3, H, W]``
    * ``index``: int64 scalar, the sample's file index
    * one ``[H, W]`` (or ``[C, H, W]``) target per task (only with GT), read from
      ``<split>/<task>/{i}.png`` by the task (:meth:`~scenemtl.tasks.base.Task.read_target`):
      ``semseg`` int64 class ids, 255 = ignore; ``depth`` float32 meters, ``0.0`` =
      invalid; ``normals`` float32 ``[3, H, W]`` unit vectors, zero = invalid

    Args:
        root: dataset root (holding ``dataset.json``).
        split: ``train``, ``val`` or ``test``.
        with_gt: load semseg and depth; ``None`` follows ``dataset.json`` (a test split
            without GT then yields RGB only).
        info: an already-read ``dataset.json`` (saves re-reading it).
        tasks: the tasks whose targets to load (default: every task the dataset provides).
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: str,
        with_gt: bool | None = None,
        info: DatasetInfo | None = None,
        tasks: list[Task] | None = None,
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
        if tasks is None:
            tasks = build_tasks(select_tasks(dataset_task_specs(self.info), None))
        self.tasks = list(tasks)

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
            partial = set(getattr(self.info, "partial_tasks", ()) or ())
            for task in self.tasks:
                path = label_path(self.root, self.split, task.name, index)
                if task.name in partial and not path.exists():
                    continue  # declared partial: this sample has no label for the task
                target = task.read_target(path)
                if target.shape[-2:] != rgb.shape[:2]:
                    raise DataFormatError(
                        f"{path}: size {target.shape[-1]}x{target.shape[-2]} differs from its "
                        f"RGB {rgb.shape[1]}x{rgb.shape[0]}"
                    )
                sample[task.name] = torch.from_numpy(target)
        return sample


class SampleCollate:
    """Batches samples that may lack some tasks' labels (the DataLoader's ``collate_fn``).

    Every sample's missing target of ``tasks`` becomes the task's fill value (no label
    at any pixel: 255 for segmentation, 0 for depth and normals), of the shape of the
    sample's image; the batch gets ``batch["labelled"]``: task name -> bool [B], the
    samples that had the label (:data:`scenemtl.tasks.labels.LABELLED`). A task no
    sample of the batch has is filled too (all False). Without ``tasks`` (a split without
    ground truth) this is the default collate. Picklable, for worker processes.

    Args:
        tasks: the run's tasks whose targets the batch must carry.
    """

    def __init__(self, tasks: Sequence[Task] = ()) -> None:
        self.rules = {
            t.name: (float(t.fill_value), t.target_dtype, int(t.target_channels)) for t in tasks
        }

    def __call__(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        if not self.rules:
            return default_collate(samples)
        labelled: dict[str, torch.Tensor] = {}
        filled = []
        for sample in samples:
            sample = dict(sample)
            h, w = sample["rgb"].shape[-2:]
            for name, (fill, dtype, channels) in self.rules.items():
                if name not in sample:
                    shape = (h, w) if not channels else (channels, h, w)
                    sample[name] = torch.full(shape, fill, dtype=dtype)
            filled.append(sample)
        for name in self.rules:
            labelled[name] = torch.tensor([name in s for s in samples], dtype=torch.bool)
        batch = default_collate(filled)
        batch[LABELLED] = labelled
        return batch
