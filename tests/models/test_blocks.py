"""ASPP, decoders, squeeze-and-excitation and self-attention."""

from __future__ import annotations

import pytest
import torch

from scenemtl.models.blocks import (
    ASPP,
    AdaptiveBins,
    DeepLabV3PlusDecoder,
    DilatedAvgPool,
    HeadDecoder,
    MultiScaleSkip,
    Projection,
    SelfAttention,
    SqueezeExcitation,
    VortexPooling,
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


def test_dilated_avg_pool_is_avg_pool_at_dilation_one_and_keeps_constants() -> None:
    x = torch.randn(2, 3, 9, 11)
    expected = torch.nn.functional.avg_pool2d(x, 3, 1, 1, count_include_pad=False)
    torch.testing.assert_close(DilatedAvgPool(1)(x), expected)
    # borders average over the taps inside the map: a constant stays constant
    const = torch.full((1, 2, 10, 12), 3.0)
    torch.testing.assert_close(DilatedAvgPool(4)(const), const)


def test_vortex_pools_cascade_to_27_pixel_windows() -> None:
    vortex = VortexPooling(1, 4)
    delta = torch.zeros(1, 1, 61, 61)
    delta[0, 0, 30, 30] = 1.0
    x = delta
    supports = []
    for pool in vortex.pools:
        x = pool(x)
        rows = (x[0, 0].abs() > 0).any(dim=1).nonzero()
        supports.append(int(rows.max() - rows.min() + 1))
    # 3x3 pools of dilation 1, 3, 9 one after the other: windows of 3, 9 and 27 pixels
    assert supports == [3, 9, 27]


def test_vortex_pooling_shapes_rates_and_batch_size_one() -> None:
    vortex = VortexPooling(16, 8, rates=(3, 9, 27), squeeze_excitation=True, se_reduction=4)
    assert [b[0].dilation for b in vortex.branches[1:]] == [(3, 3), (9, 9), (27, 27)]
    x = torch.randn(1, 16, 7, 9, requires_grad=True)
    y = vortex.train()(x)
    assert y.shape == (1, 8, 7, 9)
    y.sum().backward()
    assert all(p.grad is not None for p in vortex.parameters())


def test_multi_scale_skip_starts_as_the_mean_of_its_levels() -> None:
    fusion = MultiScaleSkip(PYRAMID_CH, 6).eval()
    assert fusion.levels == [4, 8, 16]
    feats = pyramid()
    with torch.no_grad():
        out = fusion(feats)
        size = feats[4].shape[-2:]
        reduced = [
            torch.nn.functional.interpolate(
                fusion.reduce[str(s)](feats[s]), size=size, mode="bilinear", align_corners=False
            )
            for s in (4, 8, 16)
        ]
    assert out.shape == (2, 6, *size)
    torch.testing.assert_close(out, sum(reduced) / 3)
    assert torch.allclose(fusion.last_weights, torch.full_like(fusion.last_weights, 1 / 3))
    # a level scoring higher takes a larger share, per pixel
    with torch.no_grad():
        fusion.score["16"].bias.fill_(2.0)
        fusion(feats)
    assert (fusion.last_weights[:, 2] > 0.7).all()
    # levels the pyramid lacks are left out (output stride 8: no 16x level)
    assert MultiScaleSkip({2: 8, 4: 8, 8: 12}, 6).levels == [4, 8]


def test_attention_skips_replace_the_4x_skip_by_the_fusion() -> None:
    dec = DeepLabV3PlusDecoder(16, PYRAMID_CH, 3, channels=8, skip_channels=4, attention_skips=True)
    feats = pyramid()
    pred, _ = dec(feats[16], feats)
    assert pred.shape == (2, 3, *feats[4].shape[-2:])
    # the 16x level now reaches the predictions through the skip, not only the bottleneck
    feats16 = {k: v.clone().requires_grad_() for k, v in feats.items()}
    dec(feats[16], feats16)[0].sum().backward()
    assert feats16[16].grad.abs().sum() > 0 and feats16[8].grad.abs().sum() > 0
    assert isinstance(dec.stages["s4"].reduce, torch.nn.Identity)
    with pytest.raises(ValueError, match="need skip=True"):
        DeepLabV3PlusDecoder(16, PYRAMID_CH, 3, skip=False, attention_skips=True)


def test_adaptive_bins_predict_an_expectation_over_per_image_centers() -> None:
    torch.manual_seed(0)
    head = AdaptiveBins(cin=8, cin_bottleneck=16, n_bins=6, embed=16, heads=2, layers=1).eval()
    features = torch.randn(2, 8, 12, 20)
    bottleneck = torch.randn(2, 16, 3, 5)
    bottleneck[1] *= 5  # another image, other bins
    with torch.no_grad():
        depth = head(features, bottleneck)
    centers = head.last_centers
    assert depth.shape == (2, 1, 12, 20) and centers.shape == (2, 6)
    assert (centers.diff(dim=1) > 0).all()  # sorted: widths are positive
    assert not torch.allclose(centers[0], centers[1])
    # a convex combination of the centers, which start inside [-3, 3]
    assert (centers > -3).all() and (centers < 3).all()
    for b in range(2):
        assert centers[b, 0] <= depth[b].min() and depth[b].max() <= centers[b, -1]


def test_adaptive_bins_range_is_unconstrained_for_every_depth_space() -> None:
    head = AdaptiveBins(cin=4, cin_bottleneck=4, n_bins=4, embed=8, heads=2, layers=1).eval()
    x, z = torch.randn(1, 4, 6, 6), torch.randn(1, 4, 2, 2)
    with torch.no_grad():
        head.range.bias[0] = -40.0  # e.g. standardized inverse depth far below the mean
        assert (head(x, z) < -33).all()
        head.range.bias[0] = 25.0
        assert (head(x, z) > 25).all()


def test_adaptive_bins_attend_over_a_bounded_number_of_tokens(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    head = AdaptiveBins(cin=4, cin_bottleneck=4, n_bins=5, embed=8, heads=2, layers=1).eval()
    lengths = []
    forward = torch.nn.TransformerEncoder.forward

    def spy(self, src, *args, **kwargs):  # type: ignore[no-untyped-def]
        lengths.append(src.shape[1])
        return forward(self, src, *args, **kwargs)

    monkeypatch.setattr(torch.nn.TransformerEncoder, "forward", spy)
    with torch.no_grad():
        head(torch.randn(1, 4, 8, 8), torch.randn(1, 4, 4, 6))  # small: every position
        head(torch.randn(1, 4, 8, 8), torch.randn(1, 4, 64, 128))  # 2048x4096 at 1/32
    # range token + bins + tokens, pooled to at most 16x32 for large inputs
    assert lengths == [1 + 5 + 24, 1 + 5 + 16 * 32]


def test_decoder_with_adaptive_bins_replaces_its_prediction_conv() -> None:
    dec = DeepLabV3PlusDecoder(16, PYRAMID_CH, 1, channels=8, skip_channels=4, adaptive_bins=4)
    assert dec.predict is None and dec.bins is not None
    feats = pyramid()
    pred, _ = dec(feats[16], feats)
    assert pred.shape == (2, 1, *feats[4].shape[-2:])
    with pytest.raises(ValueError, match="one channel"):
        DeepLabV3PlusDecoder(16, PYRAMID_CH, 3, adaptive_bins=4)
