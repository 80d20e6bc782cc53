"""Tiny NYUD-v2 and PASCAL-Context trees in Multi-Task-Learning-PyTorch's published layout
and file formats (.jpg/.png images, .npy arrays, .mat files written with scipy.io.savemat
in the structure of the real ones), written by the tests themselves.

Each writer returns what it wrote (the known answers the tests compare the reader with).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import scipy.io
from PIL import Image

NYUD_SIZE = (24, 32)
PASCAL_SIZES = ((20, 28), (26, 18), (16, 30), (22, 22))
"""PASCAL images differ in size (the reader pads them to its canvas)."""


def _png(path: Path, array: np.ndarray, mode: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode=mode).save(path)


def _npy(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, array)


def _list(path: Path, ids: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{i}\n" for i in ids))


def write_nyud_tree(
    root: Path,
    sizes: dict[str, int] | None = None,
    invpt: bool = False,
    seed: int = 0,
    size: tuple[int, int] = NYUD_SIZE,
) -> dict[str, dict[str, Any]]:
    """``NYUD_MT``: gt_sets, images (.jpg; InvPT's copy: .png), segmentation (.png 0..40),
    depth (.npy meters, 0 = invalid), normals (.npy [H,W,3]; InvPT: RGB .png), edge (.npy
    0/1; InvPT: .png 0/255), images of ``size`` (the release's are 425x560). Returns
    id -> the arrays written."""
    rng = np.random.default_rng(seed)
    sizes = sizes or {"train": 3, "val": 2}
    h, w = size
    written: dict[str, dict[str, Any]] = {}
    n = 0
    for split, count in sizes.items():
        ids = [f"img_{5001 + n + k}" for k in range(count)]
        n += count
        _list(root / "gt_sets" / f"{split}.txt", ids)
        for image_id in ids:
            rgb = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            seg = rng.integers(0, 41, (h, w)).astype(np.uint8)  # 0 = not labelled
            depth = rng.uniform(0.5, 9.5, (h, w)).astype(np.float32)
            depth[0] = 0.0
            normals = rng.normal(size=(h, w, 3)).astype(np.float32)
            normals /= np.linalg.norm(normals, axis=-1, keepdims=True)
            normals[1] = 0.0
            edge = (rng.random((h, w)) < 0.2).astype(np.float32)
            if invpt:
                _png(root / "images" / f"{image_id}.png", rgb)
                code = np.clip(np.rint((normals + 1) * 127.5), 0, 255).astype(np.uint8)
                _png(root / "normals" / f"{image_id}.png", code)
                _png(root / "edge" / f"{image_id}.png", (edge * 255).astype(np.uint8))
            else:
                Image.fromarray(rgb).save(_mkdir(root / "images") / f"{image_id}.jpg", quality=95)
                _npy(root / "normals" / f"{image_id}.npy", normals)
                _npy(root / "edge" / f"{image_id}.npy", edge)
            _png(root / "segmentation" / f"{image_id}.png", seg)
            _npy(root / "depth" / f"{image_id}.npy", depth)
            written[image_id] = {
                "split": split,
                "rgb": rgb,
                "segmentation": seg,
                "depth": depth,
                "normals": normals,
                "edge": edge,
            }
    return written


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


# PASCAL-Part's struct layout: anno = (imname, objects); object = (class, class_ind, mask,
# parts); part = (part_name, mask). savemat writes numpy record arrays as MATLAB structs.
ANNO = [("imname", "O"), ("objects", "O")]
OBJECT = [("class", "O"), ("class_ind", "O"), ("mask", "O"), ("parts", "O")]
PART = [("part_name", "O"), ("mask", "O")]


def part_anno(image_name: str, objects: list[dict[str, Any]]) -> np.ndarray:
    """The ``anno`` struct of a PASCAL-Part file: ``objects`` are dicts with ``class``,
    ``class_ind``, ``mask`` and ``parts`` (a list of (name, mask))."""
    objs = np.empty((1, len(objects)), dtype=OBJECT)
    for k, obj in enumerate(objects):
        if obj["parts"]:
            parts = np.empty((1, len(obj["parts"])), dtype=PART)
            for j, (name, mask) in enumerate(obj["parts"]):
                parts[0, j] = (name, mask.astype(np.uint8))
        else:
            parts = np.zeros((0, 0))  # MATLAB's []
        objs[0, k] = (obj["class"], np.array([[obj["class_ind"]]], dtype=np.uint8),
                      obj["mask"].astype(np.uint8), parts)  # fmt: skip
    anno = np.empty((1, 1), dtype=ANNO)
    anno[0, 0] = (image_name, objs)
    return anno


def write_pascal_tree(
    root: Path,
    sizes: dict[str, int] | None = None,
    seed: int = 0,
    image_sizes: tuple[tuple[int, int], ...] = PASCAL_SIZES,
) -> dict[str, dict[str, Any]]:
    """``PASCAL_MT``: ImageSets/Context, JPEGImages, semseg (VOC12 as P PNGs, others in
    pascal-context as L PNGs), pascal-context/trainval LabelMap .mat, human_parts anno
    .mat (a person with parts on every second image, a person without parts and a cat
    elsewhere), normals_distill RGB PNGs, sal_distill L PNGs; ``image_sizes`` in turn
    (PASCAL's own are about 375x500 and 500x375). Returns id -> what was
    written, with ``parts`` the part class map expected (None: no part labels)."""
    rng = np.random.default_rng(seed)
    sizes = sizes or {"train": 4, "val": 2}
    written: dict[str, dict[str, Any]] = {}
    n = 0
    palette = [int(v) for v in rng.integers(0, 256, 768)]
    for split, count in sizes.items():
        ids = [f"2008_{n + k:06d}" for k in range(count)]
        n += count
        _list(root / "ImageSets" / "Context" / f"{split}.txt", ids)
        for k, image_id in enumerate(ids):
            h, w = image_sizes[(n - count + k) % len(image_sizes)]
            rgb = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            Image.fromarray(rgb).save(_mkdir(root / "JPEGImages") / f"{image_id}.jpg", quality=95)
            seg = rng.integers(0, 21, (h, w)).astype(np.uint8)
            seg[rng.random((h, w)) < 0.1] = 255
            if k % 2 == 0:
                im = Image.frombytes("P", (w, h), seg.tobytes())
                im.putpalette(palette)
                im.save(_mkdir(root / "semseg" / "VOC12") / f"{image_id}.png")
            else:
                _png(root / "semseg" / "pascal-context" / f"{image_id}.png", seg)
            # a label map of blocks (with label 427, tvmonitor, valid for normals)
            blocks = rng.choice([0, 2, 15, 284, 427, 459], size=(4, 4))
            label_map = np.kron(blocks, np.ones((h // 4 + 1, w // 4 + 1)))[:h, :w]
            label_map = label_map.astype(np.uint16)
            scipy.io.savemat(
                _mkdir(root / "pascal-context" / "trainval") / f"{image_id}.mat",
                {"LabelMap": label_map},
                do_compression=True,
            )
            normals_png = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            _png(root / "normals_distill" / f"{image_id}.png", normals_png)
            sal = rng.integers(0, 256, (h, w), dtype=np.uint8)
            _png(root / "sal_distill" / f"{image_id}.png", sal)
            objects, parts = _objects(rng, (h, w), with_parts=k % 2 == 0)
            scipy.io.savemat(
                _mkdir(root / "human_parts") / f"{image_id}.mat",
                {"anno": part_anno(f"{image_id}.jpg", objects)},
                do_compression=k % 2 == 1,
            )
            written[image_id] = {
                "split": split,
                "rgb": rgb,
                "semseg": seg,
                "label_map": label_map,
                "normals_png": normals_png,
                "saliency": sal,
                "parts": parts,
            }
    return written


def _objects(
    rng: np.random.Generator, size: tuple[int, int], with_parts: bool
) -> tuple[list[dict[str, Any]], np.ndarray | None]:
    """Objects of one image and the part map the papers' loader derives from them."""
    h, w = size
    cat = np.zeros(size, dtype=bool)
    cat[: h // 3, : w // 3] = True
    person = np.zeros(size, dtype=bool)
    person[h // 3 :, w // 3 :] = True
    objects: list[dict[str, Any]] = [
        {"class": "cat", "class_ind": 8, "mask": cat, "parts": [("head", cat)]},
    ]
    if not with_parts:
        objects.append({"class": "person", "class_ind": 15, "mask": person, "parts": []})
        return objects, None
    head = person & (np.arange(h)[:, None] < h // 2)
    luarm = person & (np.arange(w)[None, :] >= w - 3)
    rfoot = person & (np.arange(h)[:, None] >= h - 2)
    objects.append(
        {
            "class": "person",
            "class_ind": 15,
            "mask": person,
            "parts": [("head", head), ("luarm", luarm), ("rfoot", rfoot)],
        }
    )
    # the known answer, painted in file order: head 1, upper arm 3, foot = lower leg 6
    expected = np.zeros(size, dtype=np.int64)
    expected[head] = 1
    expected[luarm] = 3
    expected[rfoot] = 6
    return objects, expected
