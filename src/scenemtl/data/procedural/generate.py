"""Rendering whole datasets: splits, worker processes, the on-disk cache."""

from __future__ import annotations

import dataclasses
import math
import multiprocessing as mp
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from scenemtl.codecs.classes import CITYSCAPES_NUM_CLASSES, class_names
from scenemtl.data.format import (
    INVALID_DEPTH,
    SPLITS,
    DatasetInfo,
    encode_sample,
    info_path,
    label_path,
    read_info,
    rgb_path,
    write_info,
    write_sample_files,
)
from scenemtl.data.procedural.boundaries import (
    BOUNDARY_TASK_SPEC,
    encode_grey_png,
    label_boundaries,
)
from scenemtl.data.procedural.draws import Draws
from scenemtl.data.procedural.params import (
    GENERATOR_NAME,
    GENERATOR_VERSION,
    SynthParams,
    default_root,
)
from scenemtl.data.procedural.parts import PARTS_TASK_SPEC
from scenemtl.data.procedural.profile import StageTimes
from scenemtl.data.procedural.store import (
    publish,
    refuse_foreign,
    root_lock,
)
from scenemtl.data.staging import pool_worker_init, remove_dead_partials, staging
from scenemtl.data.stats import compute_stats
from scenemtl.errors import DataFormatError, UserError

RGB_EXTENSION = ".jpg"
PNG_COMPRESS_LEVEL = 1
"""zlib level of the label PNGs: level 1 encodes them ~2x faster than Pillow's default 6
for files 20-30% bigger (a few kB at 128x256); the decoded pixels are the same."""
CHUNK = 8
"""Images per task sent to a worker: big enough to amortize messaging, small enough to
balance the load at the end."""

EXTRA_TASK_SPECS: dict[str, dict[str, Any]] = {
    "normals": {"kind": "normals", "encoding": "rgb8"},
    "boundaries": BOUNDARY_TASK_SPEC,
    "human_parts": PARTS_TASK_SPEC,
}
"""dataset.json ``extra_tasks`` entries of the optional targets."""

_SPLIT_CODE = {name: i for i, name in enumerate(SPLITS)}


def image_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The random stream of one image: independent of every other image and of the
    order or process in which images are made."""
    # what default_rng(seed sequence) makes, with cheaper scalar uniform draws
    return Draws(np.random.PCG64(np.random.SeedSequence([seed, _SPLIT_CODE[split], index])))


def render_sample(
    params: SynthParams, split: str, index: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Render image ``index`` of ``split``.

    Returns:
        rgb: uint8 [H, W, 3] (before JPEG compression).
        semseg: uint8 [H, W] Cityscapes trainIds 0..18.
        depth: float32 [H, W] z-depth in meters within ``params.depth_range_m``;
            ``0.0`` (invalid) for sky.
    """
    layers = sample_layers(params, split, index)
    return layers["rgb"], layers["semseg"], layers["depth"]


def sample_layers(
    params: SynthParams,
    split: str,
    index: int,
    times: StageTimes | None = None,
    normals: bool = True,
    parts: bool = False,
) -> dict[str, np.ndarray]:
    """Render image ``index`` of ``split`` with every target :func:`render_layers` makes.
    With ``times``, the time of each stage is added to it; without ``normals``, the
    ``normals`` layer is not made; with ``parts``, the ``human_parts`` layer is (the others are
    the same either way).

    Returns:
        ``rgb``, ``semseg``, ``depth`` as :func:`render_sample` returns them, and
        ``normals``: float32 [3, H, W] unit camera-frame normals (x right, y down, z
        forward; docs/normals.md), zero (invalid) for sky, like depth; made whatever
        ``params.tasks`` says, unless ``normals`` is false.
    """
    from scenemtl.data.procedural.render import render_layers
    from scenemtl.data.procedural.scene import make_scene

    if split not in _SPLIT_CODE:
        raise UserError(f"unknown split {split!r}; known: {', '.join(SPLITS)}")
    if not isinstance(index, (int, np.integer)) or index < 0:
        raise UserError(f"image index must be a non-negative integer, got {index!r}")
    times = times if times is not None else StageTimes()
    lap = times.laps()
    rng = image_rng(params.seed, split, int(index))
    scene = make_scene(rng, params.size)
    lap("layout")
    layers = render_layers(scene, rng, times, normals, parts)
    lap = times.laps()
    lo, hi = params.depth_range_m
    depth = layers["depth"]
    layers["depth"] = np.where(np.isfinite(depth), np.clip(depth, lo, hi), INVALID_DEPTH).astype(
        np.float32
    )
    lap("raycast")
    times.images += 1
    return layers


def _render_chunk(
    task: tuple[str, dict[str, Any], str, list[int]],
) -> tuple[str, np.ndarray, int, StageTimes]:
    """Worker: render and write some images; returns the split, its class pixel counts,
    the number of images and the time spent in each stage."""
    root, params_json, split, indices = task
    params = SynthParams.from_json(params_json)
    counts = np.zeros(CITYSCAPES_NUM_CLASSES, np.int64)
    times = StageTimes()
    gt = params.has_gt(split)
    normals = gt and "normals" in params.tasks
    parts = gt and "human_parts" in params.tasks
    for i in indices:
        layers = sample_layers(params, split, i, times, normals, parts)
        rgb, semseg, depth = layers["rgb"], layers["semseg"], layers["depth"]
        counts += np.bincount(semseg.ravel(), minlength=CITYSCAPES_NUM_CLASSES)[
            :CITYSCAPES_NUM_CLASSES
        ]
        lap = times.laps()
        files = encode_sample(
            rgb,
            semseg if gt else None,
            depth if gt else None,
            depth_encoding=params.depth_encoding,
            rgb_extension=RGB_EXTENSION,
            jpeg_quality=params.jpeg_quality,
            png_compress_level=PNG_COMPRESS_LEVEL,
            normals=layers["normals"] if normals else None,
        )
        if gt and "boundaries" in params.tasks:
            # derived from the exact label map after rendering: the other files are the
            # same bytes with or without it
            files["boundaries"] = encode_grey_png(label_boundaries(semseg), PNG_COMPRESS_LEVEL)
        if parts:
            files["human_parts"] = encode_grey_png(layers["human_parts"], PNG_COMPRESS_LEVEL)
        lap("encode")
        write_sample_files(root, split, i, files, RGB_EXTENSION)
        lap("write")
    return split, counts, len(indices), times


def _cached(root: Path, params: SynthParams) -> DatasetInfo | None:
    """The dataset at ``root`` if it is complete and was made from exactly ``params``."""
    if not info_path(root).is_file():
        return None
    try:
        info = read_info(root)
    except DataFormatError:
        return None
    src = info.source
    if (
        src.get("generator") != GENERATOR_NAME
        or src.get("generator_version") != GENERATOR_VERSION
        or src.get("params") != params.to_json()
    ):
        return None
    # dataset.json is written last, so its presence means every file was written;
    # checking the last file of each split still catches a tree someone pruned.
    for split, n in params.splits.items():
        if n == 0:
            continue
        files = [rgb_path(root, split, n - 1, RGB_EXTENSION)]
        if params.has_gt(split):
            files += [label_path(root, split, m, n - 1) for m in params.tasks]
        if not all(f.is_file() for f in files):
            return None
    return info


def _print_progress(done: int, total: int, start: float, final: bool = False) -> None:
    rate = done / max(time.perf_counter() - start, 1e-9)
    line = f"synth: {done}/{total} images ({rate:.1f} images/s)"
    if sys.stderr.isatty():
        print("\r" + line, end="\n" if final else "", file=sys.stderr, flush=True)
    else:
        print(line, file=sys.stderr, flush=True)


def format_frequencies(freq: list[float]) -> str:
    """Per-class pixel frequencies as an aligned two-column table (percent)."""
    return "\n".join(
        f"  {name:<14s} {100 * f:6.2f}%" for name, f in zip(class_names(), freq, strict=True)
    )


def synthesize(
    root: str | os.PathLike,
    params: SynthParams,
    workers: int | None = None,
    progress: bool = True,
    stats: bool = True,
    times: StageTimes | None = None,
) -> DatasetInfo:
    """Generate the dataset of ``params`` at ``root`` (or find it already there).

    Images are rendered in ``workers`` processes (default: all cores) and written in the
    MiniScapes layout, into a private folder beside ``root`` that becomes ``root`` only
    when complete, ``dataset.json`` (with the parameters in ``source``) included. With
    ``stats``, ``dataset.json`` also holds the statistics ``scenemtl data stats``
    computes, so training can start right away. The output is the same, byte for byte,
    whatever the number of workers.

    Safe to run concurrently: one process renders a root at a time (a lock beside it);
    the others wait and then find it cached. A ``root`` holding anything the generator
    did not write is refused (:class:`UserError`) and left untouched; see
    :mod:`scenemtl.data.procedural.store`.

    With ``times``, the time each stage took in the workers is added to it (nothing
    when the dataset is cached).

    Returns:
        The dataset's :class:`DatasetInfo`.
    """
    root = Path(os.path.realpath(root))  # a symlinked root: render where it points
    if workers is not None and (not isinstance(workers, int) or workers < 1):
        raise UserError(f"workers must be a positive integer, got {workers!r}")
    if root.exists() and not root.is_dir():
        raise UserError(f"dataset root {root} exists and is not a directory")
    cached = _cached(root, params)
    if cached is None:
        refuse_foreign(root)  # before anything is written, even the lock file beside it
    if cached is None or (stats and not cached.stats):

        def waiting(who: str) -> None:
            if progress:
                print(f"synth: {who} is writing {root}; waiting for it", file=sys.stderr)

        with root_lock(root, on_wait=waiting):
            cached = _cached(root, params)  # another process may have made it meanwhile
            if cached is None:
                return _make(root, params, workers, progress, stats, times)
            if stats and not cached.stats:
                # made before data synth computed statistics: add them, in place
                cached = _with_stats(root, cached)
                write_info(root, cached)
    if progress:
        print(f"synth: {root} already holds this dataset (cached)", file=sys.stderr)
    return cached


def _make(
    root: Path,
    params: SynthParams,
    workers: int | None,
    progress: bool,
    stats: bool,
    times: StageTimes | None = None,
) -> DatasetInfo:
    """Render the dataset beside ``root`` and rename it into place. Call with the lock."""
    refuse_foreign(root)
    remove_dead_partials(root)
    with staging(root) as staged:
        info = _render(staged, params, workers, progress, times)
        if stats:
            info = _with_stats(staged, info, progress)
        write_info(staged, info)
        publish(staged, root)
    if progress:
        freq, basis = info.source["class_pixel_frequency"], info.source["class_pixel_frequency_of"]
        print(f"class pixel frequencies ({basis}):\n{format_frequencies(freq)}", file=sys.stderr)
    return info


def _render(
    root: Path,
    params: SynthParams,
    workers: int | None,
    progress: bool,
    times: StageTimes | None = None,
) -> DatasetInfo:
    """Render every image of ``params`` into ``root``; the DatasetInfo to write."""
    tasks = []
    for split, n in params.splits.items():
        for start in range(0, n, CHUNK):
            tasks.append(
                (str(root), params.to_json(), split, list(range(start, min(n, start + CHUNK))))
            )
    total = sum(params.splits.values())
    n_workers = min(workers or _available_cores(), len(tasks))
    counts = {s: np.zeros(CITYSCAPES_NUM_CLASSES, np.int64) for s in SPLITS}
    done = 0
    t0 = time.perf_counter()
    last = t0
    if n_workers <= 1:
        results = map(_render_chunk, tasks)
        pool = None
    else:
        pool = _pool(n_workers)
        results = pool.imap_unordered(_render_chunk, tasks)
    finished = False
    try:
        for split, c, n_done, chunk_times in results:
            counts[split] += c
            if times is not None:
                times.add(chunk_times)
            done += n_done
            if progress and time.perf_counter() - last > (0.5 if sys.stderr.isatty() else 10.0):
                _print_progress(min(done, total), total, t0)
                last = time.perf_counter()
        finished = True
    finally:
        if pool is not None:
            # On an error or Ctrl-C, stop the workers instead of letting them finish
            # the queue.
            if finished:
                pool.close()
            else:
                pool.terminate()
            pool.join()
    if progress:
        _print_progress(total, total, t0, final=True)

    gt_splits = [s for s in SPLITS if params.splits[s] and params.has_gt(s)]
    basis = "train" if params.train else ("+".join(gt_splits) or "none")
    pix = (
        counts["train"]
        if params.train
        else sum((counts[s] for s in gt_splits), np.zeros(CITYSCAPES_NUM_CLASSES, np.int64))
    )
    freq = (pix / max(int(pix.sum()), 1)).tolist()
    info = DatasetInfo(
        name=params.name(),
        image_size=params.size,
        splits={s: {"size": n, "gt": params.has_gt(s)} for s, n in params.splits.items()},
        depth_encoding=params.depth_encoding,
        depth_range_m=params.depth_range_m,
        rgb_extension=RGB_EXTENSION,
        extra_tasks={name: EXTRA_TASK_SPECS[name] for name in params.extra_tasks},
        source={
            "generator": GENERATOR_NAME,
            "generator_version": GENERATOR_VERSION,
            "params": params.to_json(),
            "class_pixel_frequency": freq,
            "class_pixel_frequency_of": basis,
            # provenance only (not in the cache key): float details, and so the exact
            # RGB bytes, can differ between numpy versions and CPUs (docs/synth.md)
            "software": _software(),
        },
    )
    return info


def _software() -> dict[str, str]:
    import PIL

    return {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "pillow": PIL.__version__,
    }


def _with_stats(root: Path, info: DatasetInfo, progress: bool = False) -> DatasetInfo:
    """``info`` with the statistics of ``scenemtl data stats`` (over the train split, or
    the first other split with labels) of the dataset written at ``root``."""
    split = next((s for s in SPLITS if info.splits.get(s, {}).get("size") and info.has_gt(s)), None)
    if split is None:
        return info  # nothing labelled to compute them on
    if progress:
        print(f"synth: statistics of the {split} split", file=sys.stderr)
    stats, _ = compute_stats(root, split, info=info)
    return dataclasses.replace(info, stats=stats)


def _available_cores(cgroup: Path = Path("/sys/fs/cgroup")) -> int:
    """Cores this process may use: its affinity mask (unlike os.cpu_count), capped by a
    cgroup CPU quota (a container that sees 64 CPUs but may use 2 should not start 64
    workers that then share 2 cores)."""
    try:
        cores = max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    quota = _cpu_quota(cgroup)
    return cores if quota is None else max(1, min(cores, math.ceil(quota)))


def _cpu_quota(cgroup: Path) -> float | None:
    """CPUs' worth of time the cgroup quota allows (cgroup v2 ``cpu.max``, else v1
    ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``), None without a quota."""
    try:
        v2 = cgroup / "cpu.max"
        if v2.is_file():
            quota, period = v2.read_text().split()[:2]
            return None if quota == "max" else int(quota) / int(period)
        v1 = cgroup / "cpu" if (cgroup / "cpu").is_dir() else cgroup
        quota_us = int((v1 / "cpu.cfs_quota_us").read_text())
        period_us = int((v1 / "cpu.cfs_period_us").read_text())
        return None if quota_us <= 0 else quota_us / period_us
    except (OSError, ValueError):
        return None


def cached_dataset(params: SynthParams | None = None, workers: int | None = None) -> Path:
    """The root of the dataset of ``params`` (default: the default dataset), rendered into
    the cache the first time it is asked for."""
    params = params if params is not None else SynthParams()
    root = default_root(params)
    synthesize(root, params, workers=workers)
    return root


def _pool(n: int):
    """A process pool. Workers need only numpy and Pillow, so forking is safe and
    cheap where it exists; elsewhere they start fresh. They leave Ctrl-C to the parent
    and die with it (:func:`scenemtl.data.staging.pool_worker_init`)."""
    # Import the rendering modules and build the noise tiles once here, so that forked
    # workers do not each do it again (~0.1-0.2 s per worker, a lot for a short run).
    import scenemtl.data.procedural.render  # noqa: F401
    from scenemtl.data.procedural.textures import noise_tiles

    noise_tiles()

    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    return mp.get_context(method).Pool(n, initializer=pool_worker_init, initargs=(os.getpid(),))


def bench(
    size: tuple[int, int] = (128, 256),
    n: int = 64,
    workers: int | None = None,
    times: StageTimes | None = None,
) -> float:
    """Images per second, end to end: worker start-up, rendering, JPEG/PNG encoding and
    writing ``n`` images of ``size`` into a temporary directory. With ``times``, the
    time of each stage in the workers is added to it."""
    params = SynthParams(train=n, val=0, test=0, size=size)
    with tempfile.TemporaryDirectory(prefix="scenemtl-bench-") as tmp:
        t0 = time.perf_counter()
        synthesize(
            Path(tmp) / "data", params, workers=workers, progress=False, stats=False, times=times
        )
        elapsed = time.perf_counter() - t0
    return n / elapsed
