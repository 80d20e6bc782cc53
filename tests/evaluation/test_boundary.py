"""Boundary F-measure: known answers of the SEISM/BSDS protocol."""

import math

import numpy as np
import pytest
import torch
from scipy import ndimage

from scenemtl.errors import UserError
from scenemtl.evaluation.boundary import (
    SEISM_THRESHOLDS,
    BoundaryFMeasure,
    average_precision,
    boundary_scores,
    image_counts,
    seg2bmap,
    split_counts,
)
from scenemtl.evaluation.matching import candidate_pairs, correspond_pixels_bsds, match_count
from scenemtl.evaluation.thinning import thin

H, W = 40, 60
DIAG = math.hypot(H, W)


def _fraction(pixels: float) -> float:
    return pixels / DIAG


def _ods(prob, gt, max_px, **kw):
    counts = image_counts(prob, gt, _fraction(max_px), **kw)
    return boundary_scores(counts[None])


def _line(row: int, start: int = 5, stop: int = 55) -> np.ndarray:
    m = np.zeros((H, W), dtype=bool)
    m[row, start:stop] = True
    return m


def test_identical_maps_give_f_one():
    gt = _line(20)
    s = _ods(gt.astype(float), gt, 2.0)
    assert s["odsF"] == pytest.approx(1.0, abs=1e-15)
    assert s["oisF"] == pytest.approx(1.0, abs=1e-15)


def test_one_pixel_shift_matches_within_one_pixel_and_not_below():
    gt, pred = _line(20), _line(21)
    assert _ods(pred.astype(float), gt, 1.0)["odsF"] == pytest.approx(1.0, abs=1e-15)
    assert _ods(pred.astype(float), gt, 0.9)["odsF"] == 0.0


def test_thick_prediction_loses_precision_unless_thinned():
    gt = np.zeros((9, 14), dtype=bool)
    gt[4, 2:12] = True  # 10 pixels
    band = np.zeros_like(gt)
    band[3:6, 2:12] = True  # 30 pixels, 3 wide
    diag = math.hypot(*gt.shape)
    thick = boundary_scores(image_counts(band.astype(float), gt, 1.5 / diag, thin_pred=False)[None])
    # every gt pixel matched, 10 of 30 predicted pixels matched
    assert thick["odsP"] == pytest.approx(1 / 3, abs=1e-15)
    assert thick["odsR"] == 1.0
    assert thick["odsF"] == pytest.approx(0.5, abs=1e-15)
    thinned = boundary_scores(image_counts(band.astype(float), gt, 1.5 / diag)[None])
    # the band thins to its middle row minus one pixel at each end: 8 pixels, all matched
    assert thinned["odsP"] == 1.0
    assert thinned["odsR"] == pytest.approx(0.8, abs=1e-15)
    assert thinned["odsF"] == pytest.approx(2 * 0.8 / 1.8, abs=1e-15)


@pytest.mark.filterwarnings("error")
def test_empty_prediction_and_empty_ground_truth_follow_seism():
    gt, empty = _line(20), np.zeros((H, W), dtype=bool)
    no_pred = _ods(empty.astype(float), gt, 2.0)  # SEISM: recall 0, precision 1
    assert (no_pred["odsF"], no_pred["odsP"], no_pred["odsR"]) == (0.0, 1.0, 0.0)
    no_gt = _ods(gt.astype(float), empty, 2.0)  # SEISM: recall 1, precision 0
    assert (no_gt["odsF"], no_gt["odsP"], no_gt["odsR"]) == (0.0, 0.0, 1.0)
    both = _ods(empty.astype(float), empty, 2.0)  # gather_measure: the no-prediction rule wins
    assert (both["odsF"], both["odsP"], both["odsR"]) == (0.0, 1.0, 0.0)
    assert boundary_scores(np.zeros((0, 99, 4)))["odsF"] == 0.0


def test_two_predicted_pixels_compete_for_one_ground_truth_pixel():
    # a distance transform would call both predictions correct (precision 1)
    gt = np.zeros((H, W), dtype=bool)
    gt[20, 20] = True
    pred = np.zeros((H, W), dtype=bool)
    pred[20, 19] = pred[20, 21] = True
    s = _ods(pred.astype(float), gt, 1.5)
    assert s["odsP"] == 0.5 and s["odsR"] == 1.0


def test_optimal_assignment_beats_greedy_nearest_match():
    # P1 is nearest to G2, but taking it leaves P2 (which only reaches G2) unmatched;
    # the optimal assignment P1-G1, P2-G2 matches both
    gt = np.zeros((H, W), dtype=bool)
    gt[18, 20] = gt[20, 21] = True  # G1, G2
    pred = np.zeros((H, W), dtype=bool)
    pred[20, 20] = pred[20, 23] = True  # P1, P2
    s = _ods(pred.astype(float), gt, 2.2)
    assert s["odsP"] == 1.0 and s["odsR"] == 1.0


def _max_matching_by_enumeration(pairs: set, n_pred: int) -> int:
    """Every way to give each predicted pixel one free candidate or nothing."""

    def best(i: int, used: frozenset) -> int:
        if i == n_pred:
            return 0
        options = [best(i + 1, used)]
        options += [1 + best(i + 1, used | {j}) for a, j in pairs if a == i and j not in used]
        return max(options)

    return best(0, frozenset())


@pytest.mark.parametrize("seed", range(5))
def test_match_count_is_a_maximum_matching(seed):
    rng = np.random.default_rng(seed)
    gt = np.zeros((12, 12), dtype=bool)
    gt[tuple(rng.integers(0, 12, (2, 5)))] = True
    pred_yx = rng.integers(0, 12, (5, 2))
    pred_yx = np.unique(pred_yx, axis=0)
    i, j, _ = candidate_pairs(pred_yx, gt, 2.5)
    expected = _max_matching_by_enumeration(
        set(zip(i.tolist(), j.tolist(), strict=True)), len(pred_yx)
    )
    assert match_count(i, j, len(pred_yx), int(gt.sum())) == expected


@pytest.mark.parametrize("length", [50, 150])
def test_long_shifted_run_is_where_bsds_differs(length):
    # gt on columns 1..L, prediction on 0..L-1 of one row, max_dist = 1 px.
    # BSDS's objective: shift every pair (cost 100 each) or keep L-1 coincident pairs and
    # pay one outlier (ow = ceil(100 * 100 * 1) = 10000): it shifts iff 100 * L < 10000.
    gt = np.zeros((5, length + 2), dtype=bool)
    gt[2, 1 : length + 1] = True
    pred = np.zeros_like(gt)
    pred[2, 0:length] = True
    match_pred, match_gt = correspond_pixels_bsds(pred, gt, 1.0)
    bsds = int(match_pred.sum())
    assert bsds == int(match_gt.sum())
    assert bsds == (length if 100 * length < 10000 else length - 1)
    i, j, _ = candidate_pairs(np.argwhere(pred), gt, 1.0)
    assert match_count(i, j, length, length) == length


def test_quantization_reads_probabilities_as_the_8bit_png_round_trip():
    gt = _line(20)
    prob = gt * 0.5  # floor(0.5 * 255) / 255 = 127/255 < 0.5
    at = int(np.flatnonzero(SEISM_THRESHOLDS == 0.5)[0])
    assert image_counts(prob, gt, _fraction(2.0))[at, 3] == 0
    assert image_counts(prob, gt, _fraction(2.0), quantize=False)[at, 3] == 50


def test_split_scores_from_hand_counts():
    thresholds = np.array([0.3, 0.6])
    counts = np.array(
        [
            [[5, 10, 5, 5], [8, 10, 8, 16]],  # image 1: (cntR, sumR, cntP, sumP) per threshold
            [[0, 10, 0, 0], [5, 10, 5, 10]],  # image 2: no prediction at the first threshold
        ]
    )
    s = boundary_scores(counts, thresholds)
    # summed: t=0.3 R=5/20 P=5/5 F=0.4; t=0.6 R=13/20 P=13/26 F=2*.65*.5/1.15
    assert s["odsF"] == pytest.approx(2 * 0.65 * 0.5 / 1.15, abs=1e-15)
    assert s["odsThreshold"] == 0.6
    # per image best: image 1 at 0.3 (F 2/3 > 8/13), image 2 at 0.6 -> R=10/20, P=10/15
    assert s["oisF"] == pytest.approx(2 * 0.5 * (2 / 3) / (0.5 + 2 / 3), abs=1e-15)


def test_average_precision_interpolates_over_the_recall_grid():
    # recall 0.255 -> 0.655 with precision 1 -> 0.5: grid points 0.26 ... 0.65 (40 of them)
    rec = np.array([0.655, 0.255])
    prec = np.array([0.5, 1.0])
    grid = np.arange(26, 66) / 100
    expected = np.sum(1.0 - 0.5 * (grid - 0.255) / 0.4) / 100
    assert average_precision(prec, rec) == pytest.approx(expected, abs=1e-12)  # 40 terms ~1e-16


def test_seg2bmap_marks_the_pixel_before_a_label_change():
    labels = np.zeros((4, 6), dtype=int)
    labels[:, 3:] = 1
    expected = np.zeros((4, 6), dtype=bool)
    expected[:, 2] = True
    np.testing.assert_array_equal(seg2bmap(labels), expected)


def test_metric_streams_batches_like_the_split_function():
    rng = np.random.default_rng(0)
    gts = np.zeros((3, H, W), dtype=bool)
    gts[:, 20, 5:55] = True
    gts[1, 5:35, 30] = True
    probs = np.clip(gts + rng.normal(0, 0.3, gts.shape), 0, 1)
    metric = BoundaryFMeasure(_fraction(2.0))
    metric.update(torch.from_numpy(probs[:2]), torch.from_numpy(gts[:2]))
    metric.update(torch.from_numpy(probs[2:]), torch.from_numpy(gts[2:]).to(torch.uint8))
    out = metric.compute()
    counts = np.stack([image_counts(p, g, _fraction(2.0)) for p, g in zip(probs, gts, strict=True)])
    expected = boundary_scores(counts)
    for key, value in expected.items():
        # same integer counts, same float formula: equal up to rounding of one division
        assert float(out[key]) == pytest.approx(value, abs=1e-15)


def test_metric_rejects_non_binary_targets_and_bad_max_dist():
    metric = BoundaryFMeasure(0.0075)
    with pytest.raises(UserError, match="binary"):
        metric.update(torch.zeros(1, 4, 4), torch.full((1, 4, 4), 2))
    with pytest.raises(UserError, match="diagonal"):
        BoundaryFMeasure(3.0)


def test_counts_equal_the_exact_bsds_objective_on_blurred_edges():
    # a blurred, shifted, partly weak boundary map: our maximum matching and the exact
    # minimiser of BSDS's cost (LAPJVsp) match the same number of pixels at every threshold
    rng = np.random.default_rng(3)
    labels = np.zeros((H, W), dtype=int)
    labels[12:30, 8:35] = 1
    labels[20:38, 28:55] = 2
    gt = seg2bmap(labels)
    prob = ndimage.gaussian_filter(np.roll(gt, 1, axis=0) * 1.0, 1.2) * 4
    prob = np.clip(prob + 0.2 * ndimage.gaussian_filter(rng.random((H, W)), 2), 0, 1)
    thresholds = np.array([0.1, 0.3, 0.5, 0.7])
    counts = image_counts(prob, gt, _fraction(3.0), thresholds)
    values = np.floor(prob * 255) / 255
    for k, t in enumerate(thresholds):
        match_pred, _ = correspond_pixels_bsds(thin(values >= t), thin(gt), 3.0)
        assert counts[k, 0] == match_pred.sum() > 0


def _counts_one_threshold_at_a_time(prob, gt, max_px, thresholds, quantize):
    """The protocol written out per threshold: no shared thinning, pairs or levels."""
    values = np.floor(np.clip(prob, 0, 1) * 255) / 255 if quantize else prob
    gt_thin = thin(gt)
    rows = []
    for t in thresholds:
        pred_yx = np.argwhere(thin(values >= t))
        i, j, _ = candidate_pairs(pred_yx, gt_thin, max_px)
        matched = match_count(i, j, len(pred_yx), int(gt_thin.sum()))
        rows.append([matched, gt_thin.sum(), matched, len(pred_yx)])
    return np.array(rows, dtype=np.int64)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("quantize", [True, False])
def test_shared_work_across_thresholds_gives_the_per_threshold_counts(seed, quantize):
    # image_counts shares thinnings between thresholds with the same map, builds the
    # candidate pairs once and compares 8-bit levels; the counts are integers, so the two
    # paths must agree exactly. Sparse maps (few distinct values) make maps repeat.
    rng = np.random.default_rng(seed)
    labels = ndimage.label(rng.random((H, W)) < 0.02)[0] % 4
    gt = seg2bmap(ndimage.grey_dilation(labels, size=7))
    prob = ndimage.gaussian_filter(rng.random((H, W)), 1.5) * 3 - 1
    if seed % 2:
        prob = np.round(prob * 4) / 4  # five distinct values: most thresholds repeat a map
    prob = np.clip(prob, 0, 1)
    thresholds = np.concatenate([rng.permutation(SEISM_THRESHOLDS)[:30], [0.0, 1.0, 1.5]])
    expected = _counts_one_threshold_at_a_time(prob, gt, 2.5, thresholds, quantize)
    counts = image_counts(prob, gt, _fraction(2.5), thresholds, quantize=quantize)
    np.testing.assert_array_equal(counts, expected)


@pytest.mark.slow
def test_worker_processes_give_the_same_counts_and_scores():
    rng = np.random.default_rng(5)
    gts = np.zeros((3, H, W), dtype=bool)
    gts[:, 20, 5:55] = True
    gts[2, 5:35, 30] = True
    probs = np.clip(gts + rng.normal(0, 0.3, gts.shape), 0, 1)
    serial = split_counts(list(probs), list(gts), _fraction(2.0))
    expected = np.stack(
        [image_counts(p, g, _fraction(2.0)) for p, g in zip(probs, gts, strict=True)]
    )
    np.testing.assert_array_equal(serial, expected)
    np.testing.assert_array_equal(
        split_counts(list(probs), list(gts), _fraction(2.0), workers=2), expected
    )
    metric = BoundaryFMeasure(_fraction(2.0), workers=2)
    metric.update(torch.from_numpy(probs), torch.from_numpy(gts))
    out = metric.compute()
    for key, value in boundary_scores(expected).items():
        # same integer counts, same float formula: equal up to rounding of one division
        assert float(out[key]) == pytest.approx(value, abs=1e-15)
    with pytest.raises(UserError, match="workers"):
        BoundaryFMeasure(0.0075, workers=-1)
