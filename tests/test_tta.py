"""Test-time augmentation: views are mapped back correctly and merged as documented."""

from __future__ import annotations

import pytest
import torch

from scenemtl.errors import UserError
from scenemtl.models.registry import ModelConfig, build_model
from scenemtl.tasks import DepthTask, SegmentationTask, build_tasks, legacy_task_specs
from scenemtl.tta import MAX_SCALE, check_scales, is_identity, scaled_size, tta_outputs

STATS = {
    "depth_m": {"mean": 20.0, "std": 10.0},
    "depth_log": {"mean": 2.5, "std": 0.8},
    "depth_inv": {"mean": 0.1, "std": 0.05},
}


def course_tasks(space: str = "meters") -> tuple[SegmentationTask, DepthTask]:
    """The course's 19-class semseg and depth (in ``space``, normalized with STATS)."""
    semseg, depth = build_tasks(legacy_task_specs(), {"depth": {"space": space}})
    assert isinstance(semseg, SegmentationTask) and isinstance(depth, DepthTask)
    depth.adopt_stats(STATS)
    return semseg, depth


def column_ramp(x: torch.Tensor) -> torch.Tensor:
    """[B,1,H,W] holding each pixel's column index: a function that is not flip-invariant."""
    b, _, h, w = x.shape
    return torch.arange(w, dtype=torch.float32).expand(b, 1, h, w).clone()


def test_single_view_is_the_plain_forward():
    torch.manual_seed(0)
    image = torch.randn(2, 3, 9, 13)
    logits = torch.randn(2, 19, 9, 13)
    depth = torch.randn(2, 1, 9, 13)
    tasks = course_tasks()
    out = tta_outputs(lambda x: {"semseg": [logits * 0, logits], "depth": [depth]}, image, tasks)
    assert torch.equal(out["depth"], depth)
    # log-probabilities: same distribution and labels as the logits
    torch.testing.assert_close(out["semseg"].softmax(1), logits.softmax(1))
    assert torch.equal(out["semseg"].argmax(1), logits.argmax(1))


def test_flip_view_is_flipped_back():
    calls = []

    def forward(x):
        calls.append(x.clone())
        return {"depth": [column_ramp(x)]}

    image = torch.randn(1, 3, 4, 6)
    # in the log space the views' mean in log-meters is their mean in the output space
    _, depth = course_tasks("log")
    out = tta_outputs(forward, image, [depth], scales=[1.0], flip=True)
    # second view sees the mirrored image
    assert torch.equal(calls[1], torch.flip(image, dims=[-1]))
    # ramp from the plain view + ramp flipped back from the mirrored view = constant
    torch.testing.assert_close(out["depth"], torch.full((1, 1, 4, 6), 2.5))


def test_scaled_views_run_at_rounded_size_and_come_back_at_input_size():
    sizes = []

    def forward(x):
        sizes.append(tuple(x.shape[-2:]))
        b, _, h, w = x.shape
        return {"semseg": [torch.zeros(b, 19, h, w)], "depth": [torch.ones(b, 1, h, w)]}

    image = torch.randn(2, 3, 10, 15)
    out = tta_outputs(forward, image, course_tasks(), scales=(0.5, 1.0, 1.25), flip=True)
    assert sizes == [(5, 8), (5, 8), (10, 15), (10, 15), (12, 19), (12, 19)]
    assert out["semseg"].shape == (2, 19, 10, 15)
    assert out["depth"].shape == (2, 1, 10, 15)
    torch.testing.assert_close(out["depth"], torch.ones(2, 1, 10, 15))
    assert scaled_size((3, 3), 0.01) == (1, 1)


def test_semseg_averages_probabilities_not_logits():
    # The plain view is fairly sure of class 1; the mirrored one splits between 0 and 2
    # and all but rules out 1. Mean probability keeps class 1; a mean of logits (a
    # product of probabilities) would let the near-zero vote veto it and pick class 0.
    plain = torch.tensor([0.1, 0.9, 1e-9]).log()
    mirror = torch.tensor([0.5, 1e-6, 0.5]).log()

    def forward(x):
        b, _, h, w = x.shape
        logits = mirror if bool(x[0, 0, 0, 0] < 0) else plain
        return {"semseg": [logits.view(1, 3, 1, 1).expand(b, 3, h, w)]}

    image = torch.ones(1, 3, 2, 2)
    image[..., -1] = -1.0  # the top-left pixel is negative only in the mirrored view
    semseg = SegmentationTask("semseg", [{"name": n} for n in ("a", "b", "c")])
    out = tta_outputs(forward, image, [semseg], flip=True)
    expected = (plain.softmax(0) + mirror.softmax(0)) / 2
    torch.testing.assert_close(out["semseg"][0, :, 1, 1].exp(), expected)
    assert out["semseg"].argmax(1).eq(1).all()
    assert ((plain + mirror) / 2).argmax() == 0


@pytest.mark.parametrize("kind", ["meters", "log", "inverse"])
def test_depth_merges_as_geometric_mean_of_meters(kind):
    _, depth = course_tasks(kind)
    space = depth.space

    def forward(x):
        b, _, h, w = x.shape
        meters = 8.0 if bool(x[0, 0, 0, 0] < 0) else 2.0
        return {"depth": [space.encode(torch.full((b, 1, h, w), meters))]}

    image = torch.ones(1, 3, 3, 3)
    image[..., -1] = -1.0
    out = tta_outputs(forward, image, [depth], flip=True)
    torch.testing.assert_close(depth.decode(out["depth"]), torch.full((1, 3, 3), 4.0))


def test_real_network_shapes_and_flip_symmetry():
    torch.manual_seed(0)
    cfg = ModelConfig(
        architecture="branched", encoder="resnet18", encoder_width=16, channels=8, skip_channels=4
    )
    tasks = course_tasks("log")
    net = build_model(cfg, {t.name: t.channels for t in tasks}).eval()
    image = torch.randn(1, 3, 21, 30)
    scales = (0.75, 1.0, 1.5)
    with torch.no_grad():
        out = tta_outputs(net, image, tasks, scales=scales, flip=True)
        mirrored = tta_outputs(net, torch.flip(image, dims=[-1]), tasks, scales=scales, flip=True)
    assert out["semseg"].shape == (1, 19, 21, 30) and out["depth"].shape == (1, 1, 21, 30)
    assert torch.isfinite(out["semseg"]).all() and torch.isfinite(out["depth"]).all()
    # flip TTA makes the prediction equivariant to mirroring the input
    torch.testing.assert_close(mirrored["depth"], torch.flip(out["depth"], dims=[-1]))
    torch.testing.assert_close(mirrored["semseg"], torch.flip(out["semseg"], dims=[-1]))
    preds = {t.name: t.decode(out[t.name]) for t in tasks}
    assert preds["semseg"].shape == (1, 21, 30) and (preds["depth"] > 0).all()


def test_tta_keeps_gradients_for_a_loss():
    net = torch.nn.Conv2d(3, 1, 1)
    image = torch.randn(1, 3, 8, 8)
    _, depth = course_tasks()
    out = tta_outputs(lambda x: {"depth": [net(x)]}, image, [depth], scales=(0.5, 1.0), flip=True)
    out["depth"].sum().backward()
    assert net.weight.grad is not None and net.weight.grad.abs().sum() > 0


@pytest.mark.parametrize(
    "scales", [[], [0.0], [-1.0], [float("nan")], ["big"], [1.0, MAX_SCALE + 0.5], [100]]
)
def test_bad_scales_are_user_errors(scales):
    with pytest.raises(UserError, match="scale"):
        check_scales(scales)
    with pytest.raises(UserError):
        tta_outputs(lambda x: {}, torch.zeros(1, 3, 4, 4), course_tasks(), scales=scales)


def test_largest_scale_is_accepted():
    assert check_scales([MAX_SCALE]) == (MAX_SCALE,)


def test_is_identity():
    assert is_identity([1.0], False)
    assert is_identity((1,), False)
    assert not is_identity([1.0], True)
    assert not is_identity([1.0, 0.5], False)
