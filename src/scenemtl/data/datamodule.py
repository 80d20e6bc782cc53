"""The LightningDataModule: datasets, loaders, and the on-device batch transform.

**Several datasets in one run** (``data.datasets``, docs/data.md): each entry is a root
with its own task set; the run learns the union of their tasks (or ``data.tasks`` of it),
each sample carries only its own dataset's labels (partial labels do the rest, see
:class:`~scenemtl.data.dataset.SampleCollate`). Training draws every batch from all of
them in the ratio of their ``ratio`` (Lightning's ``CombinedLoader``, one loader per
dataset with its share of ``batch_size``, ``max_size_cycle``: an epoch ends when the
dataset with the most batches has been seen once, the others cycle); each part is
augmented on the device and the parts are joined into one batch. Validation and test
have one loader per dataset, so the module reports each dataset's metrics and the
combined ones.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import CombinedLoader
from torch.utils.data import DataLoader

from scenemtl.argtypes import MAX_WORKERS
from scenemtl.data.dataset import SampleCollate, SceneDataset
from scenemtl.data.format import DatasetInfo, read_info
from scenemtl.data.mtan import MTANDataset, MTANInfo, is_mtan_root, read_mtan_info
from scenemtl.data.mtlpytorch import (
    BENCH_FORMATS,
    BenchDataset,
    BenchInfo,
    bench_layout,
    read_bench_info,
)
from scenemtl.data.transforms import (
    BatchAugment,
    check_refused,
    prepare_eval_batch,
    target_rules,
)
from scenemtl.errors import UserError
from scenemtl.tasks import TaskSpecs, build_tasks, dataset_task_specs, select_tasks
from scenemtl.tasks.base import Task
from scenemtl.tasks.labels import LABELLED

DATA_FORMATS = ("auto", "miniscapes", "mtan", *BENCH_FORMATS)
DATASET_KEYS = ("name", "root", "ratio", "format", "labels")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")


def open_info(root: str | Path, format: str = "auto", labels: int | None = None) -> DatasetInfo:
    """The description of a dataset root in either layout (see :class:`SceneDataModule`)."""
    if format == "mtan" or (format == "auto" and is_mtan_root(root)):
        return read_mtan_info(root, labels)
    if format in BENCH_FORMATS or (format == "auto" and bench_layout(root)):
        return read_bench_info(root, format)
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
        synth_tasks: the optional layers that procedural dataset renders besides semseg
            and depth (``normals``, ``boundaries``, ``human_parts``; see ``scenemtl data
            synth --tasks``), so a config or study with more tasks needs no ``root``.
        train_limit: use only the first N training images (quick experiments, tests).
        format: layout of ``root``: ``miniscapes`` (dataset.json), ``mtan`` (the MTAN
            release's ``.npy`` folders, see :mod:`scenemtl.data.mtan`), ``nyud`` /
            ``pascal_context`` (Multi-Task-Learning-PyTorch's releases, see
            :mod:`scenemtl.data.mtlpytorch`) or ``auto`` (mtan when ``root`` has no
            dataset.json but a ``train/image/`` or ``val/image/``; nyud with ``gt_sets/``
            and ``images/``; pascal_context with ``ImageSets/`` and ``JPEGImages/``).
        labels: MTAN Cityscapes label set, 7 or 19 (``null``: 7 if ``label_7/`` exists);
            ignored for MiniScapes roots, whose dataset.json holds their class table.
        datasets: several datasets in one run instead of ``root``: a list of
            ``{name, root, ratio, format, labels}`` (``ratio`` default 1, ``format`` and
            ``labels`` as above); see the module docstring. Each name prefixes its
            validation metrics (``val/<name>/<metric>``).
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
        synth_tasks: list[str] | None = None,
        train_limit: int | None = None,
        format: str = "auto",
        labels: int | None = None,
        datasets: list[dict[str, Any]] | None = None,
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
        self.synth_tasks = list(synth_tasks or [])
        if self.synth_tasks:
            from scenemtl.data.procedural.params import OPTIONAL_TASKS

            unknown = [t for t in self.synth_tasks if t not in OPTIONAL_TASKS]
            if unknown:
                raise UserError(
                    f"data.synth_tasks: the generator adds {', '.join(OPTIONAL_TASKS)}; "
                    f"not {', '.join(map(repr, unknown))}"
                )
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
        self.sources: list[Source] = parse_sources(datasets, root, batch_size)
        if self.sources:
            for source in self.sources:
                self._check_crop(source.info)
            if crop_size is None and len({s.info.image_size for s in self.sources}) > 1:
                raise UserError(
                    "data.datasets have images of different sizes: set data.crop_size so "
                    "their batches can be joined"
                )
            self._info = CombinedInfo.of(self.sources)  # type: ignore[assignment]
            self.tasks  # noqa: B018 - builds the tasks: unknown names, refused options
        elif root is not None:
            self._info = open_info(root, format, labels)  # fail before training starts
            self._check_crop(self._info)
            self.tasks  # noqa: B018 - builds the tasks: unknown names, refused options

    # ----------------------------------------------------------------------------------

    @property
    def data_root(self) -> Path:
        if self.root is not None:
            return Path(self.root)
        from scenemtl.data.procedural import default_root

        return default_root(self._synth_params())

    def _synth_params(self) -> Any:
        """The procedural dataset of ``root: null`` (a ``SynthParams``; its module is
        imported only when that dataset is used)."""
        from scenemtl.data.procedural import SynthParams
        from scenemtl.data.procedural.params import BASE_TASKS

        if not self.synth_tasks:
            return SynthParams(size=self.synth_size)  # the default dataset's cache key
        return SynthParams(size=self.synth_size, tasks=(*BASE_TASKS, *self.synth_tasks))

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
            from scenemtl.data.procedural import cached_dataset

            cached_dataset(self._synth_params())

    @property
    def dataset_names(self) -> list[str]:
        """The names of ``data.datasets`` in order ([] for a single root)."""
        return [s.name for s in self.sources]

    def dataset_tasks(self) -> dict[str, list[str]]:
        """Dataset name -> the run's tasks it has labels for ({} for a single root)."""
        learned = [t.name for t in self.tasks]
        return {
            s.name: [n for n in learned if n in dataset_task_specs(s.info)] for s in self.sources
        }

    def setup(self, stage: str) -> None:
        if self.sources:
            self._setup_sources()
            return
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
            elif isinstance(info, BenchInfo):
                self.datasets[split] = BenchDataset(self.data_root, split, info, self.tasks)
            else:
                self.datasets[split] = SceneDataset(
                    self.data_root, split, info=info, tasks=self.tasks
                )

    def _setup_sources(self) -> None:
        self.source_datasets: dict[str, dict[str, Any]] = {}
        for source in self.sources:
            info = source.info
            if not info.stats:
                raise UserError(
                    f"{source.root}/dataset.json has no statistics: run "
                    f"`scenemtl data stats --root {source.root}` first"
                )
            provided = dataset_task_specs(info)
            # each dataset reads its own files with tasks built from its own specs
            own = build_tasks({t.name: provided[t.name] for t in self.tasks if t.name in provided})
            split_sets: dict[str, Any] = {}
            for split in info.splits:
                if isinstance(info, MTANInfo):
                    split_sets[split] = MTANDataset(source.root, split, info, own)
                elif isinstance(info, BenchInfo):
                    split_sets[split] = BenchDataset(source.root, split, info, own)
                else:
                    split_sets[split] = SceneDataset(source.root, split, info=info, tasks=own)
            self.source_datasets[source.name] = split_sets
        first = self.sources[0].name
        self.datasets = self.source_datasets[first]

    def dataset(self, split: str) -> Any:
        releases = (MTANInfo, BenchInfo)
        if split == "test" and "test" not in self.datasets and isinstance(self.info, releases):
            # the MTAN, NYUD and PASCAL releases have no test split: their papers report
            # on val, and so do we
            split = "val"
        if split not in self.datasets:
            raise UserError(f"{self.data_root} has no {split!r} split")
        return self.datasets[split]

    def _loader(self, split: str, batch_size: int, shuffle: bool, ds: Any = None) -> DataLoader:
        ds = self.dataset(split) if ds is None else ds
        if split == "train" and self.train_limit is not None:
            ds = torch.utils.data.Subset(ds, range(min(self.train_limit, len(ds))))
        base = ds.dataset if isinstance(ds, torch.utils.data.Subset) else ds
        has_gt = bool(getattr(base, "with_gt", True))  # a split without GT has no targets
        return DataLoader(
            ds,
            batch_size=batch_size,
            shuffle=shuffle,
            drop_last=shuffle and len(ds) >= batch_size,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
            # missing labels (partial_tasks, another dataset's tasks) become fill + mask
            collate_fn=SampleCollate(self.tasks if has_gt else ()),
        )

    def _source_loaders(
        self, split: str, batch_sizes: list[int], shuffle: bool
    ) -> list[DataLoader]:
        loaders = []
        for source, size in zip(self.sources, batch_sizes, strict=True):
            sets = self.source_datasets[source.name]
            if split not in sets:
                raise UserError(
                    f"data.datasets {source.name!r} ({source.root}) has no {split!r} split"
                )
            loaders.append(self._loader(split, size, shuffle, sets[split]))
        return loaders

    def train_dataloader(self) -> Any:
        if self.sources:
            sizes = [s.batch_share for s in self.sources]
            loaders = self._source_loaders("train", sizes, shuffle=True)
            return CombinedLoader(
                {s.name: loader for s, loader in zip(self.sources, loaders, strict=True)},
                mode="max_size_cycle",
            )
        return self._loader("train", self.batch_size, shuffle=True)

    def val_dataloader(self) -> Any:
        if self.sources:  # one loader per dataset: the module scores each on its own
            return self._source_loaders("val", [self.val_batch_size] * len(self.sources), False)
        return self._loader("val", self.val_batch_size, shuffle=False)

    def test_dataloader(self) -> Any:
        if self.sources:
            return self._source_loaders("test", [self.val_batch_size] * len(self.sources), False)
        return self._loader("test", self.val_batch_size, shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("test", self.val_batch_size, shuffle=False)

    # ----------------------------------------------------------------------------------

    def on_after_batch_transfer(self, batch: dict[str, Any], dataloader_idx: int) -> dict[str, Any]:
        trainer = self.trainer
        if trainer is not None and trainer.training:
            # One stream per (seed, process, step): a resumed run replays the same draws.
            stream = (self.seed * 65_537 + trainer.global_rank) * 1_000_003 + trainer.global_step
            self.augment.train()
            if self.sources and set(batch) == set(self.dataset_names):
                return self._join(batch, stream)
            generator = torch.Generator().manual_seed(stream % (2**63))
            return self.augment(batch, generator=generator)
        return prepare_eval_batch(batch)

    def _join(self, parts: dict[str, Any], stream: int) -> dict[str, Any]:
        """The datasets' parts of a training batch, each augmented (its own stream), as
        one batch; ``"dataset"`` [B] holds each sample's index in ``data.datasets``."""
        augmented = []
        for k, source in enumerate(self.sources):
            generator = torch.Generator().manual_seed((stream * 31 + k) % (2**63))
            part = self.augment(parts[source.name], generator=generator)
            part["dataset"] = torch.full_like(part["index"], k)
            augmented.append(part)
        joined: dict[str, Any] = {}
        for key, value in augmented[0].items():
            if key == LABELLED:
                joined[key] = {name: torch.cat([p[key][name] for p in augmented]) for name in value}
            elif isinstance(value, torch.Tensor):
                joined[key] = torch.cat([p[key] for p in augmented])
        return joined


@dataclass
class Source:
    """One entry of ``data.datasets``: its name, root, ratio and description."""

    name: str
    root: str
    ratio: float
    format: str
    labels: int | None
    info: Any
    batch_share: int = 0
    """Samples of each training batch drawn from this dataset."""


def parse_sources(
    datasets: list[dict[str, Any]] | None, root: str | None, batch_size: int
) -> list[Source]:
    """``data.datasets`` checked, their descriptions read, each given its share of the
    training batch (largest remainders of ``batch_size * ratio / sum(ratio)``, at least
    one sample each). [] when the run has a single root.

    Raises:
        UserError: a malformed entry, a repeated name, both ``root`` and ``datasets``, a
            batch too small for one sample of each dataset.
    """
    if datasets is None:
        return []
    if root is not None:
        raise UserError("set either data.root or data.datasets, not both")
    if not isinstance(datasets, list) or not datasets:
        raise UserError("data.datasets must be a non-empty list of {name, root, ratio}")
    sources = []
    for i, entry in enumerate(datasets):
        where = f"data.datasets[{i}]"
        if not isinstance(entry, dict):
            raise UserError(f"{where} must be a mapping with name, root and ratio")
        unknown = sorted(set(entry) - set(DATASET_KEYS))
        if unknown:
            raise UserError(f"{where}: unknown key {unknown[0]!r}; keys: {', '.join(DATASET_KEYS)}")
        name, path = entry.get("name"), entry.get("root")
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise UserError(f"{where}.name must be letters, digits, _ or - (got {name!r})")
        if not isinstance(path, str) or not path:
            raise UserError(f"{where}.root must be a dataset folder, got {path!r}")
        ratio = entry.get("ratio", 1)
        if (
            isinstance(ratio, bool)
            or not isinstance(ratio, (int, float))
            or not (math.isfinite(ratio) and ratio > 0)
        ):
            raise UserError(f"{where}.ratio must be a number > 0, got {ratio!r}")
        fmt = entry.get("format", "auto")
        if fmt not in DATA_FORMATS:
            raise UserError(f"{where}.format must be one of {', '.join(DATA_FORMATS)}, got {fmt!r}")
        labels = entry.get("labels")
        info = open_info(path, fmt, labels)
        sources.append(Source(name, path, float(ratio), fmt, labels, info))
    names = [s.name for s in sources]
    if len(set(names)) != len(names):
        raise UserError(f"data.datasets names a dataset twice: {names}")
    if batch_size < len(sources):
        raise UserError(
            f"data.batch_size {batch_size} is smaller than the number of data.datasets "
            f"({len(sources)}): each batch holds at least one sample of each"
        )
    total = sum(s.ratio for s in sources)
    exact = [batch_size * s.ratio / total for s in sources]
    shares = [max(1, math.floor(x)) for x in exact]
    # largest remainders get the samples left (or give back what the minimum of 1 took)
    order = sorted(range(len(sources)), key=lambda k: exact[k] - math.floor(exact[k]), reverse=True)
    while sum(shares) < batch_size:
        k = order.pop(0) if order else 0
        shares[k] += 1
    while sum(shares) > batch_size:
        k = max(
            (k for k in range(len(shares)) if shares[k] > 1), key=lambda k: shares[k] - exact[k]
        )
        shares[k] -= 1
    for source, share in zip(sources, shares, strict=True):
        source.batch_share = share
    return sources


@dataclass
class CombinedInfo:
    """What a run reads of its data's description, for several datasets: the union of
    their tasks (in order of first appearance; a task two datasets share must be of the
    same kind, and a segmentation task must have the same class table), their
    statistics (each entry from the first dataset that has it: the tasks' normalization
    comes from there), the first's image size and splits."""

    name: str
    image_size: tuple[int, int]
    splits: dict[str, dict[str, Any]]
    specs: dict[str, dict[str, Any]]
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def task_specs(self) -> dict[str, dict[str, Any]]:
        return {k: dict(v) for k, v in self.specs.items()}

    @classmethod
    def of(cls, sources: list[Source]) -> CombinedInfo:
        specs: dict[str, dict[str, Any]] = {}
        owner: dict[str, str] = {}
        stats: dict[str, Any] = {}
        for source in sources:
            for task, spec in dataset_task_specs(source.info).items():
                if task not in specs:
                    specs[task], owner[task] = spec, source.name
                    continue
                first = specs[task]
                if spec.get("kind") != first.get("kind") or spec.get("classes") != first.get(
                    "classes"
                ):
                    raise UserError(
                        f"data.datasets {owner[task]!r} and {source.name!r} both have task "
                        f"{task!r} but of another kind or class table; rename one"
                    )
            for key, value in (source.info.stats or {}).items():
                stats.setdefault(key, value)
        first = sources[0].info
        return cls(
            name="+".join(s.name for s in sources),
            image_size=tuple(first.image_size),
            splits=dict(first.splits),
            specs=specs,
            stats=stats if all(s.info.stats for s in sources) else {},
        )
