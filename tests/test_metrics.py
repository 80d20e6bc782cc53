import math
import warnings

import numpy as np
import pytest
import torch

from scenemtl.codecs.classes import CITYSCAPES_NUM_CLASSES, class_names
from scenemtl.data.format import DISPARITY8, IGNORE_INDEX, METERS16, decode_depth, encode_depth
from scenemtl.metrics import DepthMetrics, MultiTaskMetrics, SemsegMetrics, grader
from scenemtl.tasks import build_tasks, legacy_task_specs
from scenemtl.tasks.depth_space import DEPTH_SPACES, DepthSpace

TASKS = build_tasks(legacy_task_specs())
SEMSEG, DEPTH = TASKS
C = CITYSCAPES_NUM_CLASSES

# --------------------------------------------------------------------------------------
# numpy references, written from the definitions in shared/DESIGN.md


def np_iou(pred: np.ndarray, gt: np.ndarray, c: int = C) -> np.ndarray:
    """Per-class IoU in percent from all labelled pixels; NaN where union is empty."""
    keep = gt != IGNORE_INDEX
    p, g = pred[keep], gt[keep]
    out = np.full(c, np.nan)
    for k in range(c):
        inter = np.sum((p == k) & (g == k))
        union = np.sum((p == k) | (g == k))
        if union:
            out[k] = 100.0 * inter / union
    return out


def np_depth_metrics(pred: np.ndarray, gt: np.ndarray) -> dict[str, float]:
    pred = pred.astype(np.float64)
    gt = gt.astype(np.float64)
    silogs = []
    for p, g in zip(pred, gt, strict=True):
        v = g > 0
        if not v.any():
            continue
        d = np.log(p[v]) - np.log(g[v])
        silogs.append(100 * math.sqrt(np.mean(d**2) - np.mean(d) ** 2))
    v = gt > 0
    p, g = pred[v], gt[v]
    ratio = np.maximum(p / g, g / p)
    return {
        "depth": float(np.mean(silogs)),
        "depth_mae": float(np.mean(np.abs(p - g))),
        "depth_rmse": float(np.sqrt(np.mean((p - g) ** 2))),
        "depth_absrel": float(np.mean(np.abs(p - g) / g)),
        "depth_sqrel": float(np.mean((p - g) ** 2 / g)),
        "depth_logrmse": float(np.sqrt(np.mean((np.log(p) - np.log(g)) ** 2))),
        "depth_delta1": float(100 * np.mean(ratio < 1.25)),
        "depth_delta2": float(100 * np.mean(ratio < 1.25**2)),
        "depth_delta3": float(100 * np.mean(ratio < 1.25**3)),
    }


def random_depth(seed: int, shape=(3, 5, 6)) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    gt = 4.0 + 90.0 * torch.rand(shape, generator=g)
    gt[torch.rand(shape, generator=g) < 0.2] = 0.0
    pred = gt.clamp(min=4.0) * torch.exp(0.3 * torch.randn(shape, generator=g)) + 0.5
    return pred, gt


# --------------------------------------------------------------------------------------
# semseg


def test_miou_tiny_hand_example():
    # classes 0 and 1 only; GT row [0 0 1 255], prediction [0 1 1 0]
    # class 0: inter 1, union 2 -> 50; class 1: inter 1, union 2 -> 50; others undefined
    m = SemsegMetrics()
    m.update(torch.tensor([[[0, 1, 1, 0]]]), torch.tensor([[[0, 0, 1, IGNORE_INDEX]]]))
    out = m.compute()
    assert out[SEMSEG.name].item() == pytest.approx(50.0)
    # without class names the per-class keys are class_<i>
    assert out["semseg_iou/class_0"].item() == pytest.approx(50.0)
    assert math.isnan(out["semseg_iou/class_5"].item())
    assert len([k for k in out if k.startswith("semseg_iou/")]) == C


def test_pixel_accuracy_over_labelled_pixels_of_the_split():
    # batch 1: GT [0 0 1 255], pred [0 1 1 0] -> 2 of 3 labelled right
    # batch 2: GT [2 2 255 255], pred [2 0 1 1] -> 1 of 2 labelled right; total 3 of 5
    m = SemsegMetrics()
    m.update(torch.tensor([[[0, 1, 1, 0]]]), torch.tensor([[[0, 0, 1, IGNORE_INDEX]]]))
    m.update(torch.tensor([[[2, 0, 1, 1]]]), torch.tensor([[[2, 2, IGNORE_INDEX, IGNORE_INDEX]]]))
    out = m.compute()
    assert out["semseg_pixacc"].item() == pytest.approx(60.0)
    assert out["semseg_pixacc"].dtype == torch.float64
    empty = SemsegMetrics()
    empty.update(torch.tensor([[[0, 1]]]), torch.full((1, 1, 2), IGNORE_INDEX))
    assert math.isnan(empty.compute()["semseg_pixacc"].item())


def test_miou_matches_numpy_over_split_not_mean_of_batches():
    g = torch.Generator().manual_seed(0)
    gts = [torch.randint(0, 6, (2, 4, 5), generator=g) for _ in range(3)]
    preds = [torch.randint(0, 7, (2, 4, 5), generator=g) for _ in range(3)]
    gts[1][0, :2] = IGNORE_INDEX
    m = SemsegMetrics(C, names=class_names())
    per_batch = []
    for p, t in zip(preds, gts, strict=True):
        m.update(p, t)
        per_batch.append(np.nanmean(np_iou(p.numpy(), t.numpy())))
    out = m.compute()
    ref = np_iou(torch.cat(preds).numpy(), torch.cat(gts).numpy())
    got = np.array([out[f"semseg_iou/{n}"].item() for n in class_names()])
    np.testing.assert_allclose(got, ref, rtol=1e-12, equal_nan=True)
    assert out[SEMSEG.name].item() == pytest.approx(np.nanmean(ref), rel=1e-12)
    # classes 7..18 are absent from GT and prediction: excluded from the mean; class 6
    # is only predicted: IoU 0, included
    assert np.isnan(ref[7:]).all() and ref[6] == 0.0
    assert out[SEMSEG.name].item() == pytest.approx(np.mean(ref[:7]))
    assert out[SEMSEG.name].item() != pytest.approx(np.mean(per_batch))


def test_semseg_accepts_logits_and_labels_alike():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, C, 3, 4, generator=g)
    gt = torch.randint(0, C, (2, 3, 4), generator=g)
    a, b = SemsegMetrics(), SemsegMetrics()
    a.update(logits, gt)
    b.update(logits.argmax(1), gt)
    assert torch.equal(a.confmat, b.confmat)
    assert a.confmat.sum().item() == gt.numel()


def test_semseg_rejects_bad_input():
    m = SemsegMetrics()
    with pytest.raises(ValueError):
        m.update(torch.zeros(1, 3, 4, dtype=torch.long), torch.zeros(1, 3, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="prediction holds"):
        m.update(torch.full((1, 2, 2), C), torch.zeros(1, 2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="target holds"):
        m.update(torch.zeros(1, 2, 2, dtype=torch.long), torch.full((1, 2, 2), 30))
    with pytest.raises(ValueError, match="logits"):
        m.update(torch.zeros(1, 5, 2, 2), torch.zeros(1, 2, 2, dtype=torch.long))


def test_semseg_all_ignored_gives_nan_not_a_fake_score():
    m = SemsegMetrics()
    m.update(torch.zeros(1, 2, 2, dtype=torch.long), torch.full((1, 2, 2), IGNORE_INDEX))
    assert math.isnan(m.compute()[SEMSEG.name].item())


# --------------------------------------------------------------------------------------
# depth


def test_silog_tiny_hand_example():
    # one image, two valid pixels: d = ln 2, ln 1 -> mean(d^2) - mean(d)^2 = (ln 2 / 2)^2
    m = DepthMetrics()
    m.update(torch.tensor([[[2.0, 1.0, 7.0]]]), torch.tensor([[[1.0, 1.0, 0.0]]]))
    out = m.compute()
    assert out[DEPTH.name].item() == pytest.approx(100 * math.log(2) / 2, rel=1e-12)
    assert out["depth_mae"].item() == pytest.approx(0.5)
    assert out["depth_delta1"].item() == pytest.approx(50.0)


def test_depth_metrics_match_numpy_across_batches():
    pred, gt = random_depth(0, shape=(5, 5, 6))
    gt[3] = 0.0  # an image without valid pixels is skipped, not counted as 0
    m = DepthMetrics()
    m.update(pred[:2, None], gt[:2])  # [B,1,H,W] is accepted too
    m.update(pred[2:], gt[2:])
    out = m.compute()
    ref = np_depth_metrics(pred.numpy(), gt.numpy())
    assert set(out) == set(ref)
    for k, v in ref.items():
        assert out[k].item() == pytest.approx(v, rel=1e-5), k
        assert out[k].dtype == torch.float64


def test_silog_is_per_image_then_averaged():
    # image 0: perfect up to scale (SI-log 0), image 1 has noise; a pixel-pooled
    # computation would mix the two images' scale offsets and differ
    _, gt = random_depth(1, shape=(2, 4, 4))
    gt = gt.clamp(min=5.0)
    noise = torch.exp(0.2 * torch.randn(4, 4, generator=torch.Generator().manual_seed(2)))
    pred = torch.stack([gt[0] * 3.0, gt[1] * noise])
    m = DepthMetrics()
    m.update(pred, gt)
    d1 = np.log(pred[1].numpy().astype(np.float64)) - np.log(gt[1].numpy())
    per_image_1 = 100 * math.sqrt(np.mean(d1**2) - np.mean(d1) ** 2)
    assert m.compute()[DEPTH.name].item() == pytest.approx(per_image_1 / 2, rel=1e-5)


def test_depth_metrics_reject_non_meter_predictions():
    _, gt = random_depth(3)
    space = DepthSpace("log", {"depth_log": {"mean": 3.0, "std": 0.7}})
    normalized = space.encode(gt)  # what a network emits: about half of it negative
    m = DepthMetrics()
    with pytest.raises(ValueError, match="DepthSpace.decode"):
        m.update(normalized, gt)
    with pytest.raises(ValueError, match="DepthSpace.decode"):
        m.update(torch.full_like(gt, float("nan")), gt)
    # predictions at invalid GT pixels do not matter
    pred = gt.clone()
    pred[gt == 0] = -1.0
    m.update(pred, gt)
    assert m.compute()[DEPTH.name].item() == pytest.approx(0.0, abs=1e-6)


def test_depth_metrics_empty_split_is_nan():
    m = DepthMetrics()
    m.update(torch.ones(1, 2, 2), torch.zeros(1, 2, 2))
    assert all(math.isnan(v.item()) for v in m.compute().values())


# --------------------------------------------------------------------------------------
# grader and the multi-task wrapper


@pytest.mark.parametrize(
    "semseg, depth, expected",
    [(80.0, 20.0, 60.0), (40.0, 20.0, 30.0), (80.0, 60.0, 30.0), (30.0, 70.0, 0.0)],
)
def test_grader(semseg, depth, expected):
    assert grader(semseg, depth) == pytest.approx(expected)
    assert grader(torch.tensor(semseg), torch.tensor(depth)).item() == pytest.approx(expected)


def make_batch(seed: int) -> dict[str, torch.Tensor]:
    pred, gt = random_depth(seed, shape=(2, 5, 6))
    g = torch.Generator().manual_seed(seed)
    return {
        "rgb": torch.zeros(2, 3, 5, 6, dtype=torch.uint8),
        SEMSEG.name: torch.randint(0, C, (2, 5, 6), generator=g),
        DEPTH.name: gt,
        "index": torch.arange(2),
        "_pred_m": pred,
    }


def test_multitask_metrics_flat_dict_and_grader():
    m = MultiTaskMetrics(TASKS)
    for seed in range(2):
        batch = make_batch(seed)
        logits = torch.randn(2, C, 5, 6, generator=torch.Generator().manual_seed(seed))
        m.update({SEMSEG.name: logits, DEPTH.name: batch["_pred_m"]}, batch)
    out = m.compute()
    for key in ("semseg", "depth", "grader", "depth_mae", "depth_delta3", "semseg_iou/road"):
        assert key in out
    assert out["grader"].item() == pytest.approx(
        max(out["semseg"].item() - 50, 0) + max(50 - out["depth"].item(), 0)
    )
    m.reset()
    with warnings.catch_warnings():  # torchmetrics warns about compute before update
        warnings.simplefilter("ignore")
        after_reset = m.compute()
    assert math.isnan(after_reset["depth"].item()) and math.isnan(after_reset["grader"].item())


@pytest.mark.parametrize("name", ["semseg", "depth"])
def test_grader_needs_both_course_tasks(name):
    (task,) = build_tasks({name: legacy_task_specs()[name]})
    m = MultiTaskMetrics([task])
    assert not m.has_grader
    batch = make_batch(0)
    pred = batch[SEMSEG.name] if name == SEMSEG.name else batch["_pred_m"]
    m.update({name: pred}, batch)
    out = m.compute()
    assert name in out and "grader" not in out
    assert all(k == name or k.startswith(f"{name}_") for k in out)


def test_metric_states_merge_like_ddp_sync():
    """DDP sync reduces every state with its dist_reduce_fx; merging two halves (what the
    sync does across two processes) must equal one metric over all the data."""
    batches = [make_batch(s) for s in range(4)]
    whole, half_a, half_b = (MultiTaskMetrics(TASKS) for _ in range(3))
    for i, batch in enumerate(batches):
        preds = {SEMSEG.name: batch[SEMSEG.name].roll(1, 2), DEPTH.name: batch["_pred_m"]}
        whole.update(preds, batch)
        (half_a if i % 2 == 0 else half_b).update(preds, batch)
    for name, metric in half_a.tasks.items():
        assert set(metric._reductions) == set(metric._defaults)
        metric.merge_state(half_b.tasks[name])
    got, ref = half_a.compute(), whole.compute()
    assert set(got) == set(ref)
    for k in ref:
        torch.testing.assert_close(got[k], ref[k], equal_nan=True, rtol=1e-12, atol=1e-12)


# --------------------------------------------------------------------------------------
# report 003, section 5.5: metrics must be computed in meters against the depth read from
# disk, never against ground truth that went through a (possibly buggy) inverse transform.


@pytest.mark.parametrize("encoding", [DISPARITY8, METERS16])
def test_metrics_do_not_depend_on_depth_space_or_its_statistics(encoding):
    rng = np.random.default_rng(0)
    true_m = rng.uniform(5.0, 120.0, size=(2, 6, 7))
    true_m[0, :2, :3] = 0.0  # invalid
    # ground truth exactly as the dataset reader returns it: through the PNG codec
    gt = torch.from_numpy(np.stack([decode_depth(encode_depth(d, encoding)) for d in true_m]))
    pred_m = torch.from_numpy(rng.uniform(5.0, 120.0, size=(2, 6, 7)).astype(np.float32))

    reference = DepthMetrics()
    reference.update(pred_m, gt)
    ref = reference.compute()
    np_ref = np_depth_metrics(pred_m.numpy(), gt.numpy())
    assert ref[DEPTH.name].item() == pytest.approx(np_ref["depth"], rel=1e-6)

    stats_a = {
        "depth_m": {"mean": 30.0, "std": 20.0},
        "depth_log": {"mean": 3.2, "std": 0.7},
        "depth_inv": {"mean": 0.05, "std": 0.04},
    }
    stats_b = {
        k: {"mean": v["mean"] * 3.0 + 1.0, "std": v["std"] * 0.1} for k, v in stats_a.items()
    }
    for kind in DEPTH_SPACES:
        for stats in (stats_a, stats_b):
            tasks = build_tasks(legacy_task_specs(), {"depth": {"space": kind}})
            semseg, depth = tasks
            depth.adopt_stats(stats)
            # a network that predicts pred_m perfectly in this space
            net_out = depth.space.encode(pred_m)[:, None]
            batch = {semseg.name: torch.zeros(2, 6, 7, dtype=torch.long), depth.name: gt.clone()}
            logits = torch.zeros(2, C, 6, 7)
            preds = {semseg.name: semseg.decode(logits), depth.name: depth.decode(net_out)}
            m = MultiTaskMetrics(tasks)
            m.update(preds, batch)
            got = m.compute()
            assert torch.equal(batch[DEPTH.name], gt)  # the ground truth is never modified
            for key, value in ref.items():
                # float32 round trip through the space: a few 1e-5 relative at most
                assert got[key].item() == pytest.approx(value.item(), rel=2e-4, abs=1e-3), (
                    kind,
                    key,
                )


def test_a_wrong_inverse_transform_cannot_improve_the_score():
    """The 003 bug made the metric compare transformed prediction with transformed GT.
    Here the only lever is the prediction: decoding with the wrong statistics makes the
    depth metric worse, never better, because the GT side is fixed meters."""
    pred, gt = random_depth(7, shape=(2, 6, 6))
    good = DepthSpace("log", {"depth_log": {"mean": 3.0, "std": 0.8}})
    wrong = DepthSpace("log", {"depth_log": {"mean": 0.0, "std": 1.0}})
    net_out = good.encode(pred)
    scores = {}
    for name, space in (("good", good), ("wrong", wrong)):
        m = DepthMetrics()
        m.update(space.decode(net_out), gt)
        scores[name] = m.compute()
    assert scores["wrong"]["depth_mae"] > scores["good"]["depth_mae"]
    assert scores["wrong"]["depth"] > scores["good"]["depth"]
