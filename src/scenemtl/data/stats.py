"""``scenemtl data stats``: dataset statistics that training reads from dataset.json."""

from __future__ import annotations

import dataclasses
import io
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from scenemtl.atomic import atomic_write_bytes
from scenemtl.data.format import (
    IGNORE_INDEX,
    DatasetInfo,
    label_path,
    read_depth,
    read_info,
    read_semseg,
    write_info,
)
from scenemtl.errors import DataFormatError

_HIST_BINS = 128


@dataclasses.dataclass
class _Accumulator:
    """Float64 running sums; merging two is exact up to rounding."""

    count: int = 0
    pixels: int = 0
    # valid count, sum/sum of squares of meters, of log-meters, of inverse meters
    sums: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(7))
    class_counts: np.ndarray = dataclasses.field(
        default_factory=lambda: np.zeros(256, dtype=np.int64)
    )
    hist_m: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(_HIST_BINS))
    hist_log: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(_HIST_BINS))

    def merge(self, other: _Accumulator) -> None:
        self.count += other.count
        self.pixels += other.pixels
        self.sums += other.sums
        self.class_counts += other.class_counts
        self.hist_m += other.hist_m
        self.hist_log += other.hist_log


def _accumulate(
    root: Path, split: str, index: int, lo: float, hi: float, num_classes: int
) -> _Accumulator:
    acc = _Accumulator(count=1)
    depth = read_depth(label_path(root, split, "depth", index)).astype(np.float64)
    valid = depth[depth > 0]
    acc.pixels = depth.size
    log_d, inv_d = np.log(valid), 1.0 / valid
    acc.sums += [
        valid.size,
        valid.sum(),
        (valid**2).sum(),
        log_d.sum(),
        (log_d**2).sum(),
        inv_d.sum(),
        (inv_d**2).sum(),
    ]
    acc.hist_m += np.histogram(valid, bins=_HIST_BINS, range=(0, hi))[0]
    acc.hist_log += np.histogram(log_d, bins=_HIST_BINS, range=(np.log(lo), np.log(hi)))[0]
    path = label_path(root, split, "semseg", index)
    counts = np.bincount(read_semseg(path).ravel(), minlength=256)
    outside = np.flatnonzero(counts[num_classes:IGNORE_INDEX]) + num_classes
    if outside.size:
        # statistics that quietly count them as ignored would hide what training refuses
        raise DataFormatError(
            f"{path}: label values {[int(v) for v in outside[:5]]} outside the "
            f"{num_classes}-class table (0..{num_classes - 1}) and {IGNORE_INDEX}"
        )
    acc.class_counts += counts
    return acc


def _mean_std(n: float, s: float, s2: float) -> dict[str, float]:
    mean = s / n
    return {"mean": float(mean), "std": float(np.sqrt(max(s2 / n - mean**2, 0.0)))}


def compute_stats(
    root: str | os.PathLike,
    split: str = "train",
    workers: int | None = None,
    info: DatasetInfo | None = None,
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Statistics of ``split`` over valid pixels, and the depth histograms for plotting.

    ``info`` describes the dataset when its ``dataset.json`` is not written yet (the
    generator computes the statistics before it writes it).
    """
    root = Path(root)
    info = info if info is not None else read_info(root)
    if not info.has_gt(split):
        raise DataFormatError(f"{root}: split {split!r} has no ground truth to compute stats on")
    n = info.split_size(split)
    if n == 0:
        raise DataFormatError(f"{root}: split {split!r} is empty")
    lo, hi = info.depth_range_m
    total = _Accumulator()
    with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
        classes = info.num_classes
        for acc in pool.map(lambda i: _accumulate(root, split, i, lo, hi, classes), range(n)):
            total.merge(acc)
    count, s, s2, ls, ls2, is_, is2 = total.sums
    if count == 0:
        raise DataFormatError(f"{root}: split {split!r} has no valid depth pixel")
    labelled = total.class_counts[: info.num_classes].sum()
    freq = total.class_counts[: info.num_classes] / max(labelled, 1)
    stats = {
        "split": split,
        "num_images": int(total.count),
        "valid_depth_fraction": float(count / total.pixels),
        "depth_m": _mean_std(count, s, s2),
        "depth_log": _mean_std(count, ls, ls2),
        "depth_inv": _mean_std(count, is_, is2),
        "class_pixel_frequency": [float(f) for f in freq],
        "ignored_pixel_fraction": float(1 - labelled / total.pixels),
    }
    hist = {
        "meters": total.hist_m,
        "meters_edges": np.linspace(0, hi, _HIST_BINS + 1),
        "log": total.hist_log,
        "log_edges": np.linspace(np.log(lo), np.log(hi), _HIST_BINS + 1),
    }
    return stats, hist


def plot_histograms(hist: dict[str, np.ndarray], out_dir: Path, title: str) -> list[Path]:
    """Depth histograms in meters and log-meters as PNGs; returns the paths written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for key, xlabel in (("meters", "depth [m]"), ("log", "log depth [log m]")):
        counts, edges = hist[key], hist[f"{key}_edges"]
        fig, ax = plt.subplots(figsize=(6, 3.2), dpi=100)
        ax.bar(edges[:-1], counts / max(counts.sum(), 1), width=np.diff(edges), align="edge")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("fraction of valid pixels")
        ax.set_title(f"{title}: {xlabel}")
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        plt.close(fig)
        path = out_dir / f"depth_hist_{key}.png"
        atomic_write_bytes(path, buf.getvalue())
        written.append(path)
    return written


def write_stats(
    root: str | os.PathLike, plots_dir: str | os.PathLike | None = None, split: str = "train"
) -> tuple[DatasetInfo, list[Path]]:
    """Compute stats, store them in dataset.json (atomically) and plot histograms."""
    root = Path(root)
    stats, hist = compute_stats(root, split)
    info = dataclasses.replace(read_info(root), stats=stats)
    write_info(root, info)
    plots = plot_histograms(hist, Path(plots_dir) if plots_dir else root / "stats", info.name)
    return info, plots


def format_stats(stats: dict[str, Any], class_names: list[str] | None = None) -> str:
    lines = [
        f"split {stats['split']}: {stats['num_images']} images, "
        f"{100 * stats['valid_depth_fraction']:.1f}% valid depth pixels",
    ]
    for key, unit in (("depth_m", "m"), ("depth_log", "log m"), ("depth_inv", "1/m")):
        lines.append(
            f"  {key:10s} mean {stats[key]['mean']:.4g} std {stats[key]['std']:.4g} {unit}"
        )
    lines.append("  class pixel frequency:")
    freq = stats["class_pixel_frequency"]
    names = class_names if class_names is not None else [f"class {i}" for i in range(len(freq))]
    for name, f in zip(names, stats["class_pixel_frequency"], strict=True):
        lines.append(f"    {name:14s} {100 * f:6.2f}%")
    return "\n".join(lines)
