import math

import numpy as np
import pytest
import torch

from scenemtl.balancing import build_balancer
from scenemtl.data.format import IGNORE_INDEX
from scenemtl.engine.module import MultiTaskModule
from scenemtl.errors import UserError
from scenemtl.losses import MultiTaskLoss
from scenemtl.models.config import ModelConfig
from scenemtl.tasks import DepthTask, SegmentationTask, build_tasks, legacy_task_specs
from scenemtl.tasks.depth import depth_loss
from scenemtl.tasks.depth_space import DEPTH_SPACES, DepthSpace
from scenemtl.tasks.segmentation import cross_entropy_loss

STATS = {
    "depth_m": {"mean": 20.0, "std": 15.0},
    "depth_log": {"mean": 2.7, "std": 0.8},
    "depth_inv": {"mean": 0.08, "std": 0.06},
}


def np_encode(kind: str, d: np.ndarray) -> np.ndarray:
    key = {"meters": "depth_m", "log": "depth_log", "inverse": "depth_inv"}[kind]
    raw = {"meters": d, "log": np.log(d), "inverse": 1.0 / d}[kind]
    return (raw - STATS[key]["mean"]) / STATS[key]["std"]


def course_tasks(**depth_options: object) -> tuple[SegmentationTask, DepthTask]:
    """The course's semseg and depth tasks, depth normalized with :data:`STATS`."""
    options = {"depth": depth_options} if depth_options else None
    semseg, depth = build_tasks(legacy_task_specs(), options)
    assert isinstance(semseg, SegmentationTask) and isinstance(depth, DepthTask)
    depth.adopt_stats(STATS)
    return semseg, depth


SEMSEG, DEPTH = course_tasks()


def gt_depth(seed: int = 0, shape=(2, 3, 4)) -> torch.Tensor:
    """Meters in [4, 80] with a few invalid (0) pixels, float32 [B,H,W]."""
    g = torch.Generator().manual_seed(seed)
    d = 4.0 + 76.0 * torch.rand(shape, generator=g)
    d[0, 0, :2] = 0.0
    d[1, 2, 3] = 0.0
    return d


# --------------------------------------------------------------------------------------
# DepthSpace


@pytest.mark.parametrize("kind", DEPTH_SPACES)
def test_depth_space_encode_matches_numpy_and_round_trips(kind):
    space = DepthSpace(kind, STATS)
    d = gt_depth()
    valid = (d > 0).numpy()
    enc = space.encode(d)
    ref = np_encode(kind, np.where(valid, d.numpy().astype(np.float64), 1.0))
    np.testing.assert_allclose(enc.numpy()[valid], ref[valid], rtol=1e-5, atol=1e-6)
    assert torch.all(enc[~torch.from_numpy(valid)] == 0)  # invalid -> 0, never inf/NaN
    back = space.decode(enc)
    np.testing.assert_allclose(back.numpy()[valid], d.numpy()[valid], rtol=1e-5)


@pytest.mark.parametrize("kind", DEPTH_SPACES)
def test_decode_is_always_positive_and_finite(kind):
    space = DepthSpace(kind, STATS, min_m=1e-3, max_m=1e4)
    pred = torch.tensor([-1e9, -50.0, -1.0, 0.0, 1.0, 50.0, 1e9])
    out = space.decode(pred)
    assert torch.all(torch.isfinite(out))
    assert torch.all(out >= 1e-3) and torch.all(out <= 1e4)
    # values agree with the differentiable log version
    np.testing.assert_allclose(space.log_meters(pred).numpy(), out.log().numpy(), rtol=1e-5)


def test_decode_upcasts_low_precision_outputs():
    space = DepthSpace("log", STATS)
    out = space.decode(torch.zeros(2, dtype=torch.bfloat16))
    assert out.dtype == torch.float32
    assert out[0].item() == pytest.approx(math.exp(2.7), rel=1e-5)


@pytest.mark.parametrize(
    "kind, stats, fragment",
    [
        ("log", {}, "scenemtl data stats"),
        ("inverse", {"depth_m": {"mean": 1, "std": 1}}, "'depth_inv'"),
        ("meters", None, "scenemtl data stats"),
        ("meters", {"depth_m": {"mean": 1.0, "std": 0.0}}, "unusable"),
        ("meters", {"depth_m": {"mean": "a", "std": 1.0}}, "non-numeric"),
        ("disparity", STATS, "unknown depth space"),
    ],
)
def test_depth_space_bad_config_is_user_error(kind, stats, fragment):
    with pytest.raises(UserError, match=fragment):
        DepthSpace(kind, stats)


def test_depth_space_statistics_come_back_from_a_checkpoint():
    trained = DepthSpace("log", STATS)
    other = {"depth_log": {"mean": 0.0, "std": 1.0}}
    rebuilt = DepthSpace("log", other)
    rebuilt.load_state_dict(trained.state_dict())
    x = torch.linspace(-2, 2, 5)
    torch.testing.assert_close(rebuilt.decode(x), trained.decode(x))


def test_set_stats_replaces_normalization_in_place():
    space = DepthSpace("meters", {"depth_m": {"mean": 0.0, "std": 1.0}})
    mean_buffer = space.mean
    space.set_stats(STATS)
    assert space.mean is mean_buffer
    assert space.decode(torch.tensor([1.0])).item() == pytest.approx(35.0)
    with pytest.raises(UserError, match="scenemtl data stats"):
        space.set_stats({"depth_log": {"mean": 1.0, "std": 1.0}})
    assert space.decode(torch.tensor([1.0])).item() == pytest.approx(35.0)


def test_tasks_decode_to_labels_and_meters():
    semseg, depth = course_tasks(space="inverse")
    logits = torch.randn(2, semseg.channels, 3, 4)
    out = torch.randn(2, 1, 3, 4)
    assert torch.equal(semseg.decode(logits), logits.argmax(1))
    torch.testing.assert_close(depth.decode(out), depth.space.decode(out[:, 0]))


def test_module_decode_takes_last_output_and_decodes():
    net = ModelConfig(architecture="joint", encoder="resnet18", channels=8, skip_channels=4)
    module = MultiTaskModule(net=net, depth_space="inverse")
    module.adopt_dataset_stats(STATS)
    semseg, depth = module.task_list
    logits = torch.randn(2, semseg.channels, 3, 4)
    out = torch.randn(2, 1, 3, 4)
    outputs = {semseg.name: [torch.zeros_like(logits), logits], depth.name: [out * 0, out]}
    preds = module.decode(outputs)
    assert torch.equal(preds[semseg.name], logits.argmax(1))
    torch.testing.assert_close(preds[depth.name], depth.space.decode(out[:, 0]))


# --------------------------------------------------------------------------------------
# semantic loss


def np_cross_entropy(logits: np.ndarray, target: np.ndarray) -> float:
    """Mean over labelled pixels of -log softmax(logits)[target]."""
    lg = logits.transpose(0, 2, 3, 1).reshape(-1, logits.shape[1]).astype(np.float64)
    t = target.reshape(-1)
    keep = t != IGNORE_INDEX
    lg, t = lg[keep], t[keep]
    m = lg.max(1, keepdims=True)
    logp = lg - m - np.log(np.exp(lg - m).sum(1, keepdims=True))
    return float(-logp[np.arange(len(t)), t].mean())


def test_cross_entropy_loss_matches_numpy_with_ignore():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, SEMSEG.channels, 3, 4, generator=g) * 3
    target = torch.randint(0, SEMSEG.channels, (2, 3, 4), generator=g)
    target[0, 1] = IGNORE_INDEX
    got = cross_entropy_loss(logits, target).item()
    assert got == pytest.approx(np_cross_entropy(logits.numpy(), target.numpy()), rel=1e-5)


def test_cross_entropy_loss_without_labels_is_zero_with_gradient():
    logits = torch.randn(1, SEMSEG.channels, 2, 2, requires_grad=True)
    target = torch.full((1, 2, 2), IGNORE_INDEX)
    loss = cross_entropy_loss(logits, target)
    loss.backward()
    assert loss.item() == 0.0
    assert torch.all(logits.grad == 0)


# --------------------------------------------------------------------------------------
# depth loss


@pytest.mark.parametrize("kind", DEPTH_SPACES)
@pytest.mark.parametrize("loss", ["l1", "l2"])
def test_l1_l2_in_depth_space_match_numpy(kind, loss):
    space = DepthSpace(kind, STATS)
    gt = gt_depth(2)
    pred = torch.randn(2, 1, 3, 4, generator=torch.Generator().manual_seed(3))
    got = depth_loss(pred, gt, space, loss).item()
    g = gt.numpy().astype(np.float64)
    valid = g > 0
    diff = pred.numpy()[:, 0].astype(np.float64)[valid] - np_encode(kind, g[valid])
    ref = np.abs(diff).mean() if loss == "l1" else (diff**2).mean()
    assert got == pytest.approx(ref, rel=1e-5)


def np_silog(pred_m: np.ndarray, gt_m: np.ndarray, lam: float) -> float:
    per_image = []
    for p, g in zip(pred_m, gt_m, strict=True):
        v = g > 0
        if not v.any():
            continue
        d = np.log(p[v]) - np.log(g[v])
        per_image.append(math.sqrt(np.mean(d**2) - lam * np.mean(d) ** 2))
    return float(np.mean(per_image))


@pytest.mark.parametrize("kind", DEPTH_SPACES)
@pytest.mark.parametrize("lam", [0.0, 0.5, 0.85])
def test_silog_matches_numpy_per_image_and_skips_empty_images(kind, lam):
    space = DepthSpace(kind, STATS)
    gt = gt_depth(4, shape=(3, 3, 4))
    gt[2] = 0.0  # no valid pixel: must be skipped, not counted as zero
    pred = torch.randn(3, 1, 3, 4, generator=torch.Generator().manual_seed(5)) * 0.5
    got = depth_loss(pred, gt, space, "silog", silog_lambda=lam).item()
    pred_m = space.decode(pred[:, 0]).numpy().astype(np.float64)
    ref = np_silog(pred_m, gt.numpy().astype(np.float64), lam)
    assert got == pytest.approx(ref, rel=1e-4)


def test_silog_with_lambda_one_ignores_global_scale():
    space = DepthSpace("meters", STATS)
    gt = gt_depth(6)
    pred = space.encode(gt * 3.0)[:, None]
    assert depth_loss(pred, gt, space, "silog", silog_lambda=1.0).item() < 1e-3
    assert depth_loss(pred, gt, space, "silog", silog_lambda=0.0).item() == pytest.approx(
        math.log(3.0), rel=1e-4
    )


@pytest.mark.parametrize("loss", ["l1", "l2", "silog"])
def test_depth_loss_without_valid_pixels_is_zero_not_nan(loss):
    space = DepthSpace("log", STATS)
    pred = torch.randn(2, 1, 3, 4, requires_grad=True)
    value = depth_loss(pred, torch.zeros(2, 3, 4), space, loss)
    value.backward()
    assert value.item() == 0.0
    assert torch.all(torch.isfinite(pred.grad)) and torch.all(pred.grad == 0)


def test_silog_pulls_out_of_range_predictions_back():
    # normalized-meters prediction that decodes to negative meters (clamped to min_m)
    space = DepthSpace("meters", STATS)
    gt = torch.full((1, 2, 2), 10.0)
    pred = torch.full((1, 1, 2, 2), -5.0, requires_grad=True)  # 20 - 75 = -55 m
    depth_loss(pred, gt, space, "silog", silog_lambda=0.5).backward()
    assert torch.all(pred.grad < 0)  # gradient descent increases the prediction


def test_depth_loss_rejects_mismatched_shapes():
    space = DepthSpace("log", STATS)
    with pytest.raises(ValueError):
        depth_loss(torch.zeros(1, 1, 3, 3), torch.ones(1, 3, 4), space)


# --------------------------------------------------------------------------------------
# MultiTaskLoss


def make_batch(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    sem = torch.randint(0, SEMSEG.channels, (2, 3, 4), generator=g)
    sem[1, 0] = IGNORE_INDEX
    return {
        "rgb": torch.zeros(2, 3, 3, 4, dtype=torch.uint8),
        SEMSEG.name: sem,
        DEPTH.name: gt_depth(seed),
        "index": torch.arange(2),
    }


def make_outputs(n: int, seed: int = 1, requires_grad: bool = False):
    g = torch.Generator().manual_seed(seed)
    sem = [torch.randn(2, SEMSEG.channels, 3, 4, generator=g) for _ in range(n)]
    dep = [torch.randn(2, 1, 3, 4, generator=g) for _ in range(n)]
    for t in sem + dep:
        t.requires_grad_(requires_grad)
    return {SEMSEG.name: sem, DEPTH.name: dep}


def test_multitask_loss_sums_deep_supervision_and_applies_weights():
    tasks = course_tasks(space="log", loss="l1")
    semseg, depth = tasks
    weighting = build_balancer("fixed", {semseg.name: 0.5, depth.name: 2.0}, tasks=tasks)
    crit = MultiTaskLoss(tasks, weighting=weighting)
    batch, outputs = make_batch(), make_outputs(3)
    out = crit(outputs, batch)
    sem = sum(cross_entropy_loss(p, batch[semseg.name]) for p in outputs[semseg.name])
    dep = sum(depth_loss(p, batch[depth.name], depth.space, "l1") for p in outputs[depth.name])
    assert out.tasks[semseg.name].item() == pytest.approx(sem.item(), rel=1e-6)
    assert out.tasks[depth.name].item() == pytest.approx(dep.item(), rel=1e-6)
    assert out.total.item() == pytest.approx(0.5 * sem.item() + 2.0 * dep.item(), rel=1e-6)
    assert len(out.parts[depth.name]) == 3
    assert float(out.weights[semseg.name]) == 0.5 and float(out.weights[depth.name]) == 2.0


def test_multitask_loss_accepts_single_tensors_and_upsamples_aux_outputs():
    crit = MultiTaskLoss(course_tasks(space="meters", loss="l2"))
    batch = make_batch()
    full = make_outputs(1)
    low = {
        SEMSEG.name: torch.nn.functional.avg_pool2d(full[SEMSEG.name][0], 1),
        DEPTH.name: full[DEPTH.name][0][..., :1, :2],  # a 1x2 auxiliary output
    }
    single = crit({k: v[0] for k, v in full.items()}, batch)
    assert single.total.item() == pytest.approx(crit(full, batch).total.item())
    assert torch.isfinite(crit(low, batch).total)


def test_multitask_loss_backpropagates_to_every_output_and_weighting():
    tasks = course_tasks(space="inverse", loss="silog")
    crit = MultiTaskLoss(tasks, weighting=build_balancer("uncertainty", tasks=tasks))
    assert any(p is crit.weighting.log_vars for p in crit.parameters())
    outputs = make_outputs(2, requires_grad=True)
    batch = make_batch()
    batch[DEPTH.name][:] = 0.0  # no valid depth in the whole batch
    out = crit(outputs, batch)
    assert torch.isfinite(out.total)
    out.total.backward()
    assert crit.weighting.log_vars.grad is not None
    for t in outputs[SEMSEG.name]:
        assert t.grad is not None and t.grad.abs().sum() > 0
    for t in outputs[DEPTH.name]:
        assert t.grad is not None and torch.all(torch.isfinite(t.grad))


def test_multitask_loss_config_errors():
    # the depth loss and its lambda are options of the depth task
    with pytest.raises(UserError, match="depth loss 'huber' unknown"):
        build_tasks(legacy_task_specs(), {"depth": {"loss": "huber"}})
    with pytest.raises(UserError, match="silog_lambda"):
        build_tasks(legacy_task_specs(), {"depth": {"silog_lambda": 1.5}})
    with pytest.raises(UserError, match="unknown depth loss"):
        depth_loss(torch.zeros(1, 1, 2, 2), torch.ones(1, 2, 2), DEPTH.space, "huber")
    crit = MultiTaskLoss(course_tasks(space="log"))
    with pytest.raises(KeyError, match=DEPTH.name):
        crit({SEMSEG.name: make_outputs(1)[SEMSEG.name]}, make_batch())
    batch = make_batch()
    del batch[DEPTH.name]
    with pytest.raises(KeyError, match="ground truth"):
        crit(make_outputs(1), batch)
