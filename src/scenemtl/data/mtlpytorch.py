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
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from scenemtl.data.format import DatasetInfo, open_image, rgb8
from scenemtl.errors import DataFormatError, UserError

SPLITS = ("train", "val", "test")
STATS_MAX_IMAGES = 512
"""Statistics read at most this many evenly spaced training samples (as the MTAN reader)."""

MAX_LIST_BYTES = 16 << 20
"""Largest split list read (PASCAL's train list is about 60 kB)."""
IMAGE_ID = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
"""An image id of a split list: a file name stem, never a path (``2008_000002``, ``img_5001``)."""

MAX_MAT_BYTES = 64 << 20
"""Largest ``.mat`` file read (PASCAL's part annotations are at most a few MB)."""
MAX_MAT_DECOMPRESSED = 512 << 20
"""Most bytes the compressed elements of one ``.mat`` may inflate to, counted by streaming
them before scipy reads the file: a deflate bomb is refused, not allocated."""
_MAT5_TEXT = b"MATLAB 5.0 MAT-file"
_MI_COMPRESSED = 15


# --------------------------------------------------------------------------------------
# the layouts


@dataclass(frozen=True)
class BenchTask:
    """One task of a release: its spec and how one image's target is read.

    Attributes:
        spec: the task's spec (``{"kind": ...}`` plus what the kind needs).
        read: ``(root, image id, (h, w) of the image) -> target`` ([H,W] or [3,H,W], as
            the kind's batches hold it) or None when the image has no label for the task.
            Raises DataFormatError naming the file.
    """

    spec: dict[str, Any]
    read: Callable[[Path, str, tuple[int, int]], np.ndarray | None]


@dataclass(frozen=True)
class Layout:
    """What differs between the releases (see :mod:`scenemtl.data.nyud`,
    :mod:`scenemtl.data.pascal`).

    Attributes:
        name: ``nyud`` or ``pascal_context`` (also the ``data.format`` that forces it).
        markers: folders whose presence makes a root this release.
        split_list: the text file listing a split's ids.
        image: ``(root, id) -> the image file``.
        tasks: name -> :class:`BenchTask`, in the order runs list them.
        canvas: ``(h, w)`` every sample is padded to, or None when all images have one
            size (then that size, checked on every read).
    """

    name: str
    markers: tuple[str, ...]
    split_list: Callable[[Path, str], Path]
    image: Callable[[Path, str], Path]
    tasks: dict[str, BenchTask]
    canvas: tuple[int, int] | None


def _layouts() -> dict[str, Layout]:
    from scenemtl.data.nyud import NYUD
    from scenemtl.data.pascal import PASCAL_CONTEXT

    return {NYUD.name: NYUD, PASCAL_CONTEXT.name: PASCAL_CONTEXT}


BENCH_FORMATS = ("nyud", "pascal_context")


def bench_layout(root: str | os.PathLike) -> Layout | None:
    """The release a folder holds (all its marker folders exist, no dataset.json), or None."""
    root = Path(root)
    if (root / "dataset.json").exists():
        return None
    for layout in _layouts().values():
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
        return _layouts()[self.layout]

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
        raise DataFormatError(f"{path}: not a readable text list ({_one_line(e)})") from None
    ids = [line.strip() for line in text.splitlines() if line.strip()]
    for n, image_id in enumerate(ids, 1):
        if not IMAGE_ID.match(image_id):
            raise DataFormatError(f"{path}: line {n} {image_id[:40]!r} is not an image id")
    if len(set(ids)) != len(ids):
        seen: set[str] = set()
        dup = next(i for i in ids if i in seen or seen.add(i))  # type: ignore[func-returns-value]
        raise DataFormatError(f"{path}: id {dup!r} listed twice")
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
        wanted = _layouts()[format]
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
        layout=layout.name,
        ids=ids,
    )
    if stats:
        split = "train" if "train" in ids else next(iter(ids))
        info.stats = _cached_stats(root, info, split)
    return info


# --------------------------------------------------------------------------------------
# bounded readers


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def read_rgb_image(path: Path) -> np.ndarray:
    """uint8 [H,W,3] of a JPEG/PNG (pixel count bounded by the image codec)."""
    return rgb8(open_image(path), path)


def read_index_png(path: Path, modes: tuple[str, ...] = ("L", "P")) -> np.ndarray:
    """An 8-bit single-channel PNG (a P image's palette indices) as uint8 [H,W]."""
    image = open_image(path)
    if image.mode not in modes:
        raise DataFormatError(f"{path}: PNG mode {image.mode}, expected {' or '.join(modes)}")
    return np.asarray(image, dtype=np.uint8)


def _check_mat_stream(path: Path, data: bytes) -> None:
    """Walk a MAT v5 file's top-level elements; inflate the compressed ones in bounded
    chunks only to count their size (nothing is kept)."""
    if not data.startswith(_MAT5_TEXT) or len(data) < 128:
        raise DataFormatError(
            f"{path}: not a MATLAB 5 .mat file (v7.3/HDF5 files are not read; save with -v7)"
        )
    order = {b"IM": "<", b"MI": ">"}.get(data[126:128])
    if order is None:
        raise DataFormatError(f"{path}: .mat header has no endian indicator")
    at, inflated = 128, 0
    while at + 8 <= len(data):
        kind, nbytes = np.frombuffer(data, dtype=f"{order}u4", count=2, offset=at)
        body = at + 8
        if int(kind) >> 16:  # small data element: 4 bytes of data inside the tag
            at += 8
            continue
        if body + int(nbytes) > len(data):
            raise DataFormatError(f"{path}: .mat element at byte {at} runs past the file end")
        if int(kind) == _MI_COMPRESSED:
            stream = zlib.decompressobj()
            chunk = data[body : body + int(nbytes)]
            while chunk:
                try:
                    out = stream.decompress(chunk, 1 << 20)
                except zlib.error as e:
                    raise DataFormatError(f"{path}: corrupt compressed .mat data ({e})") from None
                inflated += len(out)
                if inflated > MAX_MAT_DECOMPRESSED:
                    raise DataFormatError(
                        f"{path}: .mat data inflates to more than {MAX_MAT_DECOMPRESSED} bytes"
                    )
                chunk = stream.unconsumed_tail
            at = body + int(nbytes)
        else:
            inflated += int(nbytes)
            at = body + int(nbytes) + (-int(nbytes)) % 8
    if inflated > MAX_MAT_DECOMPRESSED:
        raise DataFormatError(f"{path}: .mat data larger than {MAX_MAT_DECOMPRESSED} bytes")


def read_mat(path: Path, names: tuple[str, ...]) -> dict[str, Any]:
    """The variables ``names`` of a MATLAB 5 ``.mat`` file, read with scipy (no pickle).

    The file size (:data:`MAX_MAT_BYTES`) and what its compressed elements inflate to
    (:data:`MAX_MAT_DECOMPRESSED`) are checked first; a missing variable is an error.
    """
    import scipy.io

    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise DataFormatError(f"{path}: file not found") from None
    if size > MAX_MAT_BYTES:
        raise DataFormatError(f"{path}: {size} bytes, more than {MAX_MAT_BYTES} for a .mat file")
    data = path.read_bytes()
    _check_mat_stream(path, data)
    try:
        found = scipy.io.loadmat(path, variable_names=list(names))
    except Exception as e:  # scipy raises many types on malformed files; one line each
        raise DataFormatError(f"{path}: not a readable .mat file ({_one_line(e)})") from None
    for name in names:
        if name not in found:
            raise DataFormatError(f"{path}: no variable {name!r}")
    return found


def check_plane(path: Path, values: np.ndarray, size: tuple[int, int], what: str) -> np.ndarray:
    """``values`` if it is [H,W] of the image's size (a trailing 1-channel axis dropped)."""
    if values.ndim == 3 and values.shape[-1] == 1:
        values = values[..., 0]
    if values.ndim != 2:
        raise DataFormatError(f"{path}: {what} of shape {values.shape}, expected [H,W]")
    if values.shape != size:
        raise DataFormatError(
            f"{path}: {what} size {values.shape[1]}x{values.shape[0]} differs from its image "
            f"{size[1]}x{size[0]}"
        )
    return values


def binary_from_fraction(path: Path, values: np.ndarray, what: str) -> np.ndarray:
    """int64 {0, 1} from values in [0, 1] (``> 0.5`` is on, the papers' threshold)."""
    values = np.asarray(values, dtype=np.float64)
    if values.size and not (np.isfinite(values).all() and values.min() >= 0 and values.max() <= 1):
        raise DataFormatError(f"{path}: {what} values outside [0, 1]")
    return (values > 0.5).astype(np.int64)


# --------------------------------------------------------------------------------------
# dataset


def read_sample_image(root: Path, info: BenchInfo, image_id: str) -> np.ndarray:
    """uint8 [H,W,3] of one image, unpadded: the release's size, or within its canvas."""
    layout = info.release
    path = layout.image(root, image_id)
    rgb = read_rgb_image(path)
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
            target = np.asarray(target, dtype=torch.empty(0, dtype=task.target_dtype).numpy().dtype)
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
    release = _layouts()[layout]
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
