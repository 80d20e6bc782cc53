"""Boundary (edge) F-measure as the multi-task papers compute it with SEISM / BSDS.

The protocol (Multi-Task-Learning-PyTorch's ``eval_edge.py`` driving SEISM, reused by ATRC,
InvPT and their successors), per image and per threshold ``t``:

1. the prediction is saved as an 8-bit PNG (``uint8(255 * sigmoid)``, truncated) and read
   back as ``png / 255``; the edge map is ``png / 255 >= t`` (``quantize=True`` reproduces the
   round trip on float probabilities);
2. the map is thinned with ``bwmorph(., 'thin', Inf)`` (:mod:`.thinning`), and so is the
   ground truth (SEISM thins ``seg2bmap`` of the label map);
3. predicted and ground-truth pixels are matched one-to-one within ``max_dist`` times the
   image diagonal (:mod:`.matching`); ``cntP = cntR`` = matched pixels, ``sumP`` = thinned
   predicted pixels, ``sumR`` = thinned ground-truth pixels.

Counts are summed over the split per threshold: **odsF** is the best F over thresholds of the
summed precision and recall; **oisF** takes each image's best threshold first; **AP** is the
area under the summed precision-recall curve as SEISM's ``general_ap`` interpolates it.
docs/metrics.md lists what differs from SEISM.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from functools import partial

import numpy as np
import torch
from torchmetrics import Metric

from scenemtl.errors import UserError
from scenemtl.evaluation.matching import candidate_pairs, match_count
from scenemtl.evaluation.thinning import thin, thin_levels

# maxDist (fraction of the image diagonal) per dataset: SEISM's eval_method.m (0.0075 is its
# default and PASCAL-Context's; 0.011 for NYUD-v2 as ATRC and InvPT set it)
MAX_DIST = {"pascal_context": 0.0075, "nyud": 0.011}

# the thresholds Multi-Task-Learning-PyTorch writes to SEISM's parameter file: 0.01 ... 0.99
SEISM_THRESHOLDS = np.arange(1, 100) / 100.0
# InvPT's SEISM fork evaluates at SEISM's HED parameter file: 0.001, 0.01 ... 0.99, 0.999
HED_THRESHOLDS = np.concatenate([[0.001], SEISM_THRESHOLDS, [0.999]])

COUNT_COLUMNS = ("cntR", "sumR", "cntP", "sumP")


def seg2bmap(labels: np.ndarray) -> np.ndarray:
    """Boundary map of a label map as BSDS/SEISM's ``seg2bmap`` (same-size output).

    A pixel is a boundary pixel when its label differs from its east, south or south-east
    neighbour; on the last row only east counts, on the last column only south, and the
    bottom-right pixel is never one.

    Args:
        labels: ``[H, W]`` integer label map.

    Returns:
        ``[H, W]`` bool.
    """
    seg = np.asarray(labels)
    east = np.zeros_like(seg)
    south = np.zeros_like(seg)
    south_east = np.zeros_like(seg)
    east[:, :-1] = seg[:, 1:]
    south[:-1, :] = seg[1:, :]
    south_east[:-1, :-1] = seg[1:, 1:]
    bmap = (seg != east) | (seg != south) | (seg != south_east)
    bmap[-1, :] = seg[-1, :] != east[-1, :]
    bmap[:, -1] = seg[:, -1] != south[:, -1]
    bmap[-1, -1] = False
    return bmap


def max_dist_pixels(shape: tuple[int, int], max_dist: float) -> float:
    """``max_dist`` (a fraction of the diagonal) in pixels for an image of ``shape``."""
    return max_dist * math.hypot(shape[0], shape[1])


def image_counts(
    prob: np.ndarray,
    gt: np.ndarray,
    max_dist: float,
    thresholds: np.ndarray = SEISM_THRESHOLDS,
    *,
    thin_gt: bool = True,
    thin_pred: bool = True,
    quantize: bool = True,
) -> np.ndarray:
    """SEISM's per-image counts at every threshold.

    Args:
        prob: ``[H, W]`` edge probabilities in [0, 1].
        gt: ``[H, W]`` ground-truth edge map (nonzero = edge).
        max_dist: matching distance as a fraction of the image diagonal (:data:`MAX_DIST`).
        thresholds: ``[T]`` thresholds, a pixel is an edge when ``prob >= t``.
        thin_gt: thin the ground truth as SEISM does.
        thin_pred: thin the thresholded prediction as SEISM does (off: only for analysis).
        quantize: read ``prob`` through SEISM's 8-bit PNG round trip, ``floor(255 p) / 255``.

    Returns:
        ``[T, 4]`` int64 counts, columns :data:`COUNT_COLUMNS` (cntR, sumR, cntP, sumP).
    """
    prob = np.asarray(prob, dtype=np.float64)
    gt = np.asarray(gt, dtype=bool)
    if prob.ndim != 2 or prob.shape != gt.shape:
        raise UserError(
            f"boundary evaluation needs [H, W] prediction and ground truth of one shape, "
            f"got {prob.shape} and {gt.shape}"
        )
    thresholds = np.asarray(thresholds, dtype=np.float64)
    gt_thin = thin(gt) if thin_gt else gt
    sum_r = int(gt_thin.sum())
    dist_px = max_dist_pixels(gt.shape, max_dist)
    counts = np.zeros((thresholds.size, 4), dtype=np.int64)
    counts[:, 1] = sum_r

    # The map at threshold t is the set of pixels whose value is one of the values present
    # in the image that are >= t, so it is identified by how many present values pass:
    # thresholds with the same number (no value in between) share one thinning and one
    # matching. Quantized maps compare 8-bit levels (level / 255 >= t is monotone in the
    # level, so it equals the float comparison).
    if quantize:
        levels = np.floor(np.clip(prob, 0.0, 1.0) * 255.0).astype(np.uint8)
        present = np.flatnonzero(np.bincount(levels.ravel(), minlength=256)) / 255.0
        first_level = np.searchsorted(np.arange(256) / 255.0, thresholds, side="left")
    else:
        present = np.unique(prob)
    passing = present.size - np.searchsorted(present, thresholds, side="left")

    # thinned prediction per distinct map, as flat indices into the image
    thinned: dict[int, np.ndarray] = {0: np.zeros(0, dtype=np.int64)}
    if quantize and thin_pred:
        start_of: dict[int, int] = {}
        for k, key in enumerate(passing.tolist()):
            start_of.setdefault(key, int(first_level[k]))
        by_start = sorted((start, key) for key, start in start_of.items() if key)
        maps = thin_levels(levels, [start for start, _ in by_start])
        thinned.update((key, pixels) for (_, key), pixels in zip(by_start, maps, strict=True))
    for k, key in enumerate(passing.tolist()):
        if key in thinned:
            continue
        mask = levels >= first_level[k] if quantize else prob >= thresholds[k]
        thinned[key] = np.flatnonzero(thin(mask) if thin_pred else mask)

    # candidate pairs once, for every pixel thinned at some threshold
    width = prob.shape[1]
    union = np.unique(np.concatenate(list(thinned.values())))
    yx = np.stack([union // width, union % width], axis=1)
    i, j, _ = candidate_pairs(yx, gt_thin, dist_px)
    position = np.full(prob.size, -1, dtype=np.int64)
    position[union] = np.arange(union.size)
    has_pair = np.zeros(union.size, dtype=bool)
    has_pair[i] = True
    matched_of: dict[int, int] = {}
    for key, pixels in thinned.items():
        if pixels.size == 0 or i.size == 0:
            matched_of[key] = 0
            continue
        # predicted nodes: this map's pixels that have a candidate, numbered 0.. (nodes that
        # cannot be matched only slow the flow down); gt nodes keep their numbering
        # (unreachable ones only add a sink edge)
        in_map = np.zeros(union.size, dtype=bool)
        in_map[position[pixels]] = True
        keep = in_map[i]
        in_map &= has_pair
        row_of = np.cumsum(in_map) - 1
        matched_of[key] = match_count(row_of[i[keep]], j[keep], int(row_of[-1]) + 1, sum_r)
    for k, key in enumerate(passing.tolist()):
        counts[k, 0] = counts[k, 2] = matched_of[key]
        counts[k, 3] = thinned[key].size
    return counts


def split_counts(
    probs: Sequence[np.ndarray],
    gts: Sequence[np.ndarray],
    max_dist: float,
    thresholds: np.ndarray = SEISM_THRESHOLDS,
    *,
    workers: int = 0,
    thin_gt: bool = True,
    quantize: bool = True,
) -> np.ndarray:
    """:func:`image_counts` of many images, optionally in worker processes.

    Args:
        probs, gts: ``N`` pairs of ``[H, W]`` maps (sizes may differ between images).
        workers: processes to spread the images over (0: this process). Images are
            independent, so the counts do not depend on it.

    Returns:
        ``[N, T, 4]`` int64 counts.
    """
    if len(probs) != len(gts):
        raise UserError(f"{len(probs)} predictions but {len(gts)} ground truths")
    one = partial(
        image_counts, max_dist=max_dist, thresholds=thresholds, thin_gt=thin_gt, quantize=quantize
    )
    if workers > 0 and len(probs) > 1:
        with ProcessPoolExecutor(min(workers, len(probs))) as pool:
            counts = list(pool.map(one, probs, gts))
    else:
        counts = [one(p, g) for p, g in zip(probs, gts, strict=True)]
    if not counts:
        return np.zeros((0, np.asarray(thresholds).size, 4), dtype=np.int64)
    return np.stack(counts)


def _precision_recall(counts: np.ndarray, both_empty: str) -> tuple[np.ndarray, np.ndarray]:
    """SEISM's precision and recall from ``[..., 4]`` counts, with its empty-map rules.

    No ground-truth edge: recall 1, precision 0. No predicted edge: recall 0, precision 1.
    Both empty: SEISM's per-image ``eval_cont`` says recall 1 / precision 0
    (``both_empty="no_gt"``), its dataset-level ``gather_measure`` recall 0 / precision 1
    (``"no_pred"``); F is 0 either way.
    """
    cnt_r, sum_r, cnt_p, sum_p = (counts[..., c].astype(np.float64) for c in range(4))
    recall = np.divide(cnt_r, sum_r, out=np.zeros_like(cnt_r), where=sum_r > 0)
    precision = np.divide(cnt_p, sum_p, out=np.zeros_like(cnt_p), where=sum_p > 0)
    no_gt, no_pred = sum_r == 0, sum_p == 0
    if both_empty == "no_gt":
        no_pred = no_pred & ~no_gt
    else:
        no_gt = no_gt & ~no_pred
    recall = np.where(no_gt, 1.0, np.where(no_pred, 0.0, recall))
    precision = np.where(no_gt, 0.0, np.where(no_pred, 1.0, precision))
    return precision, recall


def _f_measure(precision: np.ndarray, recall: np.ndarray) -> np.ndarray:
    total = precision + recall
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(total > 0, 2.0 * precision * recall / np.where(total > 0, total, 1), 0.0)


def boundary_scores(counts: np.ndarray, thresholds: np.ndarray = SEISM_THRESHOLDS) -> dict:
    """odsF, oisF and AP from the per-image counts of a whole split.

    Args:
        counts: ``[N, T, 4]`` stacked :func:`image_counts`.
        thresholds: the ``[T]`` thresholds the counts were taken at.

    Returns:
        ``{"odsF", "odsP", "odsR", "odsThreshold", "oisF", "oisP", "oisR", "AP"}`` (floats,
        fractions). An empty split gives zeros.
    """
    counts = np.asarray(counts, dtype=np.int64)
    thresholds = np.asarray(thresholds, dtype=np.float64)
    if counts.ndim != 3 or counts.shape[1:] != (thresholds.size, 4):
        raise UserError(
            f"boundary counts must be [N, {thresholds.size}, 4], got {list(counts.shape)}"
        )
    if counts.shape[0] == 0:
        return dict.fromkeys(
            ("odsF", "odsP", "odsR", "odsThreshold", "oisF", "oisP", "oisR", "AP"), 0.0
        )
    # ODS: counts summed over the split per threshold (gather_measure + general_ods)
    precision, recall = _precision_recall(counts.sum(axis=0), both_empty="no_pred")
    f = _f_measure(precision, recall)
    best = int(np.argmax(f))  # the first maximum, as MATLAB's max
    # OIS: each image's best threshold by its own F (eval_cont), then counts summed
    p_img, r_img = _precision_recall(counts, both_empty="no_gt")
    best_img = np.argmax(_f_measure(p_img, r_img), axis=1)
    picked = counts[np.arange(counts.shape[0]), best_img].sum(axis=0)
    p_ois, r_ois = _precision_recall(picked, both_empty="no_gt")
    return {
        "odsF": float(f[best]),
        "odsP": float(precision[best]),
        "odsR": float(recall[best]),
        "odsThreshold": float(thresholds[best]),
        "oisF": float(_f_measure(p_ois, r_ois)),
        "oisP": float(p_ois),
        "oisR": float(r_ois),
        "AP": average_precision(precision, recall),
    }


def average_precision(precision: np.ndarray, recall: np.ndarray) -> float:
    """SEISM's ``general_ap``: precision interpolated linearly at recall 0, 0.01, ..., 1
    over the distinct recall values (the first threshold of each), points outside the
    recall range dropped, the sum divided by 100."""
    rec, first = np.unique(np.asarray(recall, dtype=np.float64), return_index=True)
    if rec.size < 2:
        return 0.0
    prec = np.asarray(precision, dtype=np.float64)[first]
    grid = np.arange(101) * 0.01
    inside = (grid >= rec[0]) & (grid <= rec[-1])
    return float(np.interp(grid[inside], rec, prec).sum() / 100.0)


class BoundaryFMeasure(Metric):
    """Streaming odsF / oisF / AP over a split (per-image counts only are kept: ``[T, 4]``).

    ``update(prob, target)`` takes ``[B, H, W]`` edge probabilities in [0, 1] and ``[B, H, W]``
    binary ground-truth edges (bool or 0/1); every image is evaluated at its own size.
    ``workers > 0`` spreads the images of each batch over that many processes (about 2 s of
    CPU per 480x640 image at 99 thresholds; worth it for a whole split, not for a few
    images). ``compute()`` returns the dict of :func:`boundary_scores` as float64 tensors.
    """

    full_state_update = False
    higher_is_better = True

    def __init__(
        self,
        max_dist: float,
        thresholds: np.ndarray | list[float] = SEISM_THRESHOLDS,
        *,
        thin_gt: bool = True,
        quantize: bool = True,
        workers: int = 0,
    ) -> None:
        super().__init__()
        if not 0 < max_dist < 1:
            raise UserError(f"max_dist is a fraction of the image diagonal, got {max_dist}")
        self.max_dist = float(max_dist)
        self.thresholds = np.asarray(thresholds, dtype=np.float64)
        if self.thresholds.ndim != 1 or self.thresholds.size == 0:
            raise UserError("boundary thresholds must be a non-empty list")
        self.thin_gt = thin_gt
        self.quantize = quantize
        if workers < 0:
            raise UserError(f"boundary metric workers must be >= 0, got {workers}")
        self.workers = int(workers)
        self.add_state("counts", default=[], dist_reduce_fx="cat")

    def update(self, prob: torch.Tensor, target: torch.Tensor) -> None:
        if prob.ndim != 3 or prob.shape != target.shape:
            raise UserError(
                f"boundary metric needs [B, H, W] prediction and target of one shape, "
                f"got {list(prob.shape)} and {list(target.shape)}"
            )
        if target.dtype != torch.bool and bool(((target != 0) & (target != 1)).any()):
            raise UserError("boundary targets must be binary (0/1)")
        probs = prob.detach().to("cpu", torch.float64).numpy()
        targets = target.detach().to("cpu").numpy().astype(bool)
        self.update_images(list(probs), list(targets))

    def update_images(self, probs: list[np.ndarray], targets: list[np.ndarray]) -> None:
        """Add images of any sizes: ``[H_i, W_i]`` probabilities and binary edges each."""
        counts = split_counts(
            probs,
            targets,
            self.max_dist,
            self.thresholds,
            workers=self.workers,
            thin_gt=self.thin_gt,
            quantize=self.quantize,
        )
        self.counts.extend(torch.from_numpy(c) for c in counts)

    def compute(self) -> dict[str, torch.Tensor]:
        counts = self.counts
        if isinstance(counts, list):
            stacked = (
                torch.stack(counts).numpy()
                if counts
                else np.zeros((0, self.thresholds.size, 4), dtype=np.int64)
            )
        else:  # after a distributed "cat" the state is one tensor
            stacked = counts.reshape(-1, self.thresholds.size, 4).numpy()
        scores = boundary_scores(stacked, self.thresholds)
        return {k: torch.tensor(v, dtype=torch.float64) for k, v in scores.items()}
