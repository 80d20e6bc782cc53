"""``scenemtl data check``: read every file of a dataset and report every problem.

Read-only by construction: nothing here opens a file for writing.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from scenemtl.data.format import (
    INDEX_NAME,
    RGB_EXTENSIONS,
    DatasetInfo,
    find_rgb,
    info_path,
    label_path,
    open_image,
    read_info,
    rgb_indices,
    split_size_problem,
)
from scenemtl.data.mtan import check_mtan, is_mtan_root
from scenemtl.data.mtlpytorch import bench_layout, check_bench
from scenemtl.errors import DataFormatError, UserError


def _tasks(info: DatasetInfo) -> list:
    """Task objects of every task the dataset provides (each checks its own files)."""
    from scenemtl.tasks import build_tasks, dataset_task_specs

    return build_tasks(dataset_task_specs(info))


def _check_sample(root: Path, info: DatasetInfo, tasks: list, split: str, index: int) -> list[str]:
    problems: list[str] = []
    h, w = info.image_size
    rgb_file = find_rgb(root, split, index, info.rgb_extension)
    sizes: dict[str, tuple[int, int]] = {}
    try:
        rgb = open_image(rgb_file)
        if rgb.mode != "RGB":
            problems.append(f"{rgb_file}: mode {rgb.mode}, expected RGB")
        sizes["rgb"] = (rgb.height, rgb.width)
    except DataFormatError as e:
        problems.append(str(e))
    if info.has_gt(split):
        for task in tasks:
            path = label_path(root, split, task.name, index)
            if task.name in getattr(info, "partial_tasks", ()) and not path.exists():
                continue  # declared partial: this sample has no label for the task
            size, found = task.check_target(path)
            problems += found
            if size is not None:
                sizes[task.name] = size
    for modality, size in sizes.items():
        if size != (h, w):
            problems.append(
                f"{root / split / modality}/{index}: size {size[1]}x{size[0]} differs from "
                f"dataset.json image_size {w}x{h}"
            )
    return problems


def _check_extra_files(root: Path, info: DatasetInfo, split: str) -> list[str]:
    problems = []
    n = info.split_size(split)
    for modality in info.task_folders:
        folder = root / split / modality
        if not folder.is_dir():
            if modality == "rgb" or info.has_gt(split):
                problems.append(f"{folder}: missing directory")
            continue
        for entry in sorted(os.listdir(folder)):
            match = INDEX_NAME.match(entry)
            allowed = RGB_EXTENSIONS if modality == "rgb" else (".png",)
            if not match or f".{match.group(2)}" not in allowed:
                problems.append(f"{folder / entry}: unexpected file (names are <index>.png)")
            elif int(match.group(1)) >= n:
                problems.append(f"{folder / entry}: index beyond split size {n}")
    return problems


MISSING_NAMED = 1000
"""How many more images than ``rgb/`` holds a split may declare and still have each
missing file named; a bigger claim is reported as one problem and not followed."""


def _sample_jobs(root: Path, info: DatasetInfo, split: str, jobs: list) -> list[str]:
    """Queue the samples of ``split`` to check, only as many as the disk backs.

    A split that declares a few more images than ``rgb/`` holds gets every missing file
    named. One that declares far more (a typo, or 1e12) is one problem, and only the
    files present plus as many indices as there are files are read: memory never
    follows the claim."""
    n = info.split_size(split)
    problem = split_size_problem(root, info, split)
    present = rgb_indices(root, split) if problem else set()
    if problem is None or n <= len(present) + MISSING_NAMED:
        jobs += [(split, i) for i in range(n)]
        return []
    indices = {i for i in present if i < n} | set(range(len(present)))
    jobs += [(split, i) for i in sorted(indices)]
    return [problem]


def check_dataset(root: str | os.PathLike, workers: int | None = None) -> list[str]:
    """Every problem found in the dataset at ``root``, each naming its file; [] if clean.

    A root in the MTAN release's layout is checked by :func:`scenemtl.data.mtan.check_mtan`,
    a NYUD-v2 or PASCAL-Context release by :func:`scenemtl.data.mtlpytorch.check_bench`.
    """
    root = Path(root)
    if is_mtan_root(root):
        return check_mtan(root, workers)
    if bench_layout(root):
        return check_bench(root, workers)
    try:
        info = read_info(root, check_sizes=False)  # size claims are checked below
    except DataFormatError as e:
        return [str(e)]
    try:
        tasks = _tasks(info)
    except UserError as e:  # an unknown kind, a malformed spec
        return [f"{info_path(root)}: {e}"]
    problems: list[str] = []
    jobs = []
    for split in info.splits:
        if not (root / split).is_dir():
            if info.split_size(split):  # an empty split needs no folder
                problems.append(f"{root / split}: split listed in dataset.json but missing")
            continue
        problems += _check_extra_files(root, info, split)
        problems += _sample_jobs(root, info, split, jobs)
    # PIL releases the GIL while decoding, so threads use every core without pickling.
    with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
        for found in pool.map(
            lambda job: _check_sample(root, info, tasks, *job), jobs, chunksize=16
        ):
            problems += found
    return problems
