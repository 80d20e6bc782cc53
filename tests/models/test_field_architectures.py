"""Behaviour of the architectures from the literature and the reports beyond the output
contract (which test_architectures.py and test_sharing.py check for every architecture)."""

from __future__ import annotations

import pytest
import torch

from scenemtl.errors import UserError
from scenemtl.models import build_model
from scenemtl.models.cross_stitch import CrossStitchUnit
from scenemtl.models.mtan import AttentionMask
from scenemtl.models.nddr import NDDRLayer
from tests.models.nets import HEADS, small


def _perturb(module: torch.nn.Module) -> None:
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.5 * torch.randn_like(p))


def test_task_specific_tasks_do_not_interact() -> None:
    torch.manual_seed(0)
    model = build_model(small("task_specific"), HEADS).eval()
    assert set(model.encoders) == set(HEADS)
    assert model.encoders["semseg"] is not model.encoders["depth"]
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        before = model(x)
        _perturb(model.encoders["depth"])
        after = model(x)
    assert torch.equal(after["semseg"][0], before["semseg"][0])
    assert not torch.allclose(after["depth"][0], before["depth"][0])


def test_task_specific_single_task_is_one_deeplab() -> None:
    model = build_model(small("task_specific"), {"depth": 1})
    branched = build_model(small("branched"), {"depth": 1})
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(model) == count(branched)


def test_mtan_masks_gate_the_shared_stage_outputs(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    model = build_model(small("mtan", dilation=(False, False, True)), HEADS).eval()
    x = torch.randn(1, 3, 40, 56)
    with torch.no_grad():
        shared = model.stage_features(x)
        pyramid = model.attended_pyramid("semseg", shared)
        encoder_pyramid = model.encoder(x)
        assert set(pyramid) == set(encoder_pyramid) == {2, 4, 8, 16}
        # attention only scales features down: 0 < mask < 1 and features are >= 0 (ReLU)
        for scale in (4, 8, 16):
            assert (pyramid[scale] <= encoder_pyramid[scale] + 1e-6).all()
            assert not torch.allclose(pyramid[scale], encoder_pyramid[scale])
        # with every mask open the task sees exactly the shared encoder's features
        monkeypatch.setattr(AttentionMask, "forward", lambda self, t: torch.ones_like(t[:, :1]))
        opened = model.attended_pyramid("semseg", shared)
    for scale, features in encoder_pyramid.items():
        torch.testing.assert_close(opened[scale], features, rtol=0, atol=0)


def test_mtan_attention_is_per_task() -> None:
    torch.manual_seed(0)
    model = build_model(small("mtan"), HEADS).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        before = model(x)
        _perturb(model.attention["depth"])
        after = model(x)
    assert torch.equal(after["semseg"][0], before["semseg"][0])
    assert not torch.allclose(after["depth"][0], before["depth"][0])


def test_cross_stitch_unit_starts_at_point_nine_own_point_one_other() -> None:
    unit = CrossStitchUnit(2, 3)
    a, b = torch.randn(2, 3, 4, 5), torch.randn(2, 3, 4, 5)
    out_a, out_b = unit([a, b])
    torch.testing.assert_close(out_a, 0.9 * a + 0.1 * b)
    torch.testing.assert_close(out_b, 0.1 * a + 0.9 * b)
    # three tasks: the 0.1 is shared by the two others
    three = CrossStitchUnit(3, 2)
    assert torch.allclose(three.alpha.sum(dim=1), torch.ones(3, 2))
    assert torch.allclose(three.alpha[0, 1], torch.full((2,), 0.05))


def test_nddr_layer_starts_as_the_same_mixing() -> None:
    layer = NDDRLayer(2, 3).eval()  # fresh BN statistics: mean 0, variance 1
    a, b = torch.randn(2, 3, 4, 5), torch.randn(2, 3, 4, 5)
    out_a, out_b = layer([a, b])
    scale = (1 + 1e-5) ** -0.5
    torch.testing.assert_close(out_a, torch.relu(0.9 * a + 0.1 * b) * scale)
    torch.testing.assert_close(out_b, torch.relu(0.1 * a + 0.9 * b) * scale)


@pytest.mark.parametrize("architecture", ["cross_stitch", "nddr"])
def test_mixed_trunks_exchange_activations(architecture: str) -> None:
    torch.manual_seed(0)
    model = build_model(small(architecture), HEADS).eval()
    assert not model.has_shared_representation
    assert set(model.encoders) == set(HEADS) and len(model.mixers) == 4
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        before = model(x)
        _perturb(model.encoders["depth"].layer1)
        after = model(x)
    # the semseg trunk reads the depth trunk's layer1 through the mixing units
    assert not torch.allclose(after["semseg"][0], before["semseg"][0])


def test_cross_stitch_with_identity_units_is_two_separate_networks() -> None:
    torch.manual_seed(0)
    model = build_model(small("cross_stitch"), HEADS).eval()
    with torch.no_grad():
        for unit in model.mixers:
            unit.alpha.copy_(torch.eye(2)[:, :, None].expand_as(unit.alpha))
        x = torch.randn(1, 3, 32, 32)
        before = model(x)
        _perturb(model.encoders["depth"])
        after = model(x)
    assert torch.equal(after["semseg"][0], before["semseg"][0])


@pytest.mark.parametrize("architecture", ["cross_stitch", "nddr"])
def test_mixed_trunks_need_two_tasks(architecture: str) -> None:
    with pytest.raises(UserError, match="needs at least 2 tasks") as err:
        build_model(small(architecture), {"semseg": 5})
    assert "\n" not in str(err.value)


def test_padnet_predicts_at_the_output_stride_then_distills_before_decoding() -> None:
    torch.manual_seed(0)
    model = build_model(small("padnet", dilation=(False, False, True)), HEADS).eval()
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        raw = model.decode(model.shared_forward(x))
        assert [tuple(o.shape) for o in raw["semseg"]] == [(1, 5, 4, 6), (1, 5, 16, 24)]
        before = model(x)
        _perturb(model.aspp["depth"])
        after = model(x)
    assert torch.equal(after["semseg"][0], before["semseg"][0])  # own intermediate head
    assert not torch.allclose(after["semseg"][1], before["semseg"][1])  # distilled depth


@pytest.mark.parametrize(
    ("dilation", "stages"),
    [
        ((False, False, True), ("initial_16x", "initial_8x", "initial_4x", "final")),
        ((False, True, True), ("initial_8x", "initial_4x", "final")),
    ],
)
def test_mtinet_predicts_at_every_level(dilation: tuple[bool, bool, bool], stages: tuple) -> None:
    torch.manual_seed(0)
    model = build_model(small("mtinet", dilation=dilation), HEADS).eval()
    assert model.output_stages == stages
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        raw = model.decode(model.shared_forward(x))
    scales = [int(s.split("_")[1][:-1]) for s in stages[:-1]] + [4]
    for task, channels in HEADS.items():
        assert [tuple(o.shape) for o in raw[task]] == [
            (1, channels, 64 // s, 96 // s) for s in scales
        ]


def test_mtinet_tasks_interact_at_each_level_through_distillation_and_propagation() -> None:
    torch.manual_seed(0)
    model = build_model(small("mtinet", dilation=(False, False, True)), HEADS).eval()
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        before = model(x)
        _perturb(model.ipm["depth"]["16"])
        after = model(x)
    # semseg's own 16x prediction is untouched, its 8x one reads depth's propagated 16x
    # features, its final one also the distilled ones
    assert torch.equal(after["semseg"][0], before["semseg"][0])
    assert not torch.allclose(after["semseg"][1], before["semseg"][1])
    assert not torch.allclose(after["semseg"][-1], before["semseg"][-1])


@pytest.mark.parametrize("architecture", ["branched", "task_specific", "mtan", "nddr", "padnet"])
def test_depth_bins_head_trains_in_every_per_task_decoder_architecture(architecture: str) -> None:
    torch.manual_seed(0)
    model = build_model(small(architecture, depth_bins={"depth": 8}), HEADS).train()
    assert model.decoder["depth"].bins is not None and model.decoder["semseg"].bins is None
    out = model(torch.randn(1, 3, 40, 56))
    assert out["depth"][-1].shape == (1, 1, 40, 56)
    sum(o.square().mean() for outs in out.values() for o in outs).backward()
    assert [n for n, p in model.named_parameters() if p.grad is None] == []
    assert model.decoder["depth"].bins.bin_tokens.grad.abs().sum() > 0


@pytest.mark.parametrize("architecture", ["joint", "distillation", "mtinet"])
def test_depth_bins_refused_where_no_per_task_decoder_predicts(architecture: str) -> None:
    with pytest.raises(UserError, match="does not predict through the DeepLabV3") as err:
        build_model(small(architecture, depth_bins={"depth": 8}), HEADS)
    assert "\n" not in str(err.value)


def test_depth_bins_need_a_one_channel_task_and_valid_counts() -> None:
    with pytest.raises(UserError, match="'semseg' has 5 output channels"):
        build_model(small("branched", depth_bins={"semseg": 8}), HEADS)
    for bad in ({"depth": 1}, {"depth": True}, {"depth": "64"}, [64]):
        with pytest.raises(UserError, match="model.net.depth_bins"):
            small("branched", depth_bins=bad)
    with pytest.warns(UserWarning, match="no task 'depth'"):
        build_model(small("branched", depth_bins={"depth": 8}), {"semseg": 5})
