"""Time the boundary odsF evaluator (scenemtl.evaluation) on synthetic NYUD-sized maps.

    PYTHONPATH=src python scripts/bench_boundary.py --bench --images 20 --workers 2

Each synthetic image: a Voronoi label map's boundaries as ground truth; as prediction, those
boundaries shifted by up to a pixel, weakened per region and blurred, plus blurred clutter,
so that low thresholds keep large blobs, as a class-balanced edge network's output does.
Prints seconds per image and the extrapolation to NYUD-v2's 654 test images.
"""

from __future__ import annotations

import argparse
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np
from scipy import ndimage

from scenemtl.evaluation.boundary import MAX_DIST, boundary_scores, image_counts, seg2bmap


def synthetic_pair(seed: int, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """``(prob, gt)``: ``[H, W]`` float probabilities and bool edges."""
    rng = np.random.default_rng(seed)
    seeds = rng.integers(0, [height, width], size=(40, 2))
    yy, xx = np.mgrid[:height, :width]
    labels = np.argmin(
        (yy[..., None] - seeds[:, 0]) ** 2 + (xx[..., None] - seeds[:, 1]) ** 2, axis=-1
    )
    gt = seg2bmap(labels)
    strength = rng.uniform(0.2, 1.0, 40)[labels]
    shifted = np.roll(gt, tuple(rng.integers(-1, 2, 2)), axis=(0, 1))
    ridge = ndimage.gaussian_filter(shifted * strength, 1.5) * 6
    clutter = ndimage.gaussian_filter(rng.random((height, width)), 3)
    clutter = np.clip((clutter - clutter.mean()) * 8, 0, None)
    return np.clip(ridge + clutter, 0, 1), gt


def _one(args: tuple[int, int, int]) -> tuple[np.ndarray, float]:
    prob, gt = synthetic_pair(*args)
    start = time.process_time()  # CPU time: less sensitive to a shared machine than wall time
    counts = image_counts(prob, gt, MAX_DIST["nyud"])
    return counts, time.process_time() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bench", action="store_true", help="run the timing")
    parser.add_argument("--images", type=int, default=20)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--size", type=int, nargs=2, default=(480, 640), metavar=("H", "W"))
    args = parser.parse_args()
    if not args.bench:
        parser.print_help()
        return
    jobs = [(seed, *args.size) for seed in range(args.images)]
    start = time.perf_counter()
    with ProcessPoolExecutor(args.workers) as pool:
        results = list(pool.map(_one, jobs))
    seconds = time.perf_counter() - start
    cpu = sum(r[1] for r in results) / args.images
    scores = boundary_scores(np.stack([r[0] for r in results]))
    print(
        f"{args.images} images {args.size[0]}x{args.size[1]}, {args.workers} workers: "
        f"wall {seconds:.1f} s ({seconds / args.images:.2f} s/image), "
        f"evaluation CPU {cpu:.2f} s/image; 654 images on {args.workers} cores at that CPU "
        f"time ~ {cpu * 654 / args.workers / 60:.1f} min; odsF {scores['odsF']:.4f}"
    )


if __name__ == "__main__":
    main()
