"""The MTAN-release layout: the preprocessed Cityscapes and NYUv2 of the multi-task papers.

MTAN (Liu et al. 2019) released Cityscapes (128x256 and 256x512) and NYUv2 (288x384) as
one ``.npy`` file per sample and modality; Nash-MTL, CAGrad, FAMO, Aligned-MTL and
others train and test on exactly these files. scenemtl reads them in place::

    ROOT/{train,val}/image/{i}.npy       float [H,W,3] in 0..1 (channel-first [3,H,W] and
                                         uint8 0..255 are accepted too)
    ROOT/{train,val}/label_7/{i}.npy     Cityscapes, 7 categories  } -1 = not labelled
    ROOT/{train,val}/label_19/{i}.npy    Cityscapes, 19 classes    } (the release also has
    ROOT/{train,val}/label/{i}.npy       NYUv2, 13 classes         }  label_2: not read)
    ROOT/{train,val}/depth/{i}.npy       [H,W,1] or [H,W]; 0 = invalid. Cityscapes:
                                         disparity (see below), NYUv2: meters
    ROOT/{train,val}/normal/{i}.npy      NYUv2 only: [H,W,3] unit normals, 0 = invalid
    ROOT/mtan.json                       optional, written by ``scenemtl data cityscapes
                                         --layout mtan``: dataset name and depth units

``i`` runs 0..N-1. The release has no test split: the papers report on ``val``, and so
does ``scenemtl test`` on such a root (see :meth:`SceneDataModule.dataset`).

In memory a sample is what :class:`~scenemtl.data.dataset.SceneDataset` yields: ``rgb``
uint8 ``[3,H,W]`` (the release's 0..1 floats times 255, rounded: at most 0.5/255 off),
``semseg`` int64 with -1 mapped to 255, ``depth`` float32 in the data's units with
non-positive and non-finite values mapped to 0 (invalid), ``normals`` float32
``[3,H,W]`` renormalized to unit length, zero vectors where invalid.

Depth units. The release's Cityscapes "depth" is the dataset's disparity map, not
meters: its author states the raw disparity PNGs were used without further processing
(lorenmt/mtan issues 15 and 25), and its largest value, 0.4922, is the largest raw PNG
value 32257 divided by 65536. So a release value ``v`` is ``p / 65536`` for the 16-bit
PNG value ``p``; disparity in pixels of the 2048-wide original is
``(p - 1) / 256 = 256 v - 1/256`` and depth is ``baseline * fx / that`` (camera json of
each image; about 0.209 m and 2262 px), which the release does not provide per sample
(its file order is not documented). The depth task learns and reports in the data's own
units (``depth_mae`` is the papers' "Abs Err", ``depth_absrel`` their "Rel Err"), so
numbers compare with the papers' tables.
"""

from __future__ import annotations

import json
import math
import os
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch
from torch.utils.data import Dataset

from scenemtl.codecs.classes import cityscapes_class_table
from scenemtl.data.format import IGNORE_INDEX, METERS16, DatasetInfo, read_json_file
from scenemtl.errors import DataFormatError, UserError
from scenemtl.tasks.depth import DepthStatistics
from scenemtl.tasks.segmentation import ClassFrequency

LAYOUT = "mtan"
SIDECAR = "mtan.json"
MTAN_SPLITS = ("train", "val")
NPY_NAME = re.compile(r"^(0|[1-9][0-9]*)\.npy$")
CITYSCAPES_LABELS = (7, 19)

DEPTH_UNITS = ("disparity", "disparity_px", "meters")
"""``disparity``: the release's Cityscapes values (raw PNG / 65536); ``disparity_px``:
pixels of the 2048-wide original, ``(p - 1) / 256`` (our converter); ``meters``."""

STATS_MAX_IMAGES = 512
"""Normalization statistics read at most this many evenly spaced training samples."""

NYUV2_13_CLASSES = (
    "bed", "books", "ceiling", "chair", "floor", "furniture", "objects",
    "picture", "sofa", "table", "tv", "wall", "window",
)  # fmt: skip
"""NYUv2's 13-class set (Couprie et al. 2013), in the order of its label ids 1..13 (the
release stores them as 0..12): the ``class13`` mapping of ankurhanda/nyuv2-meta-data,
which the MTAN README names as the source of its labels."""

# Colours of the 13 NYUv2 classes: scenemtl's choice (the dataset defines none).
_NYUV2_COLORS = (
    (0, 0, 255), (232, 88, 47), (0, 217, 0), (148, 0, 240), (222, 241, 23),
    (255, 205, 205), (0, 223, 228), (106, 135, 204), (116, 28, 41), (240, 35, 235),
    (0, 166, 156), (249, 139, 0), (225, 228, 194),
)  # fmt: skip


# --------------------------------------------------------------------------------------
# class tables


@cache
def cityscapes_categories() -> tuple[tuple[str, tuple[int, int, int]], ...]:
    """The 7 Cityscapes categories (categoryId 1..7 -> 0..6) from cityscapesscripts.

    Names are the label table's ``category``; the colour of a category is that of its
    first class with a trainId (road, building, pole, vegetation, sky, person, car).
    """
    from cityscapesscripts.helpers.labels import labels

    out = []
    for cat_id in range(1, 8):
        members = [lab for lab in labels if lab.categoryId == cat_id]
        trained = [lab for lab in members if 0 <= lab.trainId < IGNORE_INDEX]
        if not members or not trained:
            raise RuntimeError(f"cityscapesscripts has no trained class in category {cat_id}")
        out.append((members[0].category, tuple(int(c) for c in trained[0].color)))
    return tuple(out)


def cityscapes_category_table() -> list[dict[str, Any]]:
    """The 7-category class table as dataset.json holds class tables."""
    return [
        {"train_id": i, "name": name, "color": list(color)}
        for i, (name, color) in enumerate(cityscapes_categories())
    ]


def label_id_to_category() -> np.ndarray:
    """256-entry lookup: Cityscapes labelId -> category 0..6 (void and unknown ids: 255).

    Every class of a category counts, also those the 19-class protocol ignores
    (parking, rail track, guard rail, bridge, tunnel, polegroup, caravan, trailer);
    the void category (unlabeled, ego vehicle, rectification border, out of roi, static,
    dynamic, ground) is ignored.
    """
    from cityscapesscripts.helpers.labels import labels

    lut = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    for lab in labels:
        if 0 <= lab.id < 256 and 1 <= lab.categoryId <= 7:
            lut[lab.id] = lab.categoryId - 1
    return lut


def nyuv2_class_table() -> list[dict[str, Any]]:
    return [
        {"train_id": i, "name": name, "color": list(color)}
        for i, (name, color) in enumerate(zip(NYUV2_13_CLASSES, _NYUV2_COLORS, strict=True))
    ]


# --------------------------------------------------------------------------------------
# layout


def is_mtan_root(root: str | os.PathLike) -> bool:
    """A folder in the MTAN layout: no dataset.json, and ``train/image`` or ``val/image``."""
    root = Path(root)
    if (root / "dataset.json").exists():
        return False
    return any((root / split / "image").is_dir() for split in MTAN_SPLITS)


def _npy_count(folder: Path) -> int:
    """Samples in a folder of ``{i}.npy``: N, checked to be exactly 0..N-1."""
    try:
        names = os.listdir(folder)
    except (FileNotFoundError, NotADirectoryError):
        raise DataFormatError(f"{folder}: missing directory") from None
    indices = sorted(int(m.group(1)) for n in names if (m := NPY_NAME.match(n)))
    if indices != list(range(len(indices))):
        missing = sorted(set(range(len(indices))) - set(indices))
        raise DataFormatError(
            f"{folder}: files are not 0.npy..{len(indices) - 1}.npy (missing {missing[0]}.npy)"
        )
    return len(indices)


def _read_sidecar(root: Path) -> dict[str, Any]:
    path = root / SIDECAR
    if not path.exists():
        return {}
    data = read_json_file(path)
    if not isinstance(data, dict):
        raise DataFormatError(f"{path}: top level is not an object")
    units = data.get("depth_units", "disparity")
    if units not in DEPTH_UNITS:
        raise DataFormatError(f"{path}: depth_units {units!r} not one of {DEPTH_UNITS}")
    return data


@dataclass
class MTANInfo(DatasetInfo):
    """What :func:`read_mtan_info` found: a :class:`DatasetInfo` plus the MTAN facts.

    ``task_specs`` are the tasks the root provides (``semseg``, ``depth`` and, for NYUv2,
    ``normals``); ``folders`` maps a task name to its folder in a split.
    """

    dataset: str = "cityscapes"
    depth_units: str = "disparity"
    folders: dict[str, str] = field(default_factory=dict)
    layout: str = LAYOUT

    @property
    def task_specs(self) -> dict[str, dict[str, Any]]:
        """The tasks the root provides (:func:`mtan_task_specs`)."""
        return mtan_task_specs(self)


def _choose_labels(root: Path, labels: int | None) -> tuple[str, str, list[dict[str, Any]]]:
    """(dataset name, label folder, class table) of an MTAN root."""
    split = next(s for s in MTAN_SPLITS if (root / s / "image").is_dir())
    present = {p.name for p in (root / split).iterdir() if p.is_dir()}
    if "label" in present:
        if labels not in (None, 13):
            raise UserError(
                f"{root} is NYUv2 (13 classes in label/): data.labels must be null or 13, "
                f"got {labels}"
            )
        return "nyuv2", "label", nyuv2_class_table()
    found = sorted(int(n[6:]) for n in present if re.fullmatch(r"label_(7|19)", n))
    if not found:
        raise DataFormatError(
            f"{root / split}: no label/, label_7/ or label_19/ folder; not an MTAN-layout root"
        )
    if labels is None:
        labels = 7 if 7 in found else found[0]
    if labels not in CITYSCAPES_LABELS:
        raise UserError(f"data.labels must be 7 or 19 for Cityscapes, got {labels}")
    if labels not in found:
        raise UserError(f"{root / split}: no label_{labels}/ folder (found label_{found})")
    table = cityscapes_category_table() if labels == 7 else cityscapes_class_table()
    return "cityscapes", f"label_{labels}", table


def read_mtan_info(root: str | os.PathLike, labels: int | None = None) -> MTANInfo:
    """Describe an MTAN-layout root (and compute its normalization statistics).

    Args:
        root: the folder holding ``train/`` and ``val/``.
        labels: Cityscapes label set, 7 or 19 (``None``: 7 when ``label_7/`` exists);
            NYUv2 has only its 13 classes.

    Raises:
        DataFormatError / UserError: one line naming what is missing or malformed.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataFormatError(f"dataset root {root} does not exist or is not a directory")
    if not is_mtan_root(root):
        raise DataFormatError(f"{root}: no train/image/ or val/image/: not an MTAN-layout root")
    sidecar = _read_sidecar(root)
    dataset, label_folder, classes = _choose_labels(root, labels)
    folders = {
        name: task.folder or label_folder
        for name, task in MTAN_TASKS.items()
        if dataset in task.datasets
    }
    units = sidecar.get("depth_units", "meters" if dataset == "nyuv2" else "disparity")
    splits: dict[str, dict[str, Any]] = {}
    for split in MTAN_SPLITS:
        if not (root / split).is_dir():
            continue
        n = _npy_count(root / split / "image")
        for folder in folders.values():
            m = _npy_count(root / split / folder)
            if m != n:
                raise DataFormatError(
                    f"{root / split / folder}: {m} files, but {root / split / 'image'} has {n}"
                )
        splits[split] = {"size": n, "gt": True}
    if "train" not in splits and "val" not in splits:
        raise DataFormatError(f"{root}: neither train/ nor val/ holds samples")
    first = next(s for s in MTAN_SPLITS if splits.get(s, {}).get("size"))
    image_size = read_image(root / first / "image" / "0.npy").shape[:2]
    stats, depth_range = _cached_stats(root, tuple(sorted(folders.items())), len(classes))
    info = MTANInfo(
        name=str(sidecar.get("name", dataset)),
        image_size=(int(image_size[0]), int(image_size[1])),
        splits=splits,
        depth_encoding=METERS16,
        depth_range_m=depth_range,
        rgb_extension=".png",
        classes=classes,
        stats=stats,
        source={"layout": LAYOUT, "root": str(root), "depth_units": units},
        dataset=dataset,
        depth_units=units,
        folders=folders,
    )
    return info


def mtan_task_specs(info: MTANInfo) -> dict[str, dict[str, Any]]:
    """The specs of the tasks the root has (:data:`MTAN_TASKS`), in order."""
    return {name: MTAN_TASKS[name].spec(info) for name in info.folders}


# --------------------------------------------------------------------------------------
# arrays


MAX_NPY_ELEMENTS = 3 * 4096 * 8192
"""Most values one ``.npy`` of the MTAN layout may hold: an RGB image of 4096x8192, four
times Cityscapes' full resolution in each direction (the release's largest is 3x256x512).
Reading converts to float64 at most, so one file costs at most 8 x this many bytes."""
MAX_NPY_DIMS = 3
"""Images and normals are [H,W,3] or [3,H,W]; labels and depth [H,W] or [H,W,1]."""
_NPY_HEADER_MAX = 10_000
"""Longest header accepted (numpy's own default for untrusted files)."""


_AST_LOCK = threading.Lock()


def read_npy_header(f: BinaryIO, path: Path) -> tuple[tuple[int, ...], np.dtype, bool]:
    """(shape, dtype, fortran_order) of the ``.npy`` file open at its start, checked.

    Only the header is read (no pickle, at most :data:`_NPY_HEADER_MAX` bytes of it): the
    dtype must be numeric (float, int, uint, bool), the shape at most :data:`MAX_NPY_DIMS`
    dimensions and :data:`MAX_NPY_ELEMENTS` values, and the data it declares no more than
    the bytes that follow the header, so nothing is allocated that the file does not back.

    Raises:
        DataFormatError: one line naming the file and what is wrong.
    """
    fmt = np.lib.format
    try:
        version = fmt.read_magic(f)
        # numpy parses the header with ast.literal_eval, which CPython 3.11 can fail
        # ("SystemError: AST constructor recursion depth mismatch") when threads (data
        # check's pool) run it at once: one header at a time
        with _AST_LOCK:
            if version == (1, 0):
                shape, fortran, dtype = fmt.read_array_header_1_0(
                    f, max_header_size=_NPY_HEADER_MAX
                )
            elif version == (2, 0):
                shape, fortran, dtype = fmt.read_array_header_2_0(
                    f, max_header_size=_NPY_HEADER_MAX
                )
            else:
                raise ValueError(f"format version {version[0]}.{version[1]} (1.0 and 2.0 are read)")
    except (ValueError, EOFError, OSError, SyntaxError, TypeError) as e:
        raise DataFormatError(f"{path}: not a readable .npy array ({one_line_of(e)})") from None
    if dtype.kind not in "fiub" or dtype.hasobject or dtype.fields is not None:
        raise DataFormatError(f"{path}: not a numeric array (dtype {dtype.str})")
    if any(n < 0 for n in shape):
        raise DataFormatError(f"{path}: negative dimension in shape {shape}")
    if len(shape) > MAX_NPY_DIMS:
        raise DataFormatError(f"{path}: {len(shape)} dimensions {shape}, at most {MAX_NPY_DIMS}")
    count = math.prod(shape)
    if count > MAX_NPY_ELEMENTS:
        raise DataFormatError(
            f"{path}: shape {shape} holds {count} values, more than {MAX_NPY_ELEMENTS}"
        )
    here = f.tell()
    left = os.fstat(f.fileno()).st_size - here
    if count * dtype.itemsize > left:
        raise DataFormatError(
            f"{path}: header declares {shape} {dtype.str} ({count * dtype.itemsize} bytes), "
            f"the file holds {left} after the header (truncated)"
        )
    return shape, dtype, fortran


def _load(path: Path) -> np.ndarray:
    """The array of an ``.npy`` file, its header checked before anything is allocated."""
    try:
        with open(path, "rb") as f:
            shape, dtype, fortran = read_npy_header(f, path)
            count = math.prod(shape)
            flat = np.fromfile(f, dtype=dtype, count=count) if count else np.empty(0, dtype)
    except FileNotFoundError:
        raise DataFormatError(f"{path}: file not found") from None
    except (OSError, ValueError) as e:
        raise DataFormatError(f"{path}: not a readable .npy array ({one_line_of(e)})") from None
    if flat.size != count:
        raise DataFormatError(f"{path}: truncated (read {flat.size} of {count} values)")
    return flat.reshape(shape, order="F" if fortran else "C")


def one_line_of(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def read_image(path: Path) -> np.ndarray:
    """uint8 [H,W,3] from float [H,W,3] or [3,H,W] in 0..1 (or uint8 0..255)."""
    arr = _load(path)
    if arr.ndim == 3 and arr.shape[-1] == 3:
        hwc = arr
    elif arr.ndim == 3 and arr.shape[0] == 3:
        hwc = np.moveaxis(arr, 0, -1)
    else:
        raise DataFormatError(f"{path}: image shape {arr.shape}, expected [H,W,3] or [3,H,W]")
    if hwc.dtype == np.uint8:
        return np.ascontiguousarray(hwc)
    if hwc.dtype.kind != "f":
        raise DataFormatError(f"{path}: image dtype {hwc.dtype}, expected float 0..1 or uint8")
    if not np.isfinite(hwc).all():
        raise DataFormatError(f"{path}: image holds NaN or infinite values")
    lo, hi = float(hwc.min(initial=0.0)), float(hwc.max(initial=0.0))
    if lo < -1e-3 or hi > 1 + 1e-3:
        raise DataFormatError(
            f"{path}: image values {lo:.3g}..{hi:.3g} outside 0..1 (the release stores RGB/255)"
        )
    return np.clip(np.rint(hwc * 255.0), 0, 255).astype(np.uint8)


def _plane(path: Path, arr: np.ndarray, what: str) -> np.ndarray:
    """[H,W] from [H,W], [H,W,1] or [1,H,W]."""
    if arr.ndim == 3 and arr.shape[-1] == 1:
        return arr[..., 0]
    if arr.ndim == 3 and arr.shape[0] == 1:
        return arr[0]
    if arr.ndim == 2:
        return arr
    raise DataFormatError(f"{path}: {what} shape {arr.shape}, expected [H,W] or [H,W,1]")


def read_labels(path: Path, num_classes: int) -> np.ndarray:
    """int64 [H,W]: class ids 0..N-1, the release's -1 (not labelled) as 255."""
    arr = _plane(path, _load(path), "label")
    if arr.dtype.kind == "f" and not (np.isfinite(arr).all() and (arr == np.rint(arr)).all()):
        raise DataFormatError(f"{path}: labels are not whole numbers")
    labels = arr.astype(np.int64)
    bad = (labels < -1) | (labels >= num_classes)
    if bad.any():
        values = sorted({int(v) for v in np.unique(labels[bad])})[:5]
        raise DataFormatError(
            f"{path}: label values {values} outside -1..{num_classes - 1} "
            f"({num_classes}-class table, -1 = not labelled)"
        )
    labels[labels == -1] = IGNORE_INDEX
    return labels


def read_depth_array(path: Path) -> np.ndarray:
    """float32 [H,W] in the data's units; non-positive or non-finite values -> 0 (invalid)."""
    arr = _plane(path, _load(path), "depth").astype(np.float32)
    arr[~np.isfinite(arr) | (arr <= 0)] = 0.0
    return arr


def read_normals(path: Path) -> np.ndarray:
    """float32 [3,H,W] unit vectors (renormalized), zero vectors where invalid."""
    arr = _load(path)
    if arr.ndim == 3 and arr.shape[-1] == 3:
        arr = np.moveaxis(arr, -1, 0)
    elif not (arr.ndim == 3 and arr.shape[0] == 3):
        raise DataFormatError(f"{path}: normal shape {arr.shape}, expected [H,W,3] or [3,H,W]")
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    arr[:, ~np.isfinite(arr).all(axis=0)] = 0.0
    norm = np.sqrt((arr.astype(np.float64) ** 2).sum(axis=0))
    if float(norm.max(initial=0.0)) > 1.5:
        raise DataFormatError(
            f"{path}: normals up to length {norm.max():.3g}; expected unit vectors"
        )
    valid = norm > 1e-6
    out = np.zeros_like(arr)
    out[:, valid] = (arr[:, valid] / norm[valid]).astype(np.float32)
    return out


@dataclass(frozen=True)
class MTANTask:
    """How the release holds one task: its folder, its reader and the spec it gets.

    Attributes:
        folder: the folder in a split; None: the label set's (``label_7``, ``label_19``
            or ``label``).
        datasets: the releases that have it.
        read: ``(path, number of classes) -> target`` as the task's batches hold it.
        spec: the task's spec from what :func:`read_mtan_info` found.
    """

    folder: str | None
    datasets: tuple[str, ...]
    read: Callable[[Path, int], np.ndarray]
    spec: Callable[[MTANInfo], dict[str, Any]]


MTAN_TASKS: dict[str, MTANTask] = {
    "semseg": MTANTask(
        None,
        ("cityscapes", "nyuv2"),
        read_labels,
        lambda info: {"kind": "segmentation", "classes": info.classes},
    ),
    "depth": MTANTask(
        "depth",
        ("cityscapes", "nyuv2"),
        lambda path, _: read_depth_array(path),
        # in the data's units; range_m is the data's range, for pictures
        lambda info: {
            "kind": "depth",
            "encoding": info.depth_encoding,
            "range_m": list(info.depth_range_m),
        },
    ),
    "normals": MTANTask(
        "normal", ("nyuv2",), lambda path, _: read_normals(path), lambda info: {"kind": "normals"}
    ),
}
"""The layout's tasks by the names runs know them by, in order: the release's folder
names are the layout's, the task names scenemtl's (one table, next to the readers)."""


# --------------------------------------------------------------------------------------
# statistics (in memory: an MTAN root is read-only to scenemtl)


def _folder_signature(root: Path) -> tuple[Any, ...]:
    parts = []
    for split in MTAN_SPLITS:
        for sub in ("image", "depth"):
            try:
                st = (root / split / sub).stat()
                parts.append((split, sub, st.st_mtime_ns, st.st_ino))
            except OSError:
                parts.append((split, sub, None, None))
    return tuple(parts)


def _cached_stats(
    root: Path, folders: tuple[tuple[str, str], ...], num_classes: int
) -> tuple[dict[str, Any], tuple[float, float]]:
    return _stats(root.resolve(), folders, num_classes, _folder_signature(root))


@cache
def _stats(
    root: Path, folders: tuple[tuple[str, str], ...], num_classes: int, signature: Any
) -> tuple[dict[str, Any], tuple[float, float]]:
    """What ``scenemtl data stats`` writes into dataset.json, from the training split (or
    val without one), over at most :data:`STATS_MAX_IMAGES` evenly spaced samples: the
    statistics of the segmentation and depth tasks (theirs, as for any layout), and the
    range of the valid depths, which the depth spec of this layout takes (the release
    declares none)."""
    del signature  # part of the cache key only
    folder = dict(folders)
    split = "train" if (root / "train" / "image").is_dir() else "val"
    n = _npy_count(root / split / "image")
    if n == 0:
        raise DataFormatError(f"{root / split}: no samples to compute statistics on")
    picks = np.unique(np.linspace(0, n - 1, min(n, STATS_MAX_IMAGES)).round().astype(int))
    depth_stats = DepthStatistics((1.0, 2.0))  # only its moments are kept: any bins do
    class_stats = ClassFrequency(num_classes)
    lo, hi = np.inf, 0.0
    for i in picks:
        depth = read_depth_array(root / split / folder["depth"] / f"{i}.npy")
        depth_stats.add(depth)
        valid = depth[depth > 0]
        if valid.size:
            lo, hi = min(lo, float(valid.min())), max(hi, float(valid.max()))
        class_stats.add(read_labels(root / split / folder["semseg"] / f"{i}.npy", num_classes))
    where = f"{root / split}: the sampled files"
    stats = {"split": split, "num_images": len(picks)}
    stats.update(depth_stats.result(where))
    stats.update(class_stats.result(where))
    return stats, (lo, hi if hi > lo else lo * 2)


# --------------------------------------------------------------------------------------
# dataset


class MTANDataset(Dataset[dict[str, torch.Tensor]]):
    """One split of an MTAN-layout root; items as :class:`SceneDataset` yields them.

    Args:
        root: the MTAN root.
        split: ``train`` or ``val``.
        info: its :class:`MTANInfo`.
        tasks: the tasks whose targets to load (their names pick the folders).
    """

    def __init__(self, root: str | os.PathLike, split: str, info: MTANInfo, tasks: list) -> None:
        self.root = Path(root)
        self.split = split
        self.info = info
        self.size = info.split_size(split)
        self.with_gt = True
        self.tasks = list(tasks)
        unknown = [t.name for t in self.tasks if t.name not in info.folders]
        if unknown:
            raise UserError(f"{self.root}: the MTAN layout has no task {unknown[0]!r}")

    def __len__(self) -> int:
        return self.size

    def target(self, name: str, index: int) -> np.ndarray:
        path = self.root / self.split / self.info.folders[name] / f"{index}.npy"
        return MTAN_TASKS[name].read(path, self.info.num_classes)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if not 0 <= index < self.size:
            raise IndexError(index)
        path = self.root / self.split / "image" / f"{index}.npy"
        rgb = read_image(path)
        if rgb.shape[:2] != tuple(self.info.image_size):
            h, w = self.info.image_size
            raise DataFormatError(f"{path}: size {rgb.shape[1]}x{rgb.shape[0]}, expected {w}x{h}")
        sample = {
            "rgb": torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1))),
            "index": torch.tensor(index, dtype=torch.int64),
        }
        for task in self.tasks:
            target = self.target(task.name, index)
            if target.shape[-2:] != rgb.shape[:2]:
                where = self.root / self.split / self.info.folders[task.name] / f"{index}.npy"
                raise DataFormatError(
                    f"{where}: size {target.shape[-1]}x{target.shape[-2]} differs from its "
                    f"image {rgb.shape[1]}x{rgb.shape[0]}"
                )
            sample[task.name] = torch.from_numpy(target)
        return sample


# --------------------------------------------------------------------------------------
# writing (the converter's --layout mtan)


def write_sidecar(root: Path, name: str, depth_units: str, extra: dict[str, Any]) -> None:
    from scenemtl.atomic import atomic_write_bytes

    data = {"layout": LAYOUT, "name": name, "depth_units": depth_units, **extra}
    atomic_write_bytes(root / SIDECAR, (json.dumps(data, indent=2) + "\n").encode("utf-8"))


def save_npy(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        np.save(f, array, allow_pickle=False)


# --------------------------------------------------------------------------------------
# integrity (``scenemtl data check`` on an MTAN root)


def _check_sample(
    root: Path,
    split: str,
    index: int,
    folders: dict[str, tuple[MTANTask, int]],
    expected: tuple[int, int],
) -> list[str]:
    path = root / split / "image" / f"{index}.npy"
    try:
        size = read_image(path).shape[:2]
    except DataFormatError as e:
        return [str(e)]
    problems = []
    if size != expected:
        problems.append(
            f"{path}: size {size[1]}x{size[0]}, the dataset's is {expected[1]}x{expected[0]}"
        )
    for folder, (task, classes) in folders.items():
        path = root / split / folder / f"{index}.npy"
        try:
            shape = task.read(path, classes).shape[-2:]
        except DataFormatError as e:
            problems.append(str(e))
            continue
        if shape != size:
            problems.append(
                f"{path}: size {shape[1]}x{shape[0]} differs from its image {size[1]}x{size[0]}"
            )
    return problems


def check_mtan(root: str | os.PathLike, workers: int | None = None) -> list[str]:
    """Every problem of an MTAN-layout root (every file of every label set), one line each."""
    from concurrent.futures import ThreadPoolExecutor

    root = Path(root)
    try:
        info = read_mtan_info(root)
    except UserError as e:
        return [str(e)]
    sets = {"label_7": 7, "label_19": 19} if info.dataset == "cityscapes" else {"label": 13}
    expected = (int(info.image_size[0]), int(info.image_size[1]))
    problems: list[str] = []
    jobs = []
    for split in info.splits:
        n = info.split_size(split)
        present = {name: c for name, c in sets.items() if (root / split / name).is_dir()}
        for name in present:
            try:
                m = _npy_count(root / split / name)
            except DataFormatError as e:
                problems.append(str(e))
                continue
            if m != n:
                problems.append(f"{root / split / name}: {m} files, expected {n}")
        # every label set present, read as the segmentation task reads its own
        folders = {
            (task.folder or label_set): (task, classes)
            for task in (MTAN_TASKS[name] for name in info.folders)
            for label_set, classes in (present.items() if task.folder is None else [("", 0)])
        }
        jobs += [(split, i, folders) for i in range(n)]
    with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
        for found in pool.map(lambda job: _check_sample(root, *job, expected), jobs):
            problems += found
    return problems
