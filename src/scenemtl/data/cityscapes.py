"""``scenemtl data cityscapes``: convert a Cityscapes tree for training.

Expected input (the official archives unpacked side by side)::

    SRC/leftImg8bit/{split}/{city}/{stem}_leftImg8bit.png
    SRC/gtFine/{split}/{city}/{stem}_gtFine_labelIds.png
    SRC/disparity/{split}/{city}/{stem}_disparity.png
    SRC/camera/{split}/{city}/{stem}_camera.json      (only for --depth meters)

The procedure, for every image in sorted city/file order:

* labels (``--classes``): 19 = labelIds -> trainIds of cityscapesscripts' label table;
  7 = labelIds -> the label table's categories (categoryId 1..7 -> 0..6: flat,
  construction, object, nature, sky, human, vehicle; the void category is ignored).
  Not-labelled pixels are 255 in the MiniScapes layout, -1 in the MTAN layout.
* depth (``--depth``): the 16-bit disparity PNG value ``p`` gives disparity
  ``(p - 1) / 256`` pixels (``p <= 1``: invalid); ``disparity`` keeps that (pixels of
  the 2048-wide original, also after resizing), ``meters`` is
  ``baseline * fx / disparity`` with the image's camera json. Invalid is 0.
* resizing (``--size HxW``): RGB with a box filter (an area average); labels and the
  disparity PNG with nearest neighbour, before the disparity is converted, so every
  output value is one measured value (no average across a depth edge or with invalid
  pixels). Labels and disparity must have the RGB's size before resizing.
* layout (``--layout``): ``miniscapes`` writes the MiniScapes PNG layout with
  dataset.json (depth in meters only); ``mtan`` writes the MTAN release's ``.npy``
  folders (``image/`` float32 [H,W,3] in 0..1, ``label_7/`` or ``label_19/``,
  ``depth/`` [H,W,1]) plus ``mtan.json`` naming the depth units. Cityscapes' public test
  split has no ground truth: the MiniScapes layout keeps it as RGB only, the MTAN layout
  (train/val only, like the release) leaves it out.

Everything is written into a hidden folder next to ``--out`` and renamed to ``--out``
only when complete: a failure (missing folder, undecodable PNG, size mismatch, bad
camera file) or Ctrl-C is one line naming the file and leaves no partial output, and
what a killed conversion left beside ``--out`` is removed by the next conversion
(:mod:`scenemtl.data.staging`).
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
from PIL import Image

from scenemtl.codecs.classes import cityscapes_class_table
from scenemtl.codecs.image import MAX_IMAGE_PIXELS
from scenemtl.data.format import (
    IGNORE_INDEX,
    METERS16,
    DatasetInfo,
    encodable_range,
    open_image,
    read_rgb,
    write_info,
    write_sample,
)
from scenemtl.data.mtan import (
    cityscapes_category_table,
    label_id_to_category,
    save_npy,
    write_sidecar,
)
from scenemtl.data.staging import remove_dead_partials, staging
from scenemtl.errors import DataFormatError, UserError

CITYSCAPES_SPLITS = ("train", "val", "test")
CLASS_SETS = (7, 19)
DEPTH_MODES = ("meters", "disparity")
LAYOUTS = ("miniscapes", "mtan")


def label_id_to_train_id() -> np.ndarray:
    """A 256-entry lookup table: Cityscapes labelId -> trainId (255 for ignored ids)."""
    from cityscapesscripts.helpers.labels import labels

    lut = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    for lab in labels:
        if 0 <= lab.id < 256 and 0 <= lab.trainId < IGNORE_INDEX:
            lut[lab.id] = lab.trainId
    return lut


def png_to_disparity(disparity: np.ndarray) -> np.ndarray:
    """Cityscapes 16-bit disparity PNG values -> disparity in pixels (0 = invalid)."""
    p = disparity.astype(np.float64)
    return np.where(p > 1, (p - 1.0) / 256.0, 0.0).astype(np.float32)


def disparity_to_depth(disparity: np.ndarray, baseline: float, fx: float) -> np.ndarray:
    """Cityscapes 16-bit disparity PNG values -> depth in meters (0 = invalid)."""
    d = png_to_disparity(disparity).astype(np.float64)
    valid = d > 0
    out = np.zeros_like(d)
    out[valid] = baseline * fx / d[valid]
    return out.astype(np.float32)


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
        baseline, fx = float(data["extrinsic"]["baseline"]), float(data["intrinsic"]["fx"])
    except FileNotFoundError:
        raise DataFormatError(f"{path}: file not found") from None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DataFormatError(f"{path}: not a Cityscapes camera file ({e!r})") from None
    if not (np.isfinite(baseline) and np.isfinite(fx) and baseline > 0 and fx > 0):
        raise DataFormatError(f"{path}: baseline {baseline} and fx {fx} must be positive")
    return baseline, fx


@dataclass(frozen=True)
class _Options:
    size: tuple[int, int] | None
    lut: np.ndarray
    depth: str
    layout: str
    encoding: str
    label_folder: str


def _convert_one(
    src: Path,
    out: Path,
    split: str,
    opts: _Options,
    with_gt: bool,
    index: int,
    city: str,
    stem: str,
) -> tuple[int, int]:
    rgb_file = src / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png"
    rgb_img = Image.fromarray(read_rgb(rgb_file))  # by bit depth, as predict reads
    h0, w0 = rgb_img.height, rgb_img.width
    h, w = opts.size if opts.size else (h0, w0)
    if (h0, w0) != (h, w):
        rgb_img = rgb_img.resize((w, h), Image.Resampling.BOX)
    semseg = depth = None
    if with_gt:
        label_file = src / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png"
        disp_file = src / "disparity" / split / city / f"{stem}_disparity.png"
        label_img, disp_img = open_image(label_file), open_image(disp_file)
        for img, path in ((label_img, label_file), (disp_img, disp_file)):
            if img.size != (w0, h0):
                raise DataFormatError(
                    f"{path}: size {img.size[0]}x{img.size[1]} differs from its RGB {w0}x{h0}"
                )
        if disp_img.mode not in ("I;16", "I;16B", "I;16L", "I"):
            raise DataFormatError(f"{disp_file}: mode {disp_img.mode}, expected 16-bit")
        if label_img.mode not in ("L", "P"):
            raise DataFormatError(f"{label_file}: mode {label_img.mode}, expected 8-bit labelIds")
        label = label_img.resize((w, h), Image.Resampling.NEAREST)
        semseg = opts.lut[np.asarray(label, dtype=np.uint8)]
        disp = np.asarray(disp_img.resize((w, h), Image.Resampling.NEAREST))
        if opts.depth == "disparity":
            depth = png_to_disparity(disp)
        else:
            baseline, fx = _camera(src / "camera" / split / city / f"{stem}_camera.json")
            depth = disparity_to_depth(disp, baseline, fx)
            if opts.layout == "miniscapes":
                # Depth the encoding cannot hold is dropped, not clipped: a clipped far
                # point would be a confident wrong label.
                lo, hi = encodable_range(opts.encoding)
                depth[(depth < lo) | (depth > hi)] = 0.0
    rgb = np.asarray(rgb_img)
    if opts.layout == "miniscapes":
        write_sample(
            out,
            split,
            index,
            rgb,
            semseg,
            depth,
            opts.encoding,
            ".png",
            num_classes=int(opts.label_folder[6:]),
        )
        return h, w
    save_npy(out / split / "image" / f"{index}.npy", (rgb / 255.0).astype(np.float32))
    labels = np.where(semseg == IGNORE_INDEX, -1, semseg.astype(np.int16)).astype(np.float32)
    save_npy(out / split / opts.label_folder / f"{index}.npy", labels)
    save_npy(out / split / "depth" / f"{index}.npy", depth[..., None].astype(np.float32))
    return h, w


def _check_source(src: Path, depth: str, splits: list[str]) -> None:
    """One line for a missing folder, before anything is written."""
    if not (src / "leftImg8bit").is_dir():
        raise UserError(f"{src}: no leftImg8bit/ folder; is this a Cityscapes root?")
    needed = ["gtFine", "disparity"] + (["camera"] if depth == "meters" else [])
    for split in splits:
        if split == "test":
            continue
        for folder in needed:
            if not (src / folder / split).is_dir():
                raise UserError(
                    f"{src / folder / split}: missing folder (the {split} split needs "
                    f"{', '.join(needed)})"
                )


def _check_out(out: Path) -> None:
    """One line if ``out`` is a file or holds anything, before anything is written."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; choose an empty or new folder")
    if out.is_dir() and any(out.iterdir()):
        what = "already holds a dataset" if (out / "dataset.json").exists() else "is not empty"
        raise UserError(f"{out} {what}; choose an empty or new --out")


def _publish(tmp: Path, out: Path) -> None:
    if out.is_dir():
        out.rmdir()  # empty, checked before converting
    os.replace(tmp, out)


def _check_apart(src: Path, out: Path) -> None:
    """Refuse an ``out`` that is ``src``, lies inside it or holds it: the conversion would
    write into the source tree (or the source would be read while ``out`` is replaced)."""
    s, o = src.resolve(), out.resolve()
    if o == s or s in o.parents or o in s.parents:
        where = "is" if o == s else "is inside" if s in o.parents else "contains"
        raise UserError(f"--out {out} {where} --src {src}: choose a folder outside the source")


def convert_cityscapes(
    src: str | os.PathLike,
    out: str | os.PathLike,
    size: tuple[int, int] | None = None,
    depth_encoding: str = METERS16,
    workers: int | None = None,
    classes: int = 19,
    depth: str = "meters",
    layout: str = "miniscapes",
) -> DatasetInfo:
    """Convert every split found under ``src`` (see the module docstring for the procedure).

    Args:
        src: the Cityscapes root.
        out: a new or empty folder.
        size: output ``(H, W)``; default the original size.
        depth_encoding: depth PNG encoding of the MiniScapes layout.
        workers: threads (default: all cores).
        classes: 19 (trainIds) or 7 (categories).
        depth: ``meters`` or ``disparity`` (MTAN layout only).
        layout: ``miniscapes`` or ``mtan``.

    Returns:
        the dataset's description (for the MTAN layout, what the reader will find).

    Raises:
        UserError: bad options (a ``size`` above
            :data:`~scenemtl.codecs.image.MAX_IMAGE_PIXELS`: the readers could not read
            the result), missing folders, unreadable or inconsistent files; nothing is
            left at ``out`` then.
    """
    src, out = Path(src), Path(out)
    if size is not None and (min(size) < 1 or size[0] * size[1] > MAX_IMAGE_PIXELS):
        raise UserError(
            f"--size {size[0]}x{size[1]}: expected 1 to {MAX_IMAGE_PIXELS} pixels (the "
            "largest image the dataset readers take)"
        )
    if classes not in CLASS_SETS:
        raise UserError(f"--classes must be 7 or 19, got {classes}")
    if depth not in DEPTH_MODES:
        raise UserError(f"--depth must be meters or disparity, got {depth!r}")
    if layout not in LAYOUTS:
        raise UserError(f"--layout must be miniscapes or mtan, got {layout!r}")
    if depth == "disparity" and layout == "miniscapes":
        raise UserError("--depth disparity needs --layout mtan (MiniScapes depth PNGs hold meters)")
    splits = [s for s in CITYSCAPES_SPLITS if _stems(src, s)]
    if layout == "mtan":
        splits = [s for s in splits if s != "test"]
    _check_source(src, depth, splits)
    if not splits:
        raise UserError(f"{src}: no *_leftImg8bit.png files found")
    _check_apart(src, out)
    if classes == 7:
        lut, table = label_id_to_category(), cityscapes_category_table()
    else:
        lut, table = label_id_to_train_id(), cityscapes_class_table()
    opts = _Options(size, lut, depth, layout, depth_encoding, f"label_{classes}")
    _check_out(out)
    remove_dead_partials(out)  # what killed conversions to the same --out left
    with staging(out) as tmp:
        info = _convert_all(src, tmp, splits, opts, table, workers)
        if layout == "mtan":
            units = "disparity_px" if depth == "disparity" else "meters"
            write_sidecar(
                tmp,
                "cityscapes",
                units,
                {"labels": classes, "size": list(info.image_size), "converted_from": str(src)},
            )
            info.source.update(depth_units=units, layout="mtan")
        else:
            write_info(tmp, info)
        _publish(tmp, out)
    return info


def _convert_all(
    src: Path,
    out: Path,
    splits: list[str],
    opts: _Options,
    table: list[dict],
    workers: int | None,
) -> DatasetInfo:
    sizes_by_split: dict[str, dict[str, int | bool]] = {}
    image_size: tuple[int, int] | None = opts.size
    for split in splits:
        stems = _stems(src, split)
        with_gt = split != "test"
        convert = partial(_convert_one, src, out, split, opts, with_gt)
        with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
            sizes = set(pool.map(convert, range(len(stems)), *zip(*stems, strict=True)))
        if len(sizes) != 1 or (image_size and sizes != {image_size}):
            raise DataFormatError(f"{src}: images of different sizes {sorted(sizes)}; pass --size")
        image_size = sizes.pop()
        sizes_by_split[split] = {"size": len(stems), "gt": with_gt}
    assert image_size is not None
    lo, hi = encodable_range(opts.encoding)
    return DatasetInfo(
        name="cityscapes",
        image_size=image_size,
        splits=sizes_by_split,
        depth_encoding=opts.encoding,
        depth_range_m=(lo, hi),
        rgb_extension=".png",
        classes=table,
        source={
            "converted_from": str(src),
            "size": list(image_size),
            "classes": len(table),
            "depth": opts.depth,
        },
    )
