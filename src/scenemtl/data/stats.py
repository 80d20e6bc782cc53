"""``scenemtl data stats``: dataset statistics that training reads from dataset.json."""

from __future__ import annotations

import dataclasses
import io
import os
from collections.abc import Collection
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from scenemtl.atomic import atomic_write_bytes
from scenemtl.data.format import (
    DatasetInfo,
    label_path,
    read_info,
    write_info,
)
from scenemtl.errors import DataFormatError
from scenemtl.tasks.statistics import Histogram, TargetStatistics

if TYPE_CHECKING:
    from scenemtl.tasks.base import Task


def _tasks_with_statistics(info: DatasetInfo) -> list[Task]:
    from scenemtl.tasks import build_tasks, dataset_task_specs

    return [t for t in build_tasks(dataset_task_specs(info)) if t.statistics() is not None]


def _accumulate(
    root: Path, split: str, index: int, tasks: list[Task], partial: Collection[str] = ()
) -> list[TargetStatistics]:
    """Each task's statistics of one sample (merged by the caller); a task of ``partial``
    (dataset.json "partial_tasks") whose file is missing adds nothing."""
    out = []
    for task in tasks:
        one = task.statistics()
        path = label_path(root, split, task.name, index)
        if task.name not in partial or path.exists():
            one.add(task.read_target(path))  # a declared-partial task's missing file: none
        out.append(one)
    return out


def compute_stats(
    root: str | os.PathLike,
    split: str = "train",
    workers: int | None = None,
    info: DatasetInfo | None = None,
) -> tuple[dict[str, Any], dict[str, Histogram]]:
    """Statistics of ``split`` (each task's, :meth:`~scenemtl.tasks.base.Task.statistics`)
    and the histograms to plot, by file name stem (``<task>_hist_<name>``).

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
    tasks = _tasks_with_statistics(info)
    totals = [task.statistics() for task in tasks]
    partial = tuple(getattr(info, "partial_tasks", ()))
    with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
        for found in pool.map(lambda i: _accumulate(root, split, i, tasks, partial), range(n)):
            for total, one in zip(totals, found, strict=True):
                total.merge(one)
    stats: dict[str, Any] = {"split": split, "num_images": n}
    hist: dict[str, Histogram] = {}
    for task, total in zip(tasks, totals, strict=True):
        stats.update(total.result(f"{root}: split {split!r}"))
        hist.update({f"{task.name}_hist_{k}": h for k, h in total.histograms().items()})
    return stats, hist


def plot_histograms(hist: dict[str, Histogram], out_dir: Path, title: str) -> list[Path]:
    """Each histogram as ``<out_dir>/<stem>.png`` (share of pixels per bin); returns the
    paths written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for stem, h in hist.items():
        fig, ax = plt.subplots(figsize=(6, 3.2), dpi=100)
        ax.bar(
            h.edges[:-1], h.counts / max(h.counts.sum(), 1), width=np.diff(h.edges), align="edge"
        )
        ax.set_xlabel(h.xlabel)
        ax.set_ylabel("fraction of valid pixels")
        ax.set_title(f"{title}: {h.xlabel}")
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        plt.close(fig)
        path = out_dir / f"{stem}.png"
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
