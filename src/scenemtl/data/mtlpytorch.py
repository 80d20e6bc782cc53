"""The NYUD-v2 and PASCAL-Context releases of Multi-Task-Learning-PyTorch, read in place.

The architecture papers (PAD-Net, MTI-Net, ATRC, InvPT, TaskPrompter) train and test on
the NYUD-v2 (``NYUD_MT``) and PASCAL-Context (``PASCAL_MT``) folders that
Vandenhende et al. released with Multi-Task-Learning-PyTorch; ATRC and InvPT reuse them.
Each is a folder of per-image files named by an image id, with split lists of ids. The
layouts and how each file becomes a target are in :mod:`scenemtl.data.nyud` and
:mod:`scenemtl.data.pascal`; this module is what both share: the :class:`BenchInfo` a
root is described by, the dataset that yields samples, the bounded readers of split lists
and ``.mat`` files, ``data check`` and the statistics (computed in memory, like the MTAN
layout's: scenemtl writes nothing into a release).

A sample is what :class:`~scenemtl.data.dataset.SceneDataset` yields: ``rgb`` uint8
``[3,H,W]``, ``index`` (the position in the split list), one target per task, and no key
for a task the image has no label of (PASCAL's human parts on an image without a person
with parts). A release whose images differ in size (PASCAL) is padded to a fixed canvas
(bottom and right): rgb with 0, each target with its task's ``fill_value`` ("no label"),
so samples batch and the padding never counts in a loss or metric.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from scenemtl.data.format import DatasetInfo, open_image, read_rgb
from scenemtl.data.mtan import one_line_of
from scenemtl.data.mtlfiles import Layout
from scenemtl.data.nyud import NYUD
from scenemtl.data.pascal import PASCAL_CONTEXT
from scenemtl.errors import DataFormatError, UserError

SPLITS = ("train", "val", "test")
STATS_MAX_IMAGES = 512
"""Statistics read at most this many evenly spaced training samples (as the MTAN reader)."""

MAX_LIST_BYTES = 16 << 20
"""Largest split list read (PASCAL's train list is about 60 kB)."""
IMAGE_ID = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
"""An image id of a split list: a file name stem, never a path (``2008_000002``, ``img_5001``)."""


# --------------------------------------------------------------------------------------
# the layouts


LAYOUTS: dict[str, Layout] = {NYUD.name: NYUD, PASCAL_CONTEXT.name: PASCAL_CONTEXT}
"""The releases by their ``data.format`` name."""


BENCH_FORMATS = tuple(LAYOUTS)


def bench_layout(root: str | os.PathLike) -> Layout | None:
    """The release a folder holds (all its marker folders exist, no dataset.json), or None."""
    root = Path(root)
    if (root / "dataset.json").exists():
        return None
    for layout in LAYOUTS.values():
        if all((root / m).is_dir() for m in layout.markers):
            return layout
    return None


@dataclass
class BenchInfo(DatasetInfo):
    """A release root as a :class:`DatasetInfo`: its layout, and each split's image ids."""

    layout: str = "nyud"
    ids: dict[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def release(self) -> Layout:
        return LAYOUTS[self.layout]

    @property
    def task_specs(self) -> dict[str, dict[str, Any]]:
        """Every task the release provides, in order (copies)."""
        return {name: dict(task.spec) for name, task in self.release.tasks.items()}


def read_split_list(path: Path) -> tuple[str, ...]:
    """The ids of a split list (one per line, blank lines skipped), checked."""
    try:
        size = path.stat().st_size
        if size > MAX_LIST_BYTES:
            raise DataFormatError(f"{path}: {size} bytes, more than {MAX_LIST_BYTES}")
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise DataFormatError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DataFormatError(f"{path}: not a readable text list ({one_line_of(e)})") from None
    ids = [line.strip() for line in text.splitlines() if line.strip()]
    for n, image_id in enumerate(ids, 1):
        if not IMAGE_ID.match(image_id):
            raise DataFormatError(f"{path}: line {n} {image_id[:40]!r} is not an image id")
    twice = [image_id for image_id, n in Counter(ids).items() if n > 1]
    if twice:
        raise DataFormatError(f"{path}: id {twice[0]!r} listed more than once")
    return tuple(ids)


def read_bench_info(root: str | os.PathLike, format: str = "auto", stats: bool = True) -> BenchInfo:
    """Describe a release root (and compute its statistics, in memory, cached).

    Args:
        root: the folder holding the release (``NYUD_MT/``, ``PASCAL_MT/``).
        format: ``auto`` (detect), ``nyud`` or ``pascal_context`` (insist on that layout).
        stats: compute the statistics (``data check`` reads every file itself instead).

    Raises:
        DataFormatError: one line naming what is missing or malformed.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataFormatError(f"dataset root {root} does not exist or is not a directory")
    layout = bench_layout(root)
    if format != "auto":
        wanted = LAYOUTS[format]
        if layout is not wanted:
            missing = [m for m in wanted.markers if not (root / m).is_dir()]
            raise DataFormatError(
                f"{root}: not a {format} release (no {', '.join(m + '/' for m in missing)})"
                if missing
                else f"{root}: has a dataset.json; not a {format} release"
            )
    if layout is None:
        raise DataFormatError(f"{root}: neither a NYUD-v2 nor a PASCAL-Context release")
    ids = {
        split: read_split_list(layout.split_list(root, split))
        for split in SPLITS
        if layout.split_list(root, split).exists()
    }
    ids = {split: v for split, v in ids.items() if v}
    if not ids:
        raise DataFormatError(f"{layout.split_list(root, 'train')}: no split list with images")
    if layout.canvas is not None:
        size = layout.canvas
    else:
        first = next(iter(ids.values()))[0]
        image = open_image(layout.image(root, first))
        size = (image.height, image.width)
    info = BenchInfo(
        name=layout.name,
        image_size=size,
        splits={split: {"size": len(v), "gt": True} for split, v in ids.items()},
        rgb_extension=".png",
        classes=layout.tasks["semseg"].spec["classes"],
        source={"layout": layout.name, "root": str(root)},
        partial_tasks=list(layout.partial_tasks),
        layout=layout.name,
        ids=ids,
    )
    if stats:
        split = "train" if "train" in ids else next(iter(ids))
        info.stats = _cached_stats(root, info, split)
    return info


# --------------------------------------------------------------------------------------
# dataset


def read_sample_image(root: Path, info: BenchInfo, image_id: str) -> np.ndarray:
    """uint8 [H,W,3] of one image, unpadded: the release's size, or within its canvas."""
    layout = info.release
    path = layout.image(root, image_id)
    rgb = read_rgb(path)
    h, w = rgb.shape[:2]
    ch, cw = info.image_size
    if layout.canvas is None and (h, w) != (ch, cw):
        raise DataFormatError(f"{path}: size {w}x{h}, the release's is {cw}x{ch}")
    if h > ch or w > cw:
        raise DataFormatError(f"{path}: size {w}x{h} exceeds the {cw}x{ch} canvas")
    return rgb


def _pad(array: np.ndarray, canvas: tuple[int, int], fill: float) -> np.ndarray:
    h, w = array.shape[-2:]
    if (h, w) == canvas:
        return array
    out = np.full((*array.shape[:-2], *canvas), fill, dtype=array.dtype)
    out[..., :h, :w] = array
    return out


class BenchDataset(Dataset[dict[str, torch.Tensor]]):
    """One split of a release; items as the module docstring says.

    Args:
        root: the release root.
        split: ``train``, ``val`` (or ``test`` if the release lists one).
        info: its :class:`BenchInfo`.
        tasks: task objects of the tasks to load (their names pick the readers).
    """

    def __init__(self, root: str | os.PathLike, split: str, info: BenchInfo, tasks: list) -> None:
        self.root = Path(root)
        self.split = split
        self.info = info
        self.ids = info.ids[split]
        self.size = len(self.ids)
        self.with_gt = True
        self.tasks = list(tasks)
        unknown = [t.name for t in self.tasks if t.name not in info.release.tasks]
        if unknown:
            raise UserError(f"{self.root}: the {info.layout} release has no task {unknown[0]!r}")

    def __len__(self) -> int:
        return self.size

    def image(self, index: int) -> np.ndarray:
        """uint8 [H,W,3] of sample ``index``, unpadded (its size checked)."""
        return read_sample_image(self.root, self.info, self.ids[index])

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if not 0 <= index < self.size:
            raise IndexError(index)
        rgb = self.image(index)
        canvas = tuple(self.info.image_size)
        sample = {
            "rgb": torch.from_numpy(_pad(np.ascontiguousarray(rgb.transpose(2, 0, 1)), canvas, 0)),
            "index": torch.tensor(index, dtype=torch.int64),
        }
        release = self.info.release
        for task in self.tasks:
            target = release.tasks[task.name].read(self.root, self.ids[index], rgb.shape[:2])
            if target is None:  # not labelled: the key is left out (see the module doc)
                continue
            dtype = torch.empty((), dtype=task.target_dtype).numpy().dtype  # as batches hold it
            target = np.asarray(target, dtype=dtype)
            sample[task.name] = torch.from_numpy(_pad(target, canvas, task.fill_value))
        return sample


# --------------------------------------------------------------------------------------
# statistics (in memory, like the MTAN layout's)


def _signature(root: Path, layout: Layout) -> tuple[Any, ...]:
    out = []
    for split in SPLITS:
        try:
            st = layout.split_list(root, split).stat()
            out.append((split, st.st_mtime_ns, st.st_size))
        except OSError:
            out.append((split, None, None))
    return tuple(out)


def _cached_stats(root: Path, info: BenchInfo, split: str) -> dict[str, Any]:
    key = (info.layout, tuple(info.image_size), split, info.ids[split])
    return _stats(root.resolve(), key, _signature(root, info.release))


@cache
def _stats(root: Path, key: tuple[Any, ...], signature: Any) -> dict[str, Any]:
    """Each task's statistics (:meth:`Task.statistics`) over at most
    :data:`STATS_MAX_IMAGES` evenly spaced samples of ``ids``: the depth task's entries
    at the top level (where the depth task reads them), every task's under its name."""
    from scenemtl.tasks import build_tasks

    del signature  # part of the cache key only
    layout, image_size, split, ids = key
    release = LAYOUTS[layout]
    info = BenchInfo(name=layout, image_size=image_size, splits={}, layout=layout)
    tasks = [
        t
        for t in build_tasks({n: dict(t.spec) for n, t in release.tasks.items()})
        if t.statistics() is not None
    ]
    picks = np.unique(np.linspace(0, len(ids) - 1, min(len(ids), STATS_MAX_IMAGES)).round())
    totals = {t.name: t.statistics() for t in tasks}
    labelled = dict.fromkeys(totals, 0)
    for i in picks.astype(int):
        size = read_sample_image(root, info, ids[i]).shape[:2]
        for task in tasks:
            target = release.tasks[task.name].read(root, ids[i], size)
            if target is not None:
                totals[task.name].add(target)
                labelled[task.name] += 1
    stats: dict[str, Any] = {"split": split, "num_images": len(picks)}
    for name, total in totals.items():
        if not labelled[name]:
            continue
        result = total.result(f"{root}: task {name!r}")
        if release.tasks[name].spec["kind"] == "depth":
            stats.update(result)
        stats[name] = {"labelled_images": labelled[name], **result}
    return stats


def format_bench_stats(info: BenchInfo) -> str:
    """``scenemtl data stats``' text for a release: per task, its statistics."""
    stats = info.stats
    lines = [f"{info.layout}: {stats['num_images']} {stats['split']} images sampled"]
    for name, task in info.release.tasks.items():
        entry = stats.get(name)
        if not isinstance(entry, dict):
            continue
        lines.append(f"  {name} ({entry['labelled_images']} labelled images)")
        names = [c["name"] for c in task.spec.get("classes", [])]
        for full_key, value in entry.items():
            key = full_key.removeprefix(f"{name}_")
            if key == "class_pixel_frequency":
                for cls, f in zip(names, value, strict=True):
                    lines.append(f"    {cls:22s} {100 * f:6.2f}%")
            elif isinstance(value, dict) and {"mean", "std"} <= set(value):
                lines.append(f"    {key:22s} mean {value['mean']:.4g} std {value['std']:.4g}")
            elif isinstance(value, float):
                lines.append(f"    {key:22s} {value:.4g}")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------
# integrity (``scenemtl data check``)


def _check_sample(root: Path, info: BenchInfo, split: str, index: int) -> list[str]:
    dataset = BenchDataset(root, split, info, [])
    try:
        size = dataset.image(index).shape[:2]
    except DataFormatError as e:
        return [str(e)]
    problems = []
    for task in info.release.tasks.values():
        try:
            task.read(root, info.ids[split][index], size)
        except DataFormatError as e:
            problems.append(str(e))
    return problems


def check_bench(root: str | os.PathLike, workers: int | None = None) -> list[str]:
    """Every problem of a release root (every file every task reads), one line each."""
    root = Path(root)
    layout = bench_layout(root)
    try:
        info = read_bench_info(root, layout.name if layout else "auto", stats=False)
    except DataFormatError as e:
        return [str(e)]
    jobs = [(split, i) for split in info.ids for i in range(len(info.ids[split]))]
    problems: list[str] = []
    with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
        for found in pool.map(lambda job: _check_sample(root, info, *job), jobs):
            problems += found
    return problems
