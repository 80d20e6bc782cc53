"""``scenemtl data cityscapes``: convert a Cityscapes tree into the MiniScapes layout.

Expected input (the official archives unpacked side by side)::

    SRC/leftImg8bit/{split}/{city}/{stem}_leftImg8bit.png
    SRC/gtFine/{split}/{city}/{stem}_gtFine_labelIds.png
    SRC/disparity/{split}/{city}/{stem}_disparity.png
    SRC/camera/{split}/{city}/{stem}_camera.json

Semantic labels map labelIds -> trainIds through cityscapesscripts' label table; depth is
``baseline * fx / ((p - 1) / 256)`` from the 16-bit disparity ``p`` (``p <= 1`` invalid).
Labels and depth are resized with nearest neighbour, RGB with a box filter. Cityscapes'
public test split has no ground truth, so it is written as RGB only.
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

import numpy as np
from PIL import Image

from scenemtl.data.format import (
    IGNORE_INDEX,
    METERS16,
    DatasetInfo,
    encodable_range,
    open_image,
    write_info,
    write_sample,
)
from scenemtl.errors import DataFormatError, UserError

CITYSCAPES_SPLITS = ("train", "val", "test")


def label_id_to_train_id() -> np.ndarray:
    """A 256-entry lookup table: Cityscapes labelId -> trainId (255 for ignored ids)."""
    from cityscapesscripts.helpers.labels import labels

    lut = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    for lab in labels:
        if 0 <= lab.id < 256 and 0 <= lab.trainId < IGNORE_INDEX:
            lut[lab.id] = lab.trainId
    return lut


def disparity_to_depth(disparity: np.ndarray, baseline: float, fx: float) -> np.ndarray:
    """Cityscapes 16-bit disparity PNG values -> depth in meters (0 = invalid)."""
    p = disparity.astype(np.float64)
    valid = p > 1
    d = np.zeros_like(p)
    d[valid] = baseline * fx / ((p[valid] - 1.0) / 256.0)
    return d.astype(np.float32)


def _stems(src: Path, split: str) -> list[tuple[str, str]]:
    base = src / "leftImg8bit" / split
    if not base.is_dir():
        return []
    found = []
    for city in sorted(p.name for p in base.iterdir() if p.is_dir()):
        for f in sorted((base / city).glob("*_leftImg8bit.png")):
            found.append((city, f.name[: -len("_leftImg8bit.png")]))
    return found


def _camera(path: Path) -> tuple[float, float]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return float(data["extrinsic"]["baseline"]), float(data["intrinsic"]["fx"])
    except FileNotFoundError:
        raise DataFormatError(f"{path}: file not found") from None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DataFormatError(f"{path}: not a Cityscapes camera file ({e!r})") from None


def _convert_one(
    src: Path,
    out: Path,
    split: str,
    index: int,
    city: str,
    stem: str,
    size: tuple[int, int] | None,
    with_gt: bool,
    lut: np.ndarray,
    encoding: str,
) -> tuple[int, int]:
    rgb_img = open_image(src / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png")
    rgb_img = rgb_img.convert("RGB")
    h, w = size if size else (rgb_img.height, rgb_img.width)
    if (rgb_img.height, rgb_img.width) != (h, w):
        rgb_img = rgb_img.resize((w, h), Image.Resampling.BOX)
    semseg = depth = None
    if with_gt:
        label_img = open_image(src / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png")
        disp_img = open_image(src / "disparity" / split / city / f"{stem}_disparity.png")
        baseline, fx = _camera(src / "camera" / split / city / f"{stem}_camera.json")
        for img, what in ((label_img, "labelIds"), (disp_img, "disparity")):
            if img.size != (rgb_img.width, rgb_img.height) and size is None:
                raise DataFormatError(f"{city}/{stem}: {what} size {img.size} differs from RGB")
        label = label_img.resize((w, h), Image.Resampling.NEAREST)
        semseg = lut[np.asarray(label, dtype=np.uint8)]
        disp = np.asarray(disp_img.resize((w, h), Image.Resampling.NEAREST))
        depth = disparity_to_depth(disp, baseline, fx)
        # Depth the encoding cannot hold is dropped, not clipped: a clipped far point
        # would be a confident wrong label.
        lo, hi = encodable_range(encoding)
        depth[(depth < lo) | (depth > hi)] = 0.0
    write_sample(out, split, index, np.asarray(rgb_img), semseg, depth, encoding, ".png")
    return h, w


def convert_cityscapes(
    src: str | os.PathLike,
    out: str | os.PathLike,
    size: tuple[int, int] | None = None,
    depth_encoding: str = METERS16,
    workers: int | None = None,
) -> DatasetInfo:
    """Convert every split found under ``src``; writes dataset.json last, atomically."""
    src, out = Path(src), Path(out)
    if not (src / "leftImg8bit").is_dir():
        raise UserError(f"{src}: no leftImg8bit/ folder; is this a Cityscapes root?")
    if (out / "dataset.json").exists():
        raise UserError(f"{out} already holds a dataset; choose an empty --out")
    lut = label_id_to_train_id()
    splits: dict[str, dict[str, int | bool]] = {}
    image_size: tuple[int, int] | None = size
    for split in CITYSCAPES_SPLITS:
        stems = _stems(src, split)
        if not stems:
            continue
        with_gt = split != "test"
        convert = partial(
            _convert_one,
            src,
            out,
            split,
            size=size,
            with_gt=with_gt,
            lut=lut,
            encoding=depth_encoding,
        )
        with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
            sizes = set(pool.map(convert, range(len(stems)), *zip(*stems, strict=True)))
        if len(sizes) != 1 or (image_size and sizes != {image_size}):
            raise DataFormatError(f"{src}: images of different sizes {sorted(sizes)}; pass --size")
        image_size = sizes.pop()
        splits[split] = {"size": len(stems), "gt": with_gt}
    if not splits or image_size is None:
        raise UserError(f"{src}: no *_leftImg8bit.png files found")
    lo, hi = encodable_range(depth_encoding)
    info = DatasetInfo(
        name="cityscapes",
        image_size=image_size,
        splits=splits,
        depth_encoding=depth_encoding,
        depth_range_m=(lo, hi),
        rgb_extension=".png",
        source={"converted_from": str(src), "size": list(image_size)},
    )
    write_info(out, info)
    return info
