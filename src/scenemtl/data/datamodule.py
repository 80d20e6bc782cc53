"""The LightningDataModule: datasets, loaders, and the on-device batch transform."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader

from scenemtl.argtypes import MAX_WORKERS
from scenemtl.data.dataset import SceneDataset
from scenemtl.data.format import DatasetInfo, read_info
from scenemtl.data.mtan import MTANDataset, MTANInfo, is_mtan_root, read_mtan_info
from scenemtl.data.transforms import (
    BatchAugment,
    check_refused,
    prepare_eval_batch,
    target_rules,
)
from scenemtl.errors import UserError
from scenemtl.tasks import TaskSpecs, build_tasks, dataset_task_specs, select_tasks
from scenemtl.tasks.base import Task

DATA_FORMATS = ("auto", "miniscapes", "mtan")


def open_info(root: str | Path, format: str = "auto", labels: int | None = None) -> DatasetInfo:
    """The description of a dataset root in either layout (see :class:`SceneDataModule`)."""
    if format == "mtan" or (format == "auto" and is_mtan_root(root)):
        return read_mtan_info(root, labels)
    return read_info(root)  # data.labels only chooses among an MTAN root's label sets


MAX_BATCH_SIZE = 4096
"""Largest ``data.batch_size`` / ``val_batch_size``; with the image or crop size, a batch
is also bounded by ``MAX_BATCH_PIXELS`` (checked by ``scenemtl fit``)."""
MAX_BATCH_PIXELS = 1 << 28
"""Largest batch in pixels (batch size x crop or image H x W): 268 M pixels, 3 GiB of
float32 RGB alone; e.g. 64 crops of 2048 x 2048. Bigger batches fail as out of memory."""


class SceneDataModule(L.LightningDataModule):
    """Train/val/test splits of one dataset root.

    Decoding runs in DataLoader workers; geometric augmentation runs on the training
    device after the batch is transferred (:meth:`on_after_batch_transfer`), seeded by
    ``(seed, global_step)`` so a resumed run draws exactly the batches it would have.

    Args:
        root: dataset root holding ``dataset.json``; ``None`` renders (once, cached)
            the default procedural dataset, see ``scenemtl data synth``.
        tasks: the tasks the run learns, e.g. ``[semseg]`` for a single-task baseline
            (default: every task the dataset provides).
        batch_size: training batch size.
        val_batch_size: validation/test batch size.
        num_workers: DataLoader processes (0 = decode in the main process).
        crop_size: training crop ``[h, w]``; ``None`` trains on whole images.
        scale_min, scale_max: random zoom bracket.
        hflip: probability of a horizontal reflection.
        tilt_deg: largest random rotation in degrees.
        wiggle: perspective warp strength in [0, 1].
        seed: seed of the augmentation stream.
        synth_size: image size ``[h, w]`` of the procedural dataset when ``root`` is None.
        train_limit: use only the first N training images (quick experiments, tests).
        format: layout of ``root``: ``miniscapes`` (dataset.json), ``mtan`` (the MTAN
            release's ``.npy`` folders, see :mod:`scenemtl.data.mtan`) or ``auto`` (mtan
            when ``root`` has no dataset.json but a ``train/image/`` or ``val/image/``).
        labels: MTAN Cityscapes label set, 7 or 19 (``null``: 7 if ``label_7/`` exists);
            ignored for MiniScapes roots, whose dataset.json holds their class table.
    """

    def __init__(
        self,
        root: str | None = None,
        tasks: list[str] | None = None,
        batch_size: int = 4,
        val_batch_size: int = 8,
        num_workers: int = 2,
        crop_size: tuple[int, int] | None = (256, 256),
        scale_min: float = 1.0,
        scale_max: float = 1.0,
        hflip: float = 0.5,
        tilt_deg: float = 0.0,
        wiggle: float = 0.0,
        seed: int = 0,
        synth_size: tuple[int, int] = (128, 256),
        train_limit: int | None = None,
        format: str = "auto",
        labels: int | None = None,
    ) -> None:
        super().__init__()
        for name, value in (("batch_size", batch_size), ("val_batch_size", val_batch_size)):
            if not 1 <= value <= MAX_BATCH_SIZE:
                raise UserError(f"data.{name} must be in 1..{MAX_BATCH_SIZE}, got {value}")
        if not 0 <= num_workers <= MAX_WORKERS:
            raise UserError(f"data.num_workers must be in 0..{MAX_WORKERS}, got {num_workers}")
        if train_limit is not None and train_limit < 1:
            raise UserError(f"data.train_limit must be >= 1, got {train_limit}")
        if format not in DATA_FORMATS:
            raise UserError(f"data.format must be one of {', '.join(DATA_FORMATS)}, got {format!r}")
        self.save_hyperparameters()
        self.root = root
        self.format = format
        self.labels = labels
        self.task_names = list(tasks) if tasks is not None else None
        self.batch_size = batch_size
        self.val_batch_size = val_batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.synth_size = tuple(synth_size)
        self.train_limit = train_limit
        self.augment = BatchAugment(
            crop_size=crop_size,
            scale_min=scale_min,
            scale_max=scale_max,
            hflip=hflip,
            tilt_deg=tilt_deg,
            wiggle=wiggle,
        )
        self._info: DatasetInfo | None = None
        self._tasks: list[Task] | None = None
        if root is not None:
            self._info = open_info(root, format, labels)  # fail before training starts
            self._check_crop(self._info)
            self.tasks  # noqa: B018 - builds the tasks: unknown names, refused options

    # ----------------------------------------------------------------------------------

    @property
    def data_root(self) -> Path:
        if self.root is not None:
            return Path(self.root)
        from scenemtl.data.procedural import SynthParams, default_root

        return default_root(SynthParams(size=self.synth_size))

    @property
    def info(self) -> DatasetInfo:
        """``dataset.json``; with ``root: null`` the procedural dataset is rendered first
        (once, cached), since the tasks and class table come from it."""
        if self._info is None:
            self.prepare_data()
            self._info = open_info(self.data_root, self.format, self.labels)
        return self._info

    @property
    def task_specs(self) -> TaskSpecs:
        """The specs of the tasks this run learns (the model's ``tasks``), in order."""
        return select_tasks(dataset_task_specs(self.info), self.task_names)

    @property
    def tasks(self) -> list[Task]:
        """Task objects for reading and augmenting targets (no run options, no state)."""
        if self._tasks is None:
            tasks = build_tasks(self.task_specs)
            check_refused(tasks, self.augment.active_options(), where="data.")
            self._tasks = tasks
            self.augment.targets = target_rules(tasks)
        return self._tasks

    def _check_crop(self, info: DatasetInfo) -> None:
        crop = self.augment.crop_size
        if crop is None:
            return
        h, w = info.image_size
        # Padding is allowed (labels 255, depth invalid) but a crop that is mostly padding
        # at the largest zoom would train on nothing.
        if crop[0] > 2 * h * self.augment.scale_max or crop[1] > 2 * w * self.augment.scale_max:
            raise UserError(
                f"data.crop_size {list(crop)} is more than twice the scaled image "
                f"({h}x{w} x scale_max {self.augment.scale_max}); most of each crop would be "
                "padding"
            )

    def prepare_data(self) -> None:
        if self.root is None:
            from scenemtl.data.procedural import SynthParams, cached_dataset

            cached_dataset(SynthParams(size=self.synth_size))

    def setup(self, stage: str) -> None:
        info = self.info
        self._check_crop(info)
        if not info.stats:
            raise UserError(
                f"{self.data_root}/dataset.json has no statistics: run "
                f"`scenemtl data stats --root {self.data_root}` first"
            )
        self.datasets: dict[str, Any] = {}
        for split in info.splits:
            if isinstance(info, MTANInfo):
                self.datasets[split] = MTANDataset(self.data_root, split, info, self.tasks)
            else:
                self.datasets[split] = SceneDataset(
                    self.data_root, split, info=info, tasks=self.tasks
                )

    def dataset(self, split: str) -> Any:
        if split == "test" and "test" not in self.datasets and isinstance(self.info, MTANInfo):
            # the MTAN release has no test split: its papers report on val, and so do we
            split = "val"
        if split not in self.datasets:
            raise UserError(f"{self.data_root} has no {split!r} split")
        return self.datasets[split]

    def _loader(self, split: str, batch_size: int, shuffle: bool) -> DataLoader:
        ds: Any = self.dataset(split)
        if split == "train" and self.train_limit is not None:
            ds = torch.utils.data.Subset(ds, range(min(self.train_limit, len(ds))))
        return DataLoader(
            ds,
            batch_size=batch_size,
            shuffle=shuffle,
            drop_last=shuffle and len(ds) >= batch_size,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", self.val_batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", self.val_batch_size, shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("test", self.val_batch_size, shuffle=False)

    # ----------------------------------------------------------------------------------

    def on_after_batch_transfer(self, batch: dict[str, Any], dataloader_idx: int) -> dict[str, Any]:
        trainer = self.trainer
        if trainer is not None and trainer.training:
            # One stream per (seed, process, step): a resumed run replays the same draws.
            stream = (self.seed * 65_537 + trainer.global_rank) * 1_000_003 + trainer.global_step
            generator = torch.Generator().manual_seed(stream % (2**63))
            self.augment.train()
            return self.augment(batch, generator=generator)
        return prepare_eval_batch(batch)
