"""Correspondence of predicted to ground-truth edge pixels within a distance, as BSDS's
``correspondPixels`` (match.cc) defines it.

BSDS builds a bipartite graph with an edge between a predicted pixel and a ground-truth pixel
whenever their Euclidean distance is at most ``max_dist`` pixels (``d^2 <= max_dist^2``),
costs ``rint(100 * d)``, and adds "outlier" nodes so that any pixel may stay unmatched at the
cost ``ow = ceil(100 * outlier_cost * max_dist)`` (``outlier_cost`` = 100). CSA then finds
the minimum-cost perfect matching of that graph, i.e. the matching ``M`` of real pairs that
minimises ``sum_{(i,j) in M} c_ij + ow * (n_pred + n_gt - |M|)``.

Only ``|M|`` enters precision and recall. Two ways to get it:

- :func:`match_count` (the default, fast): the maximum-cardinality matching (a
  unit-capacity maximum flow, scipy's Dinic). It equals BSDS's ``|M|`` whenever no optimal
  matching leaves a pair out to save on distance. Growing a matching by one along an
  augmenting path with ``L + 1`` new and ``L`` dropped pairs costs at most
  ``(L + 1) * c_max`` in distance and saves ``ow``, with ``ow / c_max = outlier_cost = 100``.
  So the two agree unless an augmenting path re-routes about 100 pairs or more, e.g. a
  straight run of 100+ pixels shifted by one pixel along itself
  (``tests/evaluation/test_boundary.py::test_long_shifted_run_is_where_bsds_differs``).
- :func:`correspond_pixels_bsds`: the exact minimum of BSDS's objective on the complete
  outlier graph (scipy's LAPJVsp); slow (about 0.5 s per 10k-pixel map), for checks.

BSDS's own CSA connects outliers sparsely at random (degree 6, plus a costlier fallback), so
its result can itself differ from the exact optimum in rare cases and from run to run.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.sparse import coo_matrix, csr_matrix
from scipy.sparse.csgraph import maximum_flow, min_weight_full_bipartite_matching

COST_MULTIPLIER = 100  # match.cc: integer costs rint(100 * distance)
OUTLIER_COST = 100  # correspondPixels' default, in units of max_dist


def disk_offsets(max_dist: float) -> np.ndarray:
    """``[K, 2]`` integer (dy, dx) with ``dy^2 + dx^2 <= max_dist^2`` (BSDS's search window)."""
    r = math.ceil(max_dist)
    dy, dx = np.mgrid[-r : r + 1, -r : r + 1]
    keep = dy * dy + dx * dx <= max_dist * max_dist
    return np.stack([dy[keep], dx[keep]], axis=1).astype(np.int64)


def candidate_pairs(
    pred_yx: np.ndarray, gt: np.ndarray, max_dist: float, chunk: int = 4096
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every (predicted, ground-truth) pixel pair within ``max_dist`` pixels.

    Args:
        pred_yx: ``[P, 2]`` row/column of the predicted edge pixels.
        gt: ``[H, W]`` bool ground-truth edge map.
        max_dist: distance in pixels (inclusive).

    Returns:
        ``(i, j, d2)``: index into ``pred_yx``, index into ``np.flatnonzero(gt)`` (row-major),
        squared distance; sorted by ``i``.
    """
    height, width = gt.shape
    offsets = disk_offsets(max_dist)
    r = math.ceil(max_dist)
    stride = width + 2 * r
    padded = np.zeros((height + 2 * r, stride), dtype=bool)
    padded[r : r + height, r : r + width] = gt
    flat = padded.ravel()
    node = np.full(flat.size, -1, dtype=np.int64)
    node[np.flatnonzero(flat)] = np.arange(int(gt.sum()), dtype=np.int64)
    shift = offsets[:, 0] * stride + offsets[:, 1]
    d2_of = (offsets * offsets).sum(axis=1)
    base = (pred_yx[:, 0].astype(np.int64) + r) * stride + pred_yx[:, 1] + r
    out_i, out_j, out_d2 = [], [], []
    for start in range(0, base.size, chunk):  # bounded memory: chunk x K lookups at a time
        where = base[start : start + chunk, None] + shift[None, :]
        rows, cols = np.nonzero(flat[where])
        out_i.append(rows + start)
        out_j.append(node[where[rows, cols]])
        out_d2.append(d2_of[cols])
    if not out_i:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, empty
    return np.concatenate(out_i), np.concatenate(out_j), np.concatenate(out_d2)


def match_count(i: np.ndarray, j: np.ndarray, n_pred: int, n_gt: int) -> int:
    """Size of a maximum matching of the bipartite candidate graph with edges ``i -> j``.

    Computed as the maximum flow source -> predicted -> ground truth -> sink with unit
    capacities (scipy's Dinic, which is Hopcroft-Karp on this graph). scipy's
    ``maximum_bipartite_matching`` gives the same number but took minutes on two parallel
    thinned contours, where Dinic takes milliseconds.
    """
    if i.size == 0:
        return 0
    # nodes: predicted 0..n_pred-1, ground truth n_pred.., source, sink; the CSR rows are
    # laid out directly (i is sorted), which avoids a sort per call
    source, sink = n_pred + n_gt, n_pred + n_gt + 1
    per_row = np.concatenate(
        [np.bincount(i, minlength=n_pred), np.ones(n_gt, dtype=np.int64), [n_pred, 0]]
    )
    indptr = np.zeros(per_row.size + 1, dtype=np.int32)
    np.cumsum(per_row, out=indptr[1:])
    indices = np.concatenate([n_pred + j, np.full(n_gt, sink), np.arange(n_pred)]).astype(np.int32)
    size = n_pred + n_gt + 2
    graph = csr_matrix((np.ones(indices.size, dtype=np.int32), indices, indptr), (size, size))
    return int(maximum_flow(graph, source, sink, method="dinic").flow_value)


def correspond_pixels_bsds(
    pred: np.ndarray, gt: np.ndarray, max_dist: float, outlier_cost: float = OUTLIER_COST
) -> tuple[np.ndarray, np.ndarray]:
    """Exact minimiser of BSDS's matching objective (see the module doc); slow.

    Args:
        pred, gt: ``[H, W]`` bool edge maps.
        max_dist: matching distance in pixels.

    Returns:
        ``(match_pred, match_gt)``: ``[H, W]`` bool maps of the matched pixels.
    """
    pred = np.asarray(pred, dtype=bool)
    gt = np.asarray(gt, dtype=bool)
    pred_yx = np.argwhere(pred)
    gt_flat = np.flatnonzero(gt)
    i, j, d2 = candidate_pairs(pred_yx, gt, max_dist)
    match_pred = np.zeros_like(pred)
    match_gt = np.zeros_like(gt)
    if i.size == 0:
        return match_pred, match_gt
    # only pixels with a candidate take part (the others are outliers at a fixed cost)
    rows_used, a = np.unique(i, return_inverse=True)
    cols_used, b = np.unique(j, return_inverse=True)
    n1, n2 = rows_used.size, cols_used.size
    cost = np.rint(np.sqrt(d2) * COST_MULTIPLIER)
    ow = math.ceil(outlier_cost * max_dist * COST_MULTIPLIER)
    # rows: predicted pixels, then one outlier per gt pixel; columns: gt pixels, then one
    # outlier per predicted pixel. A real pair (a, b) comes with the outlier pair
    # (outlier of b, outlier of a) so every matching completes to a perfect one, and every
    # perfect matching costs sum(c) + ow * (n1 + n2 - |real pairs|) as BSDS's does.
    # All weights are shifted by +1 (a constant per perfect matching: n1 + n2 edges) so
    # that no stored weight is zero.
    rows = np.concatenate([a, np.arange(n1), n1 + np.arange(n2), n1 + b])
    cols = np.concatenate([b, n2 + np.arange(n1), np.arange(n2), n2 + a])
    weight = np.concatenate(
        [cost + 1, np.full(n1, ow + 1.0), np.full(n2, ow + 1.0), np.full(a.size, ow + 1.0)]
    )
    n = n1 + n2
    graph = coo_matrix((weight, (rows, cols)), shape=(n, n)).tocsr()
    row_ind, col_ind = min_weight_full_bipartite_matching(graph)
    real = (row_ind < n1) & (col_ind < n2)
    pred_nodes = rows_used[row_ind[real]]
    gt_nodes = cols_used[col_ind[real]]
    match_pred[tuple(pred_yx[pred_nodes].T)] = True
    match_gt.ravel()[gt_flat[gt_nodes]] = True
    return match_pred, match_gt
