"""PASCAL-Context as Multi-Task-Learning-PyTorch released it (``PASCAL_MT``; ATRC and
InvPT reuse the same files).

The five-task protocol of ASTMT, MTI-Net, ATRC and InvPT: 21-class segmentation, human
parts, saliency, surface normals and boundaries on 4998 training and 5105 validation
images::

    ROOT/ImageSets/Context/{train,val}.txt   image ids, one per line
    ROOT/JPEGImages/{id}.jpg                 RGB, at most 500x500
    ROOT/semseg/VOC12/{id}.png               8-bit 0..20 (VOC classes), 255 = not labelled;
    ROOT/semseg/pascal-context/{id}.png        the VOC12 file when both exist
    ROOT/pascal-context/trainval/{id}.mat    ``LabelMap``: PASCAL-Context's 459-label map
    ROOT/human_parts/{id}.mat                ``anno``: PASCAL-Part's objects and parts
    ROOT/normals_distill/{id}.png            RGB, 255 (n + 1) / 2 (distilled normals)
    ROOT/sal_distill/{id}.png                8-bit saliency (distilled)

How each becomes a target, as the reference loaders read it:

* ``semseg``: the PNG's values (a P image's indices), 21 classes, 255 ignored.
* ``human_parts``: from ``anno.objects``: every object of class 15 (person) with parts
  paints its parts, in file order, with the 6-part grouping (:data:`PART_GROUPS`) over a
  zero (background) canvas. An image where that paints no pixel has **no label** (the
  loaders' ``AddIgnoreRegions`` turns such a map into all-ignore): the sample lacks the
  key. 7 classes: background and the 6 parts.
* ``saliency``: ``value / 255 > 0.5``.
* ``normals``: ``2 v / 255 - 1``, renormalized, kept only on pixels whose ``LabelMap``
  label is one of :data:`NORMALS_VALID_LABELS`; zero (invalid) elsewhere.
* ``boundaries``: :func:`scenemtl.data.edgemaps.label_boundaries` of ``LabelMap``; the
  boundary metric's ``maxDist`` on PASCAL-Context is 0.0075 of the image diagonal.

Images differ in size, so every sample is padded to a 512x512 canvas
(:mod:`scenemtl.data.mtlpytorch`), as InvPT pads its evaluation images.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from scenemtl.codecs.classes import HUMAN_PART_CLASSES
from scenemtl.data.edgemaps import label_boundaries
from scenemtl.data.mtlfiles import (
    BenchTask,
    Layout,
    binary_from_fraction,
    check_plane,
    read_index_png,
    read_mat,
)
from scenemtl.data.nyud import class_table
from scenemtl.errors import DataFormatError
from scenemtl.evaluation.boundary import MAX_DIST

VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat",
    "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant",
    "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip
"""The 21 semantic classes (VOC's 20 and background), ids 0..20."""

PART_GROUPS = {  # values index HUMAN_PART_CLASSES
    **dict.fromkeys(
        ("hair", "head", "lear", "lebrow", "leye", "mouth", "nose", "rear", "rebrow", "reye"), 1
    ),
    **dict.fromkeys(("neck", "torso"), 2),
    **dict.fromkeys(("luarm", "ruarm"), 3),
    **dict.fromkeys(("lhand", "llarm", "rhand", "rlarm"), 4),
    **dict.fromkeys(("luleg", "ruleg"), 5),
    **dict.fromkeys(("lfoot", "llleg", "rfoot", "rlleg"), 6),
}
"""PASCAL-Part's 24 person part names -> part class (the loaders' ``num_human_parts=6``)."""

PERSON_CLASS = 15
"""PASCAL-Part's class index of "person"."""

MAX_CONTEXT_LABEL = 459
"""PASCAL-Context's labels are 1..459 (0: not labelled)."""

NORMALS_VALID_LABELS = frozenset((
    3, 4, 6, 9, 10, 11, 13, 15, 17, 18, 22, 23, 29, 30, 33, 34, 36, 37, 38, 39, 41, 43, 46,
    49, 50, 51, 53, 55, 56, 59, 61, 62, 65, 66, 68, 69, 72, 73, 78, 83, 84, 85, 87, 88, 95,
    96, 101, 104, 105, 107, 111, 113, 115, 122, 124, 135, 141, 142, 143, 146, 150, 154, 157,
    158, 159, 165, 172, 174, 181, 183, 184, 191, 193, 195, 197, 199, 202, 213, 215, 216,
    219, 220, 223, 225, 228, 230, 232, 233, 238, 239, 242, 243, 246, 250, 251, 252, 255,
    260, 261, 263, 269, 272, 273, 275, 281, 283, 284, 285, 286, 287, 288, 290, 291, 292,
    293, 295, 304, 307, 309, 310, 314, 315, 319, 323, 329, 330, 331, 336, 342, 345, 349,
    350, 351, 352, 355, 357, 368, 370, 371, 374, 379, 380, 383, 384, 397, 401, 403, 405,
    407, 408, 411, 412, 413, 414, 417, 419, 421, 423, 427, 429, 430, 432, 440, 441, 442,
    443, 444, 446, 454, 457,
))  # fmt: skip
"""The 170 PASCAL-Context labels whose distilled normals count: the classes named in both
the loaders' ``nyu_classes.json`` and ``context_classes.json`` (except "unknown"), plus
"tvmonitor" (label 427) -- computed from those two files of Multi-Task-Learning-PyTorch
(identical in ATRC and InvPT)."""

_NORMALS_VALID_LUT = np.isin(np.arange(MAX_CONTEXT_LABEL + 1), sorted(NORMALS_VALID_LABELS))
"""label -> its normals count (a lookup: the label map is checked to be 0..459 first)."""

PASCAL_CANVAS = (512, 512)
"""Every sample is padded to this size (PASCAL images are at most 500x500)."""


def _image(root: Path, image_id: str) -> Path:
    return root / "JPEGImages" / f"{image_id}.jpg"


def _label_map(root: Path, image_id: str, size: tuple[int, int]) -> np.ndarray:
    """int64 [H,W] PASCAL-Context labels 0..459 of ``pascal-context/trainval/{id}.mat``."""
    path = root / "pascal-context" / "trainval" / f"{image_id}.mat"
    values = np.asarray(read_mat(path, ("LabelMap",))["LabelMap"])
    if values.dtype.kind not in "fiu":
        raise DataFormatError(f"{path}: LabelMap dtype {values.dtype}, expected numbers")
    values = check_plane(path, values, size, "LabelMap")
    if values.dtype.kind == "f" and not (
        np.isfinite(values).all() and (values == np.rint(values)).all()
    ):
        raise DataFormatError(f"{path}: LabelMap values are not whole numbers")
    labels = values.astype(np.int64)
    if labels.size and (labels.min() < 0 or labels.max() > MAX_CONTEXT_LABEL):
        raise DataFormatError(
            f"{path}: LabelMap values {labels.min()}..{labels.max()} outside 0..{MAX_CONTEXT_LABEL}"
        )
    return labels


def read_semseg(root: Path, image_id: str, size: tuple[int, int]) -> np.ndarray:
    """int64 [H,W]: 0..20, 255 = not labelled."""
    path = root / "semseg" / "VOC12" / f"{image_id}.png"
    if not path.exists():
        path = root / "semseg" / "pascal-context" / f"{image_id}.png"
    values = check_plane(path, read_index_png(path), size, "segmentation").astype(np.int64)
    bad = (values >= len(VOC_CLASSES)) & (values != 255)
    if bad.any():
        found = sorted({int(v) for v in np.unique(values[bad])})[:5]
        raise DataFormatError(f"{path}: label values {found} outside 0..20 and 255")
    return values


def read_edges(root: Path, image_id: str, size: tuple[int, int]) -> np.ndarray:
    """int64 [H,W] {0, 1} from the LabelMap (module doc)."""
    return label_boundaries(_label_map(root, image_id, size)).astype(np.int64)


def read_saliency(root: Path, image_id: str, size: tuple[int, int]) -> np.ndarray:
    """int64 [H,W] {0, 1}: ``value / 255 > 0.5``."""
    path = root / "sal_distill" / f"{image_id}.png"
    values = check_plane(path, read_index_png(path), size, "saliency map")
    return binary_from_fraction(path, values / 255.0, "saliency")


def read_normals(root: Path, image_id: str, size: tuple[int, int]) -> np.ndarray:
    """float32 [3,H,W] unit vectors on the valid labels, zero elsewhere."""
    from scenemtl.data.nyud import normals_from_png

    path = root / "normals_distill" / f"{image_id}.png"
    normals = normals_from_png(path)
    check_plane(path, normals[0], size, "normals")
    valid = _NORMALS_VALID_LUT[_label_map(root, image_id, size)]
    normals[:, ~valid] = 0.0
    return normals


def _field(record: Any, index: int, path: Path, what: str) -> np.ndarray:
    """Field ``index`` of a struct record (an array, as scipy reads every field)."""
    try:
        value = record[index]
    except (IndexError, KeyError, TypeError, ValueError):
        raise DataFormatError(f"{path}: anno has no {what}") from None
    if not isinstance(value, np.ndarray):
        raise DataFormatError(f"{path}: anno {what} is not an array")
    return value


def _scalar(value: np.ndarray, path: Path, what: str) -> Any:
    flat = np.asarray(value).ravel()
    if flat.size != 1:
        raise DataFormatError(f"{path}: {what} holds {flat.size} values, expected one")
    return flat[0]


def _mask(value: np.ndarray, size: tuple[int, int], path: Path, what: str) -> np.ndarray:
    mask = np.asarray(value)
    if mask.dtype.kind not in "biuf" or mask.shape != size:
        raise DataFormatError(
            f"{path}: {what} is {mask.dtype} {mask.shape}, expected a {size[0]}x{size[1]} mask"
        )
    return mask.astype(bool)


def read_parts(root: Path, image_id: str, size: tuple[int, int]) -> np.ndarray | None:
    """int64 [H,W] part classes 0..6, or None when the image has no part label.

    ``anno`` is PASCAL-Part's struct ``(imname, objects)``; each object
    ``(class, class_ind, mask, parts)`` and each part ``(part_name, mask)``, read by
    position as the reference loaders read them. As there, an image counts only if some
    person's mask is not empty; then every person with parts paints them in file order;
    a map that stays all background is no label (their ``AddIgnoreRegions``).
    """
    path = root / "human_parts" / f"{image_id}.mat"
    anno = read_mat(path, ("anno",))["anno"]
    if anno.size != 1 or anno.dtype.names is None:
        raise DataFormatError(f"{path}: anno is {anno.dtype} {anno.shape}, expected one struct")
    record = anno.reshape(-1)[0]
    objects = _field(record, 1, path, "objects").reshape(-1)
    target = np.zeros(size, dtype=np.int64)
    has_person = False
    for n, obj in enumerate(objects):
        where = f"object {n + 1}"
        class_ind = _scalar(_field(obj, 1, path, f"{where} class_ind"), path, f"{where} class")
        if class_ind != PERSON_CLASS:
            continue
        person = _mask(_field(obj, 2, path, f"{where} mask"), size, path, f"{where} mask")
        has_person |= bool(person.any())
        for k, part in enumerate(_field(obj, 3, path, f"{where} parts").reshape(-1)):
            name = str(_scalar(_field(part, 0, path, f"{where} part name"), path, "part name"))
            if name not in PART_GROUPS:
                raise DataFormatError(f"{path}: {where} has unknown part {name!r}")
            mask = _mask(_field(part, 1, path, "part mask"), size, path, f"{where} part {k + 1}")
            target[mask] = PART_GROUPS[name]
    if not has_person or not target.any():
        return None
    return target


PASCAL_CONTEXT = Layout(
    name="pascal_context",
    markers=("ImageSets", "JPEGImages"),
    split_list=lambda root, split: root / "ImageSets" / "Context" / f"{split}.txt",
    image=_image,
    tasks={
        "semseg": BenchTask(
            {"kind": "segmentation", "classes": class_table(VOC_CLASSES)}, read_semseg
        ),
        "human_parts": BenchTask(
            {"kind": "segmentation", "classes": [dict(c) for c in HUMAN_PART_CLASSES]}, read_parts
        ),
        "saliency": BenchTask({"kind": "saliency"}, read_saliency),
        "normals": BenchTask({"kind": "normals"}, read_normals),
        "boundaries": BenchTask(
            {"kind": "boundaries", "max_dist": MAX_DIST["pascal_context"]}, read_edges
        ),
    },
    canvas=PASCAL_CANVAS,
    partial_tasks=("human_parts",),
)
"""The PASCAL-Context release: tasks in the papers' order."""
