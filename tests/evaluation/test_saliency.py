"""Saliency maxF (split-summed, beta^2 = 0.3) and IoU (per-image mean): known answers."""

import numpy as np
import pytest
import torch

from scenemtl.errors import UserError
from scenemtl.evaluation.saliency import SaliencyMetrics


def _run(probs, targets, **kw):
    metric = SaliencyMetrics(**kw)
    metric.update(torch.tensor(probs, dtype=torch.float64), torch.tensor(targets))
    return {k: float(v) for k, v in metric.compute().items()}


def test_max_f_by_hand():
    prob = [[[0.9, 0.62], [0.3, 0.02]]]
    target = [[[1, 0], [1, 0]]]
    # t <= 0.30: P=2/3 R=1 -> 1.3*(2/3)/(0.3*(2/3)+1) = 0.7222; 0.35..0.60: P=R=1/2 -> 0.5
    # 0.65..0.90: P=1 R=1/2 -> 1.3*0.5/(0.3+0.5) = 0.8125; 0.95: nothing predicted -> 0
    out = _run(prob, target)
    assert out["maxF"] == pytest.approx(0.8125, abs=1e-12)
    assert out["maxF_threshold"] == pytest.approx(0.65, abs=1e-12)


def test_max_f_sums_counts_over_the_split_not_per_image():
    # image A: 1 true positive of 1 predicted, 1 actual; image B: 1 tp of 3 predicted,
    # 1 actual, at every threshold below 0.8. Summed: P = 2/4, R = 1 -> F = 0.65/1.15.
    # (the mean of the per-image F would be (1 + 1.3*(1/3)/(0.1+1)) / 2 = 0.697)
    probs = [[[0.8, 0.0, 0.0, 0.0]], [[0.8, 0.8, 0.8, 0.0]]]
    targets = [[[1, 0, 0, 0]], [[1, 0, 0, 0]]]
    assert _run(probs, targets)["maxF"] == pytest.approx(0.65 / 1.15, abs=1e-12)


def test_ignored_pixels_count_nowhere():
    probs = [[[0.9, 0.9, 0.1]]]
    assert _run(probs, [[[1, 255, 0]]])["maxF"] == pytest.approx(1.0, abs=1e-12)
    assert _run(probs, [[[1, 0, 0]]])["maxF"] < 1.0


def test_iou_is_the_best_threshold_of_the_per_image_mean():
    # image A: prob 0.5 on its one salient pixel and 0.95 on a wrong one:
    #   t < 0.5: IoU 1/2; 0.5 <= t < 0.95: IoU 0 (strict >); image B: nothing salient,
    #   nothing predicted above 0.2 -> IoU 1 at every threshold.
    probs = [[[0.5, 0.95, 0.0]], [[0.1, 0.1, 0.1]]]
    targets = [[[1, 0, 0]], [[0, 0, 0]]]
    out = _run(probs, targets)
    assert out["IoU"] == pytest.approx((0.5 + 1.0) / 2, abs=1e-12)
    assert out["IoU_threshold"] == pytest.approx(0.2, abs=1e-12)


def test_empty_split_and_bad_targets():
    with pytest.warns(UserWarning, match="before the ``update``"):  # torchmetrics' notice
        assert SaliencyMetrics().compute()["maxF"] == 0.0
    with pytest.raises(UserError, match="0, 1 or 255"):
        _run([[[0.5]]], [[[2]]])
    with pytest.raises(UserError, match="one shape"):
        SaliencyMetrics().update(torch.zeros(1, 2, 2), torch.zeros(1, 2, 3))


def test_streaming_equals_one_batch():
    rng = np.random.default_rng(0)
    probs = rng.random((4, 8, 8))
    targets = (rng.random((4, 8, 8)) < 0.3).astype(np.int64)
    whole = _run(probs, targets)
    metric = SaliencyMetrics()
    for k in range(4):
        metric.update(torch.tensor(probs[k : k + 1]), torch.tensor(targets[k : k + 1]))
    parts = metric.compute()
    for key, value in whole.items():
        # integer counts are identical; the IoU sums differ by float addition order (<1e-15)
        assert float(parts[key]) == pytest.approx(value, abs=1e-12)
