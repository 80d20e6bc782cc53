"""DPT's own reassembly on the plain ViTs (``encoder_options.adapter: dpt``): four hooked
blocks, read-out, 1x1 conv, resampling to strides 4-32, checked against the same
computation written here with plain torch functional calls; the hooks and widths per
published size; the adapter the configuration picks; a training step with the DPT head."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from scenemtl.errors import UserError
from scenemtl.models import ModelConfig, build_model
from scenemtl.models.encoders import vit
from scenemtl.models.encoders.vit import FAMILY, ViTEncoder, ViTOptions

TIMM = "vit_small_patch16_224"
DINO = "dinov2_vits14_reg4"
DINO_NOREG = "dinov2_vits14"


@pytest.fixture
def tiny(monkeypatch):
    """The small variants narrowed to 16 wide, 4 blocks, 2 heads, a 3x3 position grid (so
    a 48x48 input needs no position resampling)."""
    for name in (TIMM, DINO, DINO_NOREG):
        v = vit.VARIANTS[name]
        small = dataclasses.replace(v, dim=16, depth=4, heads=2, pos_grid=3)
        monkeypatch.setitem(vit.VARIANTS, name, small)


def _perturbed(encoder: ViTEncoder, seed: int = 0) -> ViTEncoder:
    """float64, every parameter random (layer scales and norms included)."""
    gen = torch.Generator().manual_seed(seed)
    encoder = encoder.double()
    with torch.no_grad():
        for p in encoder.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64) * 0.3)
    return encoder


def _layer_norm(x: Tensor, sd: dict[str, Tensor], key: str) -> Tensor:
    mean = x.mean(-1, keepdim=True)
    var = (x - mean).square().mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + 1e-6) * sd[f"{key}.weight"] + sd[f"{key}.bias"]


def _block_by_hand(t: Tensor, sd: dict[str, Tensor], i: int, heads: int, scale: bool) -> Tensor:
    """Pre-norm block: multi-head softmax attention, exact-GELU MLP, layer scales."""
    p = f"blocks.{i}"
    b, n, d = t.shape
    qkv = _layer_norm(t, sd, f"{p}.norm1") @ sd[f"{p}.attn.qkv.weight"].T
    qkv = (qkv + sd[f"{p}.attn.qkv.bias"]).reshape(b, n, 3, heads, d // heads)
    q, k, v = (qkv[:, :, j].transpose(1, 2) for j in range(3))  # [B, heads, N, d/heads]
    weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d // heads), dim=-1)
    a = (weights @ v).transpose(1, 2).reshape(b, n, d)
    a = a @ sd[f"{p}.attn.proj.weight"].T + sd[f"{p}.attn.proj.bias"]
    t = t + (a * sd[f"{p}.ls1.gamma"] if scale else a)
    h = _layer_norm(t, sd, f"{p}.norm2") @ sd[f"{p}.mlp.fc1.weight"].T + sd[f"{p}.mlp.fc1.bias"]
    h = 0.5 * h * (1 + torch.erf(h / math.sqrt(2)))
    m = h @ sd[f"{p}.mlp.fc2.weight"].T + sd[f"{p}.mlp.fc2.bias"]
    return t + (m * sd[f"{p}.ls2.gamma"] if scale else m)


def _reassembly_by_hand(
    encoder: ViTEncoder, x: Tensor, hooks: tuple[int, ...], readout: str, norm: bool
) -> dict[int, Tensor]:
    """DPT's forward (isl-org/DPT ``forward_vit``, Depth Anything V2's ``DPTHead``) on the
    encoder's weights: tokens, blocks, the hooked outputs (through the final norm when
    ``norm``), read-out, 1x1 conv, resampling (transposed convs 4x4/4 and 2x2/2, identity,
    3x3/2 conv)."""
    v = encoder.variant
    sd = dict(encoder.state_dict())
    if v.patch != 16:  # the model's patch-14 input: the image scaled by 14/16
        size = [s * v.patch // 16 for s in x.shape[-2:]]
        x = F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)
    fmap = F.conv2d(x, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=v.patch)
    b, d, gh, gw = fmap.shape
    assert (gh, gw) == (v.pos_grid, v.pos_grid)  # no position resampling on this path
    t = torch.cat([sd["cls_token"].expand(b, 1, d), fmap.flatten(2).transpose(1, 2)], 1)
    t = t + sd["pos_embed"]
    if v.registers:
        t = torch.cat([t[:, :1], sd["register_tokens"].expand(b, -1, -1), t[:, 1:]], 1)
    hooked = []
    for i in range(v.depth):
        t = _block_by_hand(t, sd, i, v.heads, v.dinov2)
        if i in hooks:
            hooked.append(_layer_norm(t, sd, "norm") if norm else t)
    out = {}
    for k, (stride, h) in enumerate(zip((4, 8, 16, 32), hooked, strict=True)):
        p = f"adapter.reassemble.{k}"
        cls, patches = h[:, 0], h[:, 1 + v.registers :]  # [B, D], [B, gh*gw, D]
        if readout == "add":
            patches = patches + cls[:, None]
        elif readout == "project":
            both = torch.cat([patches, cls[:, None].expand_as(patches)], -1)
            patches = both @ sd[f"{p}.readout_project.0.weight"].T
            patches = patches + sd[f"{p}.readout_project.0.bias"]
            patches = 0.5 * patches * (1 + torch.erf(patches / math.sqrt(2)))
        m = patches.transpose(1, 2).reshape(b, d, gh, gw)
        m = F.conv2d(m, sd[f"{p}.project.weight"], sd[f"{p}.project.bias"])
        if stride in (4, 8):
            k_up = 16 // stride
            weight, bias = sd[f"{p}.resample.weight"], sd[f"{p}.resample.bias"]
            m = F.conv_transpose2d(m, weight, bias, stride=k_up)
        elif stride == 32:
            weight, bias = sd[f"{p}.resample.weight"], sd[f"{p}.resample.bias"]
            m = F.conv2d(m, weight, bias, stride=2, padding=1)
        out[stride] = m
    return out


@pytest.mark.parametrize(
    ("name", "readout"),
    [(TIMM, None), (TIMM, "add"), (TIMM, "ignore"), (DINO, None), (DINO, "project")],
)
def test_reassembly_equals_dpt_by_hand(tiny, name: str, readout: str | None) -> None:
    """The adapter's four maps equal the computation above in float64. Both paths do the
    same O(1)-sized operations in different orders (fused attention, Linear vs matmul);
    each rounds at ~1e-16 relative and four blocks plus the reassembly stay far below
    1e-10, while any wrong hook, read-out, resampling or norm changes values at O(0.1)."""
    torch.manual_seed(0)
    encoder = _perturbed(ViTEncoder(name, adapter="dpt", readout=readout)).eval()
    v = encoder.variant
    expected_readout = readout or ("ignore" if v.dinov2 else "project")
    assert encoder.hooks == (0, 1, 2, 3)  # a quarter of 4 blocks each
    x = torch.randn(2, 3, 48, 48, dtype=torch.float64)
    with torch.no_grad():
        got = encoder(x)
        want = _reassembly_by_hand(encoder, x, encoder.hooks, expected_readout, norm=v.dinov2)
    assert set(got) == {4, 8, 16, 32}
    for s in want:
        side = -(-48 // s)  # ceil(48 / s)
        assert got[s].shape == want[s].shape == (2, encoder.channels[s], side, side)
        torch.testing.assert_close(got[s], want[s], atol=1e-10, rtol=0)


@pytest.mark.parametrize(("name", "size"), [(TIMM, (50, 70)), (DINO_NOREG, (45, 75))])
def test_maps_are_at_strides_4_to_32_of_any_input(tiny, name: str, size: tuple[int, int]) -> None:
    """Patch 16 at 50x70 and DINOv2's patch 14 at 45x75 (a multiple of neither 14 nor 16):
    the map at stride s is [B, C_s, ceil(H/s), ceil(W/s)] with the declared widths."""
    encoder = ViTEncoder(name, adapter="dpt").eval()
    declared = FAMILY.declared_pyramid(name, ViTOptions(adapter="dpt"))
    assert encoder.channels == declared == dict(zip((4, 8, 16, 32), (2, 4, 8, 16), strict=True))
    h, w = size
    with torch.no_grad():
        out = encoder(torch.randn(2, 3, h, w))
    assert {s: tuple(m.shape) for s, m in out.items()} == {
        s: (2, c, -(-h // s), -(-w // s)) for s, c in declared.items()
    }


# the authors' choices: DPT (isl-org/DPT dpt/vit.py, _make_pretrained_vitb16_384 and
# _make_pretrained_vitl16_384, readout "project" in dpt/models.py) for timm's ViTs; Depth
# Anything V2 (intermediate_layer_idx, model_configs' out_channels, use_clstoken False)
# for DINOv2; ViT-S/16 has no DPT model and takes Depth Anything V2's ViT-S choices
PUBLISHED = {
    "vit_small_patch16_224": ((2, 5, 8, 11), (48, 96, 192, 384), "project", False),
    "vit_base_patch16_224": ((2, 5, 8, 11), (96, 192, 384, 768), "project", False),
    "vit_large_patch16_224": ((5, 11, 17, 23), (256, 512, 1024, 1024), "project", False),
    "dinov2_vits14": ((2, 5, 8, 11), (48, 96, 192, 384), "ignore", True),
    "dinov2_vitb14_reg4": ((2, 5, 8, 11), (96, 192, 384, 768), "ignore", True),
    "dinov2_vitl14": ((4, 11, 17, 23), (256, 512, 1024, 1024), "ignore", True),
    "dinov2_vitl14_reg4": ((4, 11, 17, 23), (256, 512, 1024, 1024), "ignore", True),
}


def _dpt_reassembly_parameters(dim: int, widths: tuple[int, ...], readout: str) -> int:
    """Parameters of DPT's ``BackboneWrapper`` layers outside the ViT, counted from its
    code: per map a ``ProjectReadout`` Linear(2D, D) when the read-out is ``project``, the
    1x1 conv D -> C_i, then ConvTranspose2d(C_0, C_0, 4, 4), ConvTranspose2d(C_1, C_1, 2,
    2), nothing, Conv2d(C_3, C_3, 3, stride 2); every layer with bias."""
    readouts = 4 * (2 * dim * dim + dim) if readout == "project" else 0
    projects = sum(dim * c + c for c in widths)
    c0, c1, _, c3 = widths
    resample = (16 * c0 * c0 + c0) + (4 * c1 * c1 + c1) + (9 * c3 * c3 + c3)
    return readouts + projects + resample


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_hooks_widths_and_readout_per_published_size(name: str) -> None:
    hooks, widths, readout, norm = PUBLISHED[name]
    with torch.device("meta"):
        encoder = ViTEncoder(name, adapter="dpt")
    assert encoder.hooks == hooks
    assert tuple(encoder.channels.values()) == widths
    assert (encoder.readout, encoder.hook_norm) == (readout, norm)
    adapter = sum(p.numel() for p in encoder.adapter.parameters())
    assert adapter == _dpt_reassembly_parameters(encoder.variant.dim, widths, readout)


@pytest.mark.parametrize(
    ("decoder", "options", "adapter"),
    [
        ("dpt", {}, "dpt"),
        ({"depth": "dpt"}, {}, "dpt"),
        ("deeplabv3plus", {}, "simple"),
        ("dpt", {"adapter": "simple"}, "simple"),
        ("deeplabv3plus", {"adapter": "dpt"}, "dpt"),
    ],
)
def test_the_adapter_follows_the_decoders_unless_given(decoder, options, adapter) -> None:
    cfg = ModelConfig(
        architecture="branched", encoder=TIMM, decoder=decoder, encoder_options=options
    )
    assert cfg.encoder_config().adapter == adapter


@pytest.mark.parametrize(
    ("options", "words"),
    [
        ({"adapter": "blocks"}, "model.net.encoder_options.adapter: expected one of simple, dpt"),
        ({"readout": "cls"}, "model.net.encoder_options.readout: expected one of ignore"),
        ({"hooks": 3}, "model.net.encoder_options.hooks: expected a list of four integers"),
        ({"hooks": [0, 1, 3]}, "hooks must be four non-decreasing block indices 0..3"),
        ({"hooks": [0, 1, 2, 2]}, "ending at the last block 3"),
        ({"hooks": [2, 1, 0, 3]}, "non-decreasing"),
        ({"reassemble_channels": [8, 8, 8, 0]}, "reassemble_channels must be four positive"),
        # an option of the other adapter would be dropped without a word
        ({"pyramid_channels": 16}, "encoder_options.pyramid_channels: only with adapter: simple"),
        ({"adapter": "simple", "hooks": [0, 1, 2, 3]}, "encoder_options.hooks: only with adapter"),
        ({"adapter": "simple", "readout": "add"}, "encoder_options.readout: only with adapter"),
    ],
)
def test_bad_adapter_options_stop_in_one_line(tiny, options, words: str) -> None:
    with pytest.raises(UserError) as error:
        cfg = ModelConfig(
            architecture="joint", encoder=TIMM, decoder="dpt", encoder_options=options, channels=8
        )
        build_model(cfg, {"semseg": 3, "depth": 1})
    assert words in str(error.value) and "\n" not in str(error.value)


def test_dpt_only_options_are_refused_when_the_decoder_picks_the_simple_adapter() -> None:
    with pytest.raises(UserError, match="reassemble_channels: only with adapter: dpt"):
        ModelConfig(encoder=TIMM, encoder_options={"reassemble_channels": [8, 8, 8, 8]})


@pytest.mark.parametrize("name", [TIMM, DINO])
def test_a_training_step_of_joint_with_the_dpt_head(tiny, name: str) -> None:
    """joint + DPT on the tiny ViT: every trainable parameter gets a finite gradient and
    moves with one AdamW step; the final norm, which DPT never runs on timm's ViTs, is
    frozen and stays as it was (DINOv2's hooks read it, as Depth Anything's do)."""
    torch.manual_seed(0)
    cfg = ModelConfig(
        architecture="joint", encoder=name, decoder="dpt", decoder_options={"features": 8}
    )
    model = build_model(cfg, {"semseg": 3, "depth": 1}).train()
    assert model.encoder.adapter_kind == "dpt"
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen == (
        set() if vit.VARIANTS[name].dinov2 else {"encoder.norm.weight", "encoder.norm.bias"}
    )
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    out = model(torch.randn(2, 3, 37, 51))
    assert {t: tuple(o[0].shape) for t, o in out.items()} == {
        "semseg": (2, 3, 37, 51),
        "depth": (2, 1, 37, 51),
    }
    loss = F.cross_entropy(out["semseg"][0], torch.randint(0, 3, (2, 37, 51)))
    (loss + out["depth"][0].square().mean()).backward()
    for n, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and torch.isfinite(p.grad).all(), n
    optimizer.step()
    for n, p in model.named_parameters():
        # AdamW's first step moves every trainable coordinate (by ~lr, and weight decay)
        assert (n in frozen) != bool((p.detach() != before[n]).any()), n


def test_a_checkpoint_round_trip_keeps_the_reassembly(tiny, tmp_path) -> None:
    """A branched net with a DPT depth head and a DeepLabV3+ semseg decoder on the tiny
    ViT with given hooks and read-out: the checkpoint (plain dicts, as a trained run's)
    rebuilds the same adapter and loads strictly."""
    from scenemtl.engine.module import MultiTaskModule

    net = {
        "architecture": "branched",
        "encoder": TIMM,
        "encoder_options": {"hooks": [0, 2, 2, 3], "readout": "add"},
        "channels": 8,
        "skip_channels": 4,
        "decoder": {"depth": "dpt"},
        "decoder_options": {"features": 8},
    }
    torch.manual_seed(0)
    module = MultiTaskModule(net=net).eval()
    assert (module.net.encoder.adapter_kind, module.net.encoder.hooks) == ("dpt", (0, 2, 2, 3))
    path = tmp_path / "vit_dpt.ckpt"
    hparams = {**dict(module.hparams), "net": dict(vars(module.hparams["net"]))}
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": hparams}, path)
    loaded = MultiTaskModule.from_checkpoint(path)
    encoder = loaded.net.encoder
    assert (encoder.adapter_kind, encoder.hooks, encoder.readout) == ("dpt", (0, 2, 2, 3), "add")
    image = torch.randn(1, 3, 36, 52)
    with torch.no_grad():
        want, got = module.predict_step({"image": image}), loaded.predict_step({"image": image})
    # same weights, same kernels: any difference is thread-order rounding (~1e-6 of O(1))
    for task in want:
        torch.testing.assert_close(got[task].float(), want[task].float(), atol=1e-5, rtol=1e-5)
