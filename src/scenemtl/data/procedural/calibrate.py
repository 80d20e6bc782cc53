"""Difficulty calibration: how far do single cues get on a dataset?

``python -m scenemtl.data.procedural.calibrate [--root DIR]`` fits cue-only predictors
on the train split and scores them on val with the project's metrics:

* semseg from colour alone: a lookup table from the quantized RGB of a pixel to the
  most frequent train class of that colour; then the same with the pixel's image row;
* depth from the image row alone: the per-row median train depth; then per (class,
  row) with the ground-truth class given (an oracle for how much semantics help);
  a constant prediction is the floor (its SI-logRMSE is the spread of log depth).

A dataset where colour alone gives a high mIoU, or the row alone a low SI-logRMSE,
would not tell the architectures apart.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np

from scenemtl.codecs.classes import CITYSCAPES_NUM_CLASSES, class_names
from scenemtl.data.format import find_rgb, label_path, read_depth, read_info, read_rgb, read_semseg
from scenemtl.errors import UserError

LEVELS = 16
"""Quantization levels per colour channel (16^3 colour cells)."""
ROW_BANDS = 8
DEPTH_BINS = 512


def _load(root: Path, split: str, limit: int | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    info = read_info(root)
    if not info.has_gt(split) or info.split_size(split) == 0:
        raise UserError(f"{root}: split {split!r} has no images with ground truth")
    n = info.split_size(split) if limit is None else min(limit, info.split_size(split))
    rgb = np.stack([read_rgb(find_rgb(root, split, i, info.rgb_extension)) for i in range(n)])
    sem = np.stack([read_semseg(label_path(root, split, "semseg", i)) for i in range(n)])
    dep = np.stack([read_depth(label_path(root, split, "depth", i)) for i in range(n)])
    return rgb, sem, dep


def _colour_cell(rgb: np.ndarray) -> np.ndarray:
    q = (rgb.astype(np.int64) * LEVELS) // 256
    return (q[..., 0] * LEVELS + q[..., 1]) * LEVELS + q[..., 2]


def miou(pred: np.ndarray, gt: np.ndarray) -> float:
    """Mean IoU in percent over classes present in prediction or ground truth (255 ignored)."""
    keep = gt < CITYSCAPES_NUM_CLASSES
    c = CITYSCAPES_NUM_CLASSES
    conf = np.bincount(gt[keep].astype(np.int64) * c + pred[keep], minlength=c * c).reshape(c, c)
    tp = np.diag(conf).astype(float)
    union = conf.sum(0) + conf.sum(1) - tp
    present = union > 0
    return float(100 * np.mean(tp[present] / union[present]))


def si_log_rmse(pred: np.ndarray, gt: np.ndarray) -> float:
    """SI-logRMSE (x100) over valid pixels of each image, averaged over images.

    ``pred`` and ``gt`` are [N, H, W] meters; gt 0 = invalid."""
    scores = []
    for p, g in zip(pred, gt, strict=True):
        valid = g > 0
        if not valid.any():
            continue
        d = np.log(p[valid].astype(np.float64)) - np.log(g[valid].astype(np.float64))
        scores.append(100 * np.sqrt(max(np.mean(d * d) - np.mean(d) ** 2, 0.0)))
    return float(np.mean(scores))


def _lookup_classifier(keys_train, labels_train, keys_val, n_keys: int) -> np.ndarray:
    """Most frequent train class per key; unseen keys fall back to the overall mode."""
    c = CITYSCAPES_NUM_CLASSES
    ok = labels_train < c
    counts = np.bincount(keys_train[ok] * c + labels_train[ok], minlength=n_keys * c)
    counts = counts.reshape(n_keys, c)
    table = counts.argmax(1)
    table[counts.sum(1) == 0] = np.bincount(labels_train[ok], minlength=c).argmax()
    return table[keys_val]


def _median_depth(
    keys: np.ndarray, depth: np.ndarray, n_keys: int, lo: float, hi: float
) -> np.ndarray:
    """Median depth per key from a histogram of log depth (valid pixels only)."""
    valid = depth > 0
    logd = np.log(np.clip(depth[valid], lo, hi))
    b = np.clip(
        ((logd - np.log(lo)) / (np.log(hi) - np.log(lo)) * DEPTH_BINS).astype(np.int64),
        0,
        DEPTH_BINS - 1,
    )
    hist = np.bincount(keys[valid] * DEPTH_BINS + b, minlength=n_keys * DEPTH_BINS).reshape(
        n_keys, DEPTH_BINS
    )
    cum = np.cumsum(hist, axis=1)
    total = cum[:, -1:]
    mid = (cum >= np.maximum(total, 1) / 2).argmax(axis=1)
    centres = np.exp(
        np.log(lo) + (np.arange(DEPTH_BINS) + 0.5) / DEPTH_BINS * (np.log(hi) - np.log(lo))
    )
    med = centres[mid]
    # Keys never seen with valid depth get the global median.
    glob = np.exp(np.median(logd)) if len(logd) else lo
    return np.where(total[:, 0] > 0, med, glob)


def measure(root: str | os.PathLike, train_limit: int | None = None) -> dict[str, float]:
    """Cue-only baselines of the dataset at ``root`` (fit on train, scored on val)."""
    root = Path(root)
    info = read_info(root)
    lo, hi = info.depth_range_m
    rgb_t, sem_t, dep_t = _load(root, "train", train_limit)
    rgb_v, sem_v, dep_v = _load(root, "val", None)
    h = sem_t.shape[1]
    n_col = LEVELS**3
    col_t, col_v = _colour_cell(rgb_t), _colour_cell(rgb_v)
    pred = _lookup_classifier(col_t.ravel(), sem_t.ravel(), col_v.ravel(), n_col)
    colour_miou = miou(pred, sem_v.ravel())
    width = sem_t.shape[2]

    def band(n: int) -> np.ndarray:
        rows = (np.arange(h) * ROW_BANDS // h)[None, :, None]
        return rows * np.ones((n, 1, width), np.int64)

    key_t = col_t * ROW_BANDS + band(len(sem_t))
    key_v = col_v * ROW_BANDS + band(len(sem_v))
    pred = _lookup_classifier(key_t.ravel(), sem_t.ravel(), key_v.ravel(), n_col * ROW_BANDS)
    colour_row_miou = miou(pred, sem_v.ravel())

    rows_t = np.broadcast_to(np.arange(h)[None, :, None], dep_t.shape)
    row_med = _median_depth(rows_t.ravel(), dep_t.ravel(), h, lo, hi)
    row_pred = np.broadcast_to(row_med[None, :, None], dep_v.shape)
    c = CITYSCAPES_NUM_CLASSES
    cls_t = np.minimum(sem_t.astype(np.int64), c - 1)
    cls_v = np.minimum(sem_v.astype(np.int64), c - 1)
    cr_med = _median_depth((cls_t * h + rows_t).ravel(), dep_t.ravel(), c * h, lo, hi)
    rows_v = np.broadcast_to(np.arange(h)[None, :, None], dep_v.shape)
    cr_pred = cr_med[cls_v * h + rows_v]
    return {
        "semseg_colour_only_miou": colour_miou,
        "semseg_colour_and_row_miou": colour_row_miou,
        "depth_constant_silog": si_log_rmse(np.full_like(dep_v, 20.0), dep_v),
        "depth_row_prior_silog": si_log_rmse(row_pred, dep_v),
        "depth_class_and_row_oracle_silog": si_log_rmse(cr_pred, dep_v),
        "train_images": float(len(sem_t)),
        "val_images": float(len(sem_v)),
    }


def class_table(root: str | os.PathLike, split: str = "train") -> list[tuple[str, float, float]]:
    """(class name, % of labelled pixels, % of images containing it) for a split."""
    root = Path(root)
    info = read_info(root)
    c = CITYSCAPES_NUM_CLASSES
    pixels = np.zeros(c, np.int64)
    images = np.zeros(c, np.int64)
    n = info.split_size(split)
    for i in range(n):
        counts = np.bincount(
            read_semseg(label_path(root, split, "semseg", i)).ravel(), minlength=256
        )[:c]
        pixels += counts
        images += counts > 0
    share = 100 * pixels / max(int(pixels.sum()), 1)
    return [
        (name, float(share[k]), float(100 * images[k] / max(n, 1)))
        for k, name in enumerate(class_names())
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Cue-only baselines of a dataset.")
    parser.add_argument("--root", default=None, help="dataset root (default: the default synth)")
    parser.add_argument("--train-limit", type=int, default=None, help="use at most N train images")
    args = parser.parse_args(argv)
    if args.root is None:
        from scenemtl.data.procedural import cached_dataset

        root = cached_dataset()
    else:
        root = Path(args.root)
    res = measure(root, args.train_limit)
    print(
        f"cue-only baselines of {root} (fit on {int(res['train_images'])} train, "
        f"scored on {int(res['val_images'])} val images)"
    )
    print("| predictor | metric | value |")
    print("|---|---|---|")
    print(
        f"| colour only (16^3 RGB cells -> class) | mIoU | {res['semseg_colour_only_miou']:.1f} |"
    )
    print(f"| colour + image row band | mIoU | {res['semseg_colour_and_row_miou']:.1f} |")
    print(f"| constant depth | SI-logRMSE | {res['depth_constant_silog']:.1f} |")
    print(f"| per-row median depth | SI-logRMSE | {res['depth_row_prior_silog']:.1f} |")
    oracle = res["depth_class_and_row_oracle_silog"]
    print(f"| per-(true class, row) median depth | SI-logRMSE | {oracle:.1f} |")
    print()
    print("| class | % of train pixels | % of train images |")
    print("|---|---:|---:|")
    for name, share, present in class_table(root):
        print(f"| {name} | {share:.2f} | {present:.0f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
