"""The on-disk dataset format (MiniScapes layout).

::

    ROOT/dataset.json
    ROOT/{train,val,test}/rgb/{i}.jpg|png      RGB, 8-bit
    ROOT/{train,val,test}/semseg/{i}.png       mode L or P, class ids of "classes", 255 = ignore
    ROOT/{train,val,test}/depth/{i}.png        8-bit disparity code or 16-bit meters x 256
    ROOT/{train,val,test}/<task>/{i}.png       one folder per extra task (dataset.json
                                               "extra_tasks", e.g. normals: docs/normals.md)

The PNG encodings are :mod:`scenemtl.codecs`' (depth PNGs describe themselves by their
mode, :mod:`scenemtl.codecs.depth`). Which task kind reads each folder is
:data:`MINISCAPES_TASKS` plus ``extra_tasks``; :attr:`DatasetInfo.task_specs` gives the
specs the task registry builds the tasks from.
"""

from __future__ import annotations

import io
import json
import os
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from scenemtl.atomic import atomic_write_bytes

# The codecs, re-exported: the layout is written in them and its readers import them
# from here (the codecs live apart so that task kinds use them without this module).
from scenemtl.codecs.classes import IGNORE_INDEX as IGNORE_INDEX
from scenemtl.codecs.classes import MAX_CLASSES as MAX_CLASSES
from scenemtl.codecs.classes import cityscapes_class_table
from scenemtl.codecs.classes import read_semseg as read_semseg
from scenemtl.codecs.depth import DEPTH_ENCODINGS as DEPTH_ENCODINGS
from scenemtl.codecs.depth import DISPARITY8 as DISPARITY8
from scenemtl.codecs.depth import DISPARITY8_MAX_M as DISPARITY8_MAX_M
from scenemtl.codecs.depth import DISPARITY8_MIN_M as DISPARITY8_MIN_M
from scenemtl.codecs.depth import INVALID_DEPTH as INVALID_DEPTH
from scenemtl.codecs.depth import METERS16 as METERS16
from scenemtl.codecs.depth import METERS16_MAX_M as METERS16_MAX_M
from scenemtl.codecs.depth import METERS16_SCALE as METERS16_SCALE
from scenemtl.codecs.depth import decode_depth as decode_depth
from scenemtl.codecs.depth import depth_encoding_of as depth_encoding_of
from scenemtl.codecs.depth import encodable_range as encodable_range
from scenemtl.codecs.depth import encode_depth as encode_depth
from scenemtl.codecs.depth import read_depth as read_depth
from scenemtl.codecs.image import MAX_IMAGE_PIXELS as MAX_IMAGE_PIXELS
from scenemtl.codecs.image import open_image as open_image
from scenemtl.codecs.normals import NORMALS_CODEC_MAX_ANGLE_DEG as NORMALS_CODEC_MAX_ANGLE_DEG
from scenemtl.codecs.normals import NORMALS_ENCODINGS as NORMALS_ENCODINGS
from scenemtl.codecs.normals import NORMALS_RGB8 as NORMALS_RGB8
from scenemtl.codecs.normals import decode_normals as decode_normals
from scenemtl.codecs.normals import encode_normals as encode_normals
from scenemtl.codecs.normals import read_normals as read_normals
from scenemtl.errors import DataFormatError

FORMAT_NAME = "scenemtl-miniscapes"
FORMAT_VERSION = 1
SPLITS = ("train", "val", "test")


def _class_table_spec(info: DatasetInfo) -> dict[str, Any]:
    return {"kind": "segmentation", "classes": info.classes}


def _depth_spec(info: DatasetInfo) -> dict[str, Any]:
    return {"kind": "depth", "encoding": info.depth_encoding, "range_m": list(info.depth_range_m)}


MINISCAPES_TASKS: dict[str, Callable[[DatasetInfo], dict[str, Any]]] = {
    "semseg": _class_table_spec,
    "depth": _depth_spec,
}
"""The layout's own task folders (fixed since format version 1) -> the spec each gets
from dataset.json ("classes"; "depth"); any further task is listed in "extra_tasks"."""
MODALITIES = ("rgb", *MINISCAPES_TASKS)
RGB_EXTENSIONS = (".jpg", ".png")


# --------------------------------------------------------------------------------------
# dataset.json


@dataclass
class DatasetInfo:
    """Contents of ``dataset.json``.

    ``splits`` maps a split name to ``{"size": N, "gt": bool}``; ``stats`` is filled by
    ``scenemtl data stats``; ``source`` records how the data was made.
    """

    name: str
    image_size: tuple[int, int]
    splits: dict[str, dict[str, Any]]
    depth_encoding: str = DISPARITY8
    depth_range_m: tuple[float, float] = (DISPARITY8_MIN_M, DISPARITY8_MAX_M)
    rgb_extension: str = ".jpg"
    version: str = "1"
    classes: list[dict[str, Any]] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)
    source: dict[str, Any] = field(default_factory=dict)
    extra_tasks: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Tasks beyond ``semseg`` and ``depth``: task name -> spec (``{"kind": ...}`` plus
    what the kind needs), read from ``<split>/<name>/{i}.png`` (see
    :attr:`task_specs`)."""
    partial_tasks: list[str] = field(default_factory=list)
    """Tasks whose label file may be missing for a sample: that sample has no label for
    the task (partial labels, docs/data.md). A missing file of any other task is an error
    (``scenemtl data check`` reports it)."""

    def __post_init__(self) -> None:
        if not self.classes:
            self.classes = cityscapes_class_table()

    @property
    def task_specs(self) -> dict[str, dict[str, Any]]:
        """The tasks the dataset provides, name -> spec, in order: the layout's own
        (:data:`MINISCAPES_TASKS`), then ``extra_tasks``."""
        specs = {name: spec_of(self) for name, spec_of in MINISCAPES_TASKS.items()}
        specs.update({name: dict(spec) for name, spec in self.extra_tasks.items()})
        return specs

    @property
    def task_folders(self) -> tuple[str, ...]:
        """Every per-sample folder of a split: rgb, semseg, depth and the extra tasks'."""
        return (*MODALITIES, *self.extra_tasks)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def split_size(self, split: str) -> int:
        if split not in self.splits:
            raise DataFormatError(f"dataset {self.name!r} has no split {split!r}")
        return int(self.splits[split]["size"])

    def has_gt(self, split: str) -> bool:
        return bool(self.splits.get(split, {}).get("gt", False))

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        return {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "name": d["name"],
            "version": d["version"],
            "image_size": list(self.image_size),
            "splits": d["splits"],
            "rgb_extension": self.rgb_extension,
            "classes": d["classes"],
            "depth": {
                "encoding": self.depth_encoding,
                "min_m": float(self.depth_range_m[0]),
                "max_m": float(self.depth_range_m[1]),
                "invalid": 0,
            },
            "stats": d["stats"],
            "source": d["source"],
            # only when present, so datasets without extra tasks keep their exact bytes
            **({"extra_tasks": d["extra_tasks"]} if self.extra_tasks else {}),
            **({"partial_tasks": list(self.partial_tasks)} if self.partial_tasks else {}),
        }

    @classmethod
    def from_json(cls, data: Any, where: str = "dataset.json") -> DatasetInfo:
        def bad(msg: str) -> DataFormatError:
            return DataFormatError(f"{where}: {msg}")

        if not isinstance(data, dict):
            raise bad("top level is not an object")
        if data.get("format") != FORMAT_NAME:
            raise bad(f"'format' is {data.get('format')!r}, expected {FORMAT_NAME!r}")
        try:
            size = data["image_size"]
            if not (
                isinstance(size, list)
                and len(size) == 2
                and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size)
            ):
                raise bad(f"'image_size' must be [H, W] of positive ints, got {size!r}")
            if size[0] * size[1] > MAX_IMAGE_PIXELS:
                raise bad(f"'image_size' {size} has more than {MAX_IMAGE_PIXELS} pixels")
            splits = data["splits"]
            if not isinstance(splits, dict) or not splits:
                raise bad("'splits' must be a non-empty object")
            for name, s in splits.items():
                if name not in SPLITS:
                    raise bad(f"unknown split {name!r}; known: {', '.join(SPLITS)}")
                size_ = s.get("size") if isinstance(s, dict) else None
                if not (isinstance(size_, int) and not isinstance(size_, bool) and size_ >= 0):
                    raise bad(f"split {name!r} needs a non-negative integer 'size'")
                if size_ > MAX_SPLIT_SIZE:
                    raise bad(f"split {name!r} claims {size_} images, more than {MAX_SPLIT_SIZE}")
            depth = data["depth"]
            encoding = depth["encoding"]
            if encoding not in DEPTH_ENCODINGS:
                raise bad(f"unknown depth encoding {encoding!r}; known: {DEPTH_ENCODINGS}")
            lo, hi = float(depth["min_m"]), float(depth["max_m"])
            if not 0 < lo < hi:
                raise bad(f"depth range [{lo}, {hi}] is not a positive interval")
            ext = data.get("rgb_extension", ".jpg")
            if ext not in RGB_EXTENSIONS:
                raise bad(f"'rgb_extension' {ext!r} not in {RGB_EXTENSIONS}")
            classes = data.get("classes") or []
            if not isinstance(classes, list) or len(classes) >= MAX_CLASSES:
                raise bad(f"'classes' must be a list of at most {MAX_CLASSES - 1} classes")
            for i, c in enumerate(classes):
                color = c.get("color") if isinstance(c, dict) else None
                if not (
                    isinstance(c, dict)
                    and isinstance(c.get("name"), str)
                    and isinstance(color, list)
                    and len(color) == 3
                    and all(isinstance(v, int) and 0 <= v <= 255 for v in color)
                ):
                    raise bad(f"class {i} must be {{'name': str, 'color': [r, g, b] 0..255}}")
            extra = _parse_extra_tasks(data.get("extra_tasks") or {}, bad)
            partial = data.get("partial_tasks") or []
            known = ("semseg", "depth", *extra)
            if not isinstance(partial, list) or not all(p in known for p in partial):
                raise bad(f"'partial_tasks' must list tasks of the dataset ({', '.join(known)})")
            return cls(
                name=str(data.get("name", "unnamed")),
                version=str(data.get("version", "1")),
                image_size=(size[0], size[1]),
                splits={
                    k: {"size": v["size"], "gt": bool(v.get("gt", True))} for k, v in splits.items()
                },
                depth_encoding=encoding,
                depth_range_m=(lo, hi),
                rgb_extension=ext,
                classes=classes,
                stats=dict(data.get("stats") or {}),
                source=dict(data.get("source") or {}),
                extra_tasks=extra,
                partial_tasks=list(partial),
            )
        except KeyError as e:
            raise bad(f"missing key {e.args[0]!r}") from None
        except (TypeError, ValueError) as e:
            if isinstance(e, DataFormatError):
                raise
            raise bad(f"malformed value ({e})") from None


RESERVED_NAMES = (*MODALITIES, "image", "index")
"""Names an extra task cannot have: the layout's folders and the other batch keys."""
TASK_NAME = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
"""Names of extra tasks: also folder names and metric prefixes."""


def _parse_extra_tasks(extra: Any, bad: Any) -> dict[str, dict[str, Any]]:
    """Validate ``dataset.json`` "extra_tasks": ``{name: {"kind": str, ...}}``.

    Whether the kind exists is the task registry's business (checked when the tasks are
    built); here only the shape and the names, which become folder names.
    """
    if not isinstance(extra, dict):
        raise bad("'extra_tasks' must be an object: task name -> {'kind': ..., ...}")
    out = {}
    for name, spec in extra.items():
        if not TASK_NAME.match(name) or name in RESERVED_NAMES:
            raise bad(
                f"extra task name {name!r} must be lower-case letters, digits and _ "
                f"(not {', '.join(RESERVED_NAMES)})"
            )
        if not isinstance(spec, dict) or not isinstance(spec.get("kind"), str):
            raise bad(f"extra task {name!r} must be an object with a string 'kind'")
        out[name] = dict(spec)
    return out


def info_path(root: str | os.PathLike) -> Path:
    return Path(root) / "dataset.json"


def read_info(root: str | os.PathLike, check_sizes: bool = True) -> DatasetInfo:
    """Read and validate ``ROOT/dataset.json``; one clear error if anything is off.

    With ``check_sizes`` (the default), a split may not declare more images than its
    ``rgb/`` folder holds (see :func:`split_size_problem`), so that no reader sizes
    anything (index lists, samplers) by a number the disk does not back.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataFormatError(f"dataset root {root} does not exist or is not a directory")
    path = info_path(root)
    if not path.is_file():
        raise DataFormatError(f"{path} not found: not a scenemtl dataset root")
    info = DatasetInfo.from_json(read_json_file(path), where=str(path))
    if check_sizes:
        for split in info.splits:
            problem = split_size_problem(root, info, split)
            if problem:
                raise DataFormatError(problem)
    return info


# Split sizes are bounded twice: by MAX_SPLIT_SIZE in any dataset.json, and by the files
# on disk wherever the split's folder exists (a missing folder is reported as missing by
# `data check` and fails at its first image, without anything sized by the claim).
MAX_SPLIT_SIZE = 10_000_000
"""Most images dataset.json may declare for one split (Cityscapes has 5000 in all)."""

MAX_JSON_BYTES = 16 << 20
"""Largest dataset.json or mtan.json read (they hold a class table and statistics: a few
KiB). Nesting deeper than Python's recursion limit is refused too."""


def read_json_file(path: Path) -> Any:
    """The value of the small JSON file ``path``, its size checked before it is read.

    Raises:
        DataFormatError: ``<path>: ...`` if it is too large, unreadable or not JSON.
    """
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size > MAX_JSON_BYTES:
                raise DataFormatError(f"{path}: {size} bytes, larger than {MAX_JSON_BYTES}")
            # size + 1: a file that grew since is cut, hence not valid
            return json.loads(f.read(size + 1).decode("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataFormatError(f"{path}: not valid JSON ({e})") from None
    except RecursionError:
        raise DataFormatError(f"{path}: not valid JSON (nested too deeply)") from None


INDEX_NAME = re.compile(r"^(0|[1-9][0-9]*)\.(jpg|png)$")
"""Names of sample files: ``<index>.jpg`` or ``<index>.png``, no leading zeros."""


def rgb_indices(root: str | os.PathLike, split: str) -> set[int]:
    """Indices of the RGB files present in ``ROOT/<split>/rgb`` (empty if no folder)."""
    folder = Path(root) / split / "rgb"
    try:
        with os.scandir(folder) as entries:
            names = [e.name for e in entries]
    except (FileNotFoundError, NotADirectoryError):
        return set()
    found = set()
    for name in names:
        m = INDEX_NAME.match(name)
        if m and f".{m.group(2)}" in RGB_EXTENSIONS:
            found.add(int(m.group(1)))
    return found


def split_size_problem(root: str | os.PathLike, info: DatasetInfo, split: str) -> str | None:
    """One line if ``split`` declares more images than its ``rgb/`` folder holds."""
    n = info.split_size(split)
    if n == 0 or not (Path(root) / split).is_dir():
        return None
    found = len(rgb_indices(root, split))
    if n <= found:
        return None
    return (
        f"{info_path(root)}: split {split!r} declares {n} images but "
        f"{Path(root) / split / 'rgb'} holds {found}"
    )


def write_normals(path: str | Path, normals: np.ndarray) -> None:
    """Write normals [3,H,W] or [H,W,3] as a PNG at ``path``, atomically."""
    buf = io.BytesIO()
    encode_normals(normals).save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())


def write_info(root: str | os.PathLike, info: DatasetInfo) -> None:
    text = json.dumps(info.to_json(), indent=2) + "\n"
    atomic_write_bytes(info_path(root), text.encode("utf-8"))


# --------------------------------------------------------------------------------------
# samples


def rgb_path(root: str | os.PathLike, split: str, index: int, extension: str) -> Path:
    return Path(root) / split / "rgb" / f"{index}{extension}"


def label_path(root: str | os.PathLike, split: str, modality: str, index: int) -> Path:
    return Path(root) / split / modality / f"{index}.png"


def find_rgb(root: str | os.PathLike, split: str, index: int, preferred: str = ".jpg") -> Path:
    """The RGB file of a sample, whichever allowed extension it has."""
    for ext in (preferred, *[e for e in RGB_EXTENSIONS if e != preferred]):
        p = rgb_path(root, split, index, ext)
        if p.exists():
            return p
    return rgb_path(root, split, index, preferred)


def encode_sample(
    rgb: np.ndarray,
    semseg: np.ndarray | None,
    depth_m: np.ndarray | None,
    depth_encoding: str = DISPARITY8,
    rgb_extension: str = ".jpg",
    jpeg_quality: int = 90,
    num_classes: int = 19,
    png_compress_level: int = 6,
    normals: np.ndarray | None = None,
) -> dict[str, bytes]:
    """The files of one sample in memory: ``{"rgb": ..., "semseg": ..., "depth": ...,
    "normals": ...}`` (labels only where given); arguments as :func:`write_sample`'s,
    ``normals`` as :func:`encode_normals`'s.

    ``png_compress_level`` (zlib 0-9; 6 is Pillow's default) changes only the size of the
    PNG files and the time to make them, never the pixels they decode to.
    """
    rgb = np.asarray(rgb)
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"rgb must be HxWx3 uint8, got {rgb.dtype} {rgb.shape}")

    def encoded(img: Image.Image, **kw: Any) -> bytes:
        buf = io.BytesIO()
        img.save(buf, **kw)
        return buf.getvalue()

    png = {"format": "PNG", "compress_level": png_compress_level}
    if rgb_extension == ".jpg":
        files = {"rgb": encoded(Image.fromarray(rgb), format="JPEG", quality=jpeg_quality)}
    else:
        files = {"rgb": encoded(Image.fromarray(rgb), **png)}
    if semseg is not None:
        sem = np.asarray(semseg)
        ok = (sem < num_classes) | (sem == IGNORE_INDEX)
        if sem.shape != rgb.shape[:2] or sem.min(initial=0) < 0 or not ok.all():
            raise ValueError(
                f"semseg must be HxW (as rgb) with values in 0..{num_classes - 1} or 255"
            )
        files["semseg"] = encoded(Image.fromarray(sem.astype(np.uint8)), **png)
    if depth_m is not None:
        if np.shape(depth_m) != rgb.shape[:2]:
            raise ValueError("depth must be HxW like rgb")
        files["depth"] = encoded(encode_depth(depth_m, depth_encoding), **png)
    if normals is not None:
        files["normals"] = encoded(encode_normals(normals), **png)
    return files


def write_sample_files(
    root: str | os.PathLike, split: str, index: int, files: dict[str, bytes], rgb_extension: str
) -> None:
    """Write what :func:`encode_sample` made (not atomically: for fresh folders)."""
    for modality, payload in files.items():
        if modality == "rgb":
            p = rgb_path(root, split, index, rgb_extension)
        else:
            p = label_path(root, split, modality, index)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(payload)


def write_sample(
    root: str | os.PathLike,
    split: str,
    index: int,
    rgb: np.ndarray,
    semseg: np.ndarray | None,
    depth_m: np.ndarray | None,
    depth_encoding: str = DISPARITY8,
    rgb_extension: str = ".jpg",
    jpeg_quality: int = 90,
    num_classes: int = 19,
    png_compress_level: int = 6,
) -> None:
    """Write one sample: ``rgb`` HxWx3 uint8, ``semseg`` HxW trainIds, ``depth_m`` HxW meters."""
    files = encode_sample(
        rgb,
        semseg,
        depth_m,
        depth_encoding,
        rgb_extension,
        jpeg_quality,
        num_classes,
        png_compress_level,
    )
    write_sample_files(root, split, index, files, rgb_extension)


_GRAY16 = ("I;16", "I;16L", "I;16B", "I;16N")


def read_rgb(path: Path) -> np.ndarray:
    """HxWx3 uint8 of any image a user hands in (see :func:`rgb8`)."""
    return rgb8(open_image(path), path)


def rgb8(im: Image.Image, path: str | os.PathLike) -> np.ndarray:
    """An image as HxWx3 uint8, scaled by its bit depth (docs/reliability.md).

    * 8-bit modes (RGB, L, P, RGBA, ...): as Pillow converts them (alpha dropped).
    * 16-bit grey (``I;16*``, or mode ``I`` from a PNG, which has no 32-bit depth):
      ``round(v / 257)``, so 65535 is white and an 8-bit value stored in 16 bits
      (``257 * k``) comes back as ``k``.
    * 16-bit RGB PNG: Pillow decodes it to its high bytes, ``floor(v / 256)``, at most
      one level below ``round(v / 257)`` and exact for ``257 * k``.
    * float (``F``): ``round(255 * v)`` if every value is finite and in [0, 1], else
      refused: a float image has no white level to scale by.
    * 32-bit integer (``I`` from a TIFF) and other modes: refused (no known white level).

    Raises:
        DataFormatError: one line naming ``path`` and the mode.
    """
    mode = im.mode
    if mode == "RGB":
        return np.asarray(im, dtype=np.uint8)
    if mode in _GRAY16 or (mode == "I" and im.format == "PNG"):
        v = np.asarray(im).astype(np.int64)
        if v.size and (v.min() < 0 or v.max() > 65535):
            raise DataFormatError(f"{path}: mode {mode} holds values outside 0..65535")
        # 257 is odd, so v / 257 is never halfway: this is round(v / 257) exactly
        grey = ((2 * v + 257) // 514).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    if mode == "F":
        v = np.asarray(im, dtype=np.float64)
        if v.size and not (np.isfinite(v).all() and v.min() >= 0.0 and v.max() <= 1.0):
            raise DataFormatError(
                f"{path}: float image with values outside [0, 1] (min {np.nanmin(v):.4g}, "
                f"max {np.nanmax(v):.4g}); save it as 8- or 16-bit"
            )
        grey = np.rint(v * 255.0).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    if mode.startswith("I"):
        raise DataFormatError(
            f"{path}: {mode} image (32-bit or signed integers) has no known white level; "
            "save it as 8- or 16-bit"
        )
    try:
        return np.asarray(im.convert("RGB"), dtype=np.uint8)
    except ValueError as e:
        raise DataFormatError(f"{path}: mode {mode} cannot be read as RGB ({e})") from None
