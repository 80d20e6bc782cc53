"""ASPP, decoders, squeeze-and-excitation and self-attention."""

from __future__ import annotations

import pytest
import torch

from scenemtl.models.blocks import (
    ASPP,
    DeepLabV3PlusDecoder,
    HeadDecoder,
    Projection,
    SelfAttention,
    SqueezeExcitation,
)

PYRAMID_CH = {2: 8, 4: 8, 8: 12, 16: 16}


def pyramid(h: int = 33, w: int = 47, channels: dict[int, int] = PYRAMID_CH, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return {s: torch.randn(2, c, -(-h // s), -(-w // s), generator=g) for s, c in channels.items()}


def test_aspp_trains_at_batch_size_one() -> None:
    aspp = ASPP(16, 8, rates=(1, 2, 3)).train()
    x = torch.randn(1, 16, 5, 7, requires_grad=True)
    y = aspp(x)
    assert y.shape == (1, 8, 5, 7)
    y.sum().backward()
    assert all(p.grad is not None for p in aspp.parameters())


def test_aspp_branches_use_the_configured_rates() -> None:
    aspp = ASPP(16, 8, rates=(2, 5, 9))
    dilations = [branch[0].dilation[0] for branch in aspp.branches]
    assert dilations == [1, 2, 5, 9]
    assert aspp.branches[0][0].kernel_size == (1, 1)
    assert aspp.project[0].in_channels == 5 * 8


def test_aspp_image_pooling_sees_the_whole_image() -> None:
    # with rates small compared to the map, only the pooling branch links far-apart pixels
    torch.manual_seed(0)
    aspp = ASPP(4, 8, rates=(1, 1, 1)).eval()
    x = torch.randn(1, 4, 20, 20)
    x2 = x.clone()
    x2[..., 15:, 15:] += 5.0
    with torch.no_grad():
        y, y2 = aspp(x), aspp(x2)
    assert not torch.allclose(y[..., :3, :3], y2[..., :3, :3])


def test_projection_is_a_single_1x1() -> None:
    proj = Projection(16, 8)
    assert sum(p.numel() for p in proj.parameters()) == 16 * 8 + 2 * 8
    assert proj(torch.randn(1, 16, 3, 5)).shape == (1, 8, 3, 5)


def test_deeplab_decoder_uses_the_4x_skip() -> None:
    dec = DeepLabV3PlusDecoder(16, PYRAMID_CH, 5, channels=8, skip_channels=4).eval()
    p = pyramid()
    bottleneck = torch.randn(2, 16, 3, 3)
    with torch.no_grad():
        pred, feat = dec(bottleneck, p)
        assert pred.shape == (2, 5, *p[4].shape[-2:])
        assert feat.shape == (2, 8, *p[4].shape[-2:])
        assert dec.feature_channels == 8
        changed = dict(p)
        changed[4] = p[4] + 1.0
        assert not torch.allclose(dec(bottleneck, changed)[0], pred)


def test_decoder_without_skip_ignores_the_encoder_levels() -> None:
    dec = DeepLabV3PlusDecoder(16, PYRAMID_CH, 5, channels=8, skip=False).eval()
    p = pyramid()
    bottleneck = torch.randn(2, 16, 3, 3)
    with torch.no_grad():
        pred, feat = dec(bottleneck, p)
        other = pyramid(seed=1)
        assert torch.equal(dec(bottleneck, other)[0], pred)
    assert pred.shape == (2, 5, 3, 3)
    assert torch.equal(feat, bottleneck)
    # the template's stub: only the 1x1 prediction conv
    assert sum(p.numel() for p in dec.parameters()) == 16 * 5 + 5


@pytest.mark.parametrize("output_stride", [16, 8])
def test_extra_skips_reach_2x_and_8x_when_present(output_stride: int) -> None:
    channels = {s: c for s, c in PYRAMID_CH.items() if s <= output_stride}
    dec = DeepLabV3PlusDecoder(16, channels, 5, channels=8, extra_skips=True).eval()
    assert ("s8" in dec.stages) == (output_stride > 8)
    assert dec.feature_channels == 4
    p = pyramid(channels=channels)
    bottleneck = torch.randn(2, 16, *p[output_stride].shape[-2:])
    with torch.no_grad():
        pred, _ = dec(bottleneck, p)
        assert pred.shape == (2, 5, *p[2].shape[-2:])
        for scale in (2, 8) if output_stride > 8 else (2,):
            changed = dict(p)
            changed[scale] = p[scale] + 1.0
            assert not torch.allclose(dec(bottleneck, changed)[0], pred), scale


def test_squeeze_excitation_scales_channels_by_a_gate() -> None:
    se = SqueezeExcitation(8, reduction=4)
    x = torch.rand(1, 8, 4, 6) + 0.1
    y = se(x)
    ratio = y / x
    # one factor in (0, 1) per channel, the same at every pixel
    assert torch.all((ratio > 0) & (ratio < 1))
    assert torch.allclose(ratio, ratio[..., :1, :1].expand_as(ratio))
    assert se(torch.randn(1, 8, 1, 1)).shape == (1, 8, 1, 1)  # batch 1, 1x1 map


def test_self_attention_starts_half_open() -> None:
    sa = SelfAttention(6, 4)
    x = torch.randn(2, 6, 5, 7)
    assert torch.allclose(sa(x), 0.5 * sa.conv(x))
    assert sa.conv.bias is None and sa.attention.bias is None


def test_head_decoder_shapes() -> None:
    head = HeadDecoder(6, 3, channels=8, n_convs=2, squeeze_excitation=True, se_reduction=2)
    pred, feat = head(torch.randn(1, 6, 5, 7))
    assert pred.shape == (1, 3, 5, 7) and feat.shape == (1, 8, 5, 7)
