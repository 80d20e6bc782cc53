"""mtan, cross_stitch and nddr on every hierarchical encoder family (ResNet, ConvNeXt,
Swin, MobileNetV3) at tiny widths: the stage protocol each family gives (stem + stages is
forward; each stage's last module is a block, the one MTAN reads around), and each
architecture builds, returns full-size outputs and trains one step with a gradient in
every learnable parameter (DDP's find_unused_parameters=False needs that)."""

from __future__ import annotations

import pytest
import torch

from scenemtl.errors import UserError
from scenemtl.models.config import ModelConfig
from scenemtl.models.encoders.convnext import ConvNeXtBlock
from scenemtl.models.encoders.mobilenetv3 import ConvBnAct, InvertedResidual
from scenemtl.models.encoders.registry import ENCODER_FAMILIES, build_encoder
from scenemtl.models.encoders.resnet import BasicBlock
from scenemtl.models.encoders.swin import SwinBlock
from scenemtl.models.registry import build_model

STAGEWISE = ("mtan", "cross_stitch", "nddr")
TINY = {
    "resnet": ("resnet18", {"width": 8}),
    "convnext": ("convnext_tiny", {"embed_dim": 8}),
    "swin": ("swin_tiny_patch4_window7_224", {"embed_dim": 32}),
    "mobilenetv3": ("mobilenetv3_large_100", {}),
}
"""Family -> (encoder, encoder_options) of a tiny member (from scratch)."""
LAST_BLOCK = {
    "resnet": BasicBlock,
    "convnext": ConvNeXtBlock,
    "swin": SwinBlock,
    "mobilenetv3": (InvertedResidual, ConvBnAct),
}
HEADS = {"semseg": 5, "depth": 1}


def test_every_hierarchical_family_is_covered() -> None:
    hierarchical = {k for k, f in ENCODER_FAMILIES.items() if f.hierarchical}
    assert hierarchical == set(TINY)


@pytest.mark.parametrize("family", list(TINY))
def test_stem_then_stages_is_forward_and_ends_in_a_block(family: str) -> None:
    name, options = TINY[family]
    torch.manual_seed(0)
    enc = build_encoder(name, options=options).eval()
    x = torch.randn(2, 3, 45, 61)  # sides not multiples of 32: every padding rule runs
    with torch.no_grad():
        pyramid = enc(x)
        h = enc.stem(x)
        assert h.shape[-2:] == pyramid[enc.stem_stride].shape[-2:]
        stages = enc.stage_blocks
        assert len(stages) == len(enc.stage_scales) == len(enc.stage_out_channels)
        for j, stage in enumerate(stages):
            assert isinstance(stage, torch.nn.Sequential) and len(stage) >= 2
            u = stage[:-1](h)
            h = stage[-1](u)
            assert u.shape[1] == enc.stage_inner_channels[j]
            assert h.shape[1] == enc.stage_out_channels[j]
            scale = enc.stage_scales[j]
            # the same operations in the same order (up to layout: Swin permutes at each
            # stage border here), so equal to float32 rounding of O(1) activations
            torch.testing.assert_close(h, pyramid[scale], rtol=0, atol=1e-5)
    # the last module is (or wraps) the stage's last block
    for stage in stages:
        inner = list(stage[-1].modules())
        assert any(isinstance(m, LAST_BLOCK[family]) for m in inner)


def test_protocol_stages_keep_the_published_parameter_names() -> None:
    # the views are built on the fly: no parameter is registered twice or renamed
    enc = build_encoder("convnext_tiny", options={"embed_dim": 8})
    names = [n for n, _ in enc.named_parameters()]
    assert names[0] == "stem.0.weight" and "stages.1.downsample.1.weight" in names
    assert len(names) == len(set(names))
    stage_params = {id(p) for s in enc.stage_blocks for p in s.parameters()}
    stem_params = {id(p) for p in enc.stem.parameters()}
    assert stage_params | stem_params == {id(p) for p in enc.parameters()}


@pytest.mark.parametrize("architecture", STAGEWISE)
@pytest.mark.parametrize("family", list(TINY))
def test_stagewise_architecture_trains_on_family(architecture: str, family: str) -> None:
    name, options = TINY[family]
    torch.manual_seed(0)
    cfg = ModelConfig(
        architecture=architecture,
        encoder=name,
        encoder_options=options,
        channels=8,
        skip_channels=4,
    )
    model = build_model(cfg, HEADS).train()
    x = torch.randn(2, 3, 40, 56)
    out = model(x)
    assert {k: tuple(v[-1].shape) for k, v in out.items()} == {
        "semseg": (2, 5, 40, 56),
        "depth": (2, 1, 40, 56),
    }
    loss = sum(o.float().pow(2).mean() for outputs in out.values() for o in outputs)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    opt.zero_grad()
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, missing[:3]
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    opt.step()


@pytest.mark.parametrize("architecture", STAGEWISE)
def test_the_plain_vit_is_refused_in_one_line(architecture: str) -> None:
    cfg = ModelConfig(architecture=architecture, encoder="vit_small_patch16_224", channels=8)
    with pytest.raises(UserError) as error:
        build_model(cfg, HEADS)
    assert "\n" not in str(error.value) and "vit_small_patch16_224" in str(error.value)


def test_width_options_are_checked_in_one_line() -> None:
    with pytest.raises(UserError, match="multiple of 32"):
        build_encoder("swin_tiny_patch4_window7_224", options={"embed_dim": 48})
    with pytest.raises(UserError, match="embed_dim"):
        build_encoder("convnext_tiny", options={"embed_dim": 0})
    with pytest.raises(UserError, match="published weights have embed_dim 96"):
        build_encoder("convnext_tiny", "imagenet", {"embed_dim": 8})
