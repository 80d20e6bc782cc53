"""Encoder families ConvNeXt, Swin, ViT and DINOv2 (models/encoders/).

The published layouts are written out here from the papers' shapes and timm's / DINOv2's
names, independently of the modules: each table's tensor count and value count is checked
against the figures of the reference implementations (``timm.create_model(name)`` and
DINOv2's ``vit_small(patch_size=14, img_size=518, init_values=1.0, block_chunks=0)``,
measured once outside the project), then written to a file in the published format and
loaded strictly.
"""

from __future__ import annotations

import copy
import functools
import math

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from scenemtl.errors import UserError
from scenemtl.models.encoders.convnext import ConvNeXtEncoder
from scenemtl.models.encoders.mobilenetv3 import MobileNetV3Encoder, make_divisible
from scenemtl.models.encoders.parts import DropPath, drop_path_rates
from scenemtl.models.encoders.swin import (
    PatchMerging,
    SwinEncoder,
    relative_position_index,
    shifted_window_mask,
)
from scenemtl.models.encoders.vit import VARIANTS as VIT_VARIANTS
from scenemtl.models.encoders.vit import ViTEncoder, published_file_name

Shapes = dict[str, tuple[int, ...]]


def _linear(prefix: str, cout: int, cin: int, bias: bool = True) -> Shapes:
    out = {f"{prefix}.weight": (cout, cin)}
    if bias:
        out[f"{prefix}.bias"] = (cout,)
    return out


def _norm(prefix: str, c: int) -> Shapes:
    return {f"{prefix}.weight": (c,), f"{prefix}.bias": (c,)}


def convnext_tiny_layout() -> Shapes:
    """timm's convnext_tiny file: depths 3, 3, 9, 3; dims 96, 192, 384, 768."""
    dims, depths = (96, 192, 384, 768), (3, 3, 9, 3)
    s: Shapes = {"stem.0.weight": (96, 3, 4, 4), "stem.0.bias": (96,), **_norm("stem.1", 96)}
    for i, (d, n) in enumerate(zip(dims, depths, strict=True)):
        if i > 0:
            s |= _norm(f"stages.{i}.downsample.0", dims[i - 1])
            s[f"stages.{i}.downsample.1.weight"] = (d, dims[i - 1], 2, 2)
            s[f"stages.{i}.downsample.1.bias"] = (d,)
        for j in range(n):
            p = f"stages.{i}.blocks.{j}"
            s[f"{p}.conv_dw.weight"] = (d, 1, 7, 7)
            s[f"{p}.conv_dw.bias"] = (d,)
            s |= _norm(f"{p}.norm", d)
            s |= _linear(f"{p}.mlp.fc1", 4 * d, d) | _linear(f"{p}.mlp.fc2", d, 4 * d)
            s[f"{p}.gamma"] = (d,)
    return s | _norm("head.norm", 768) | _linear("head.fc", 1000, 768)


def swin_tiny_layout() -> Shapes:
    """timm's swin_tiny_patch4_window7_224 file: C = 96, depths 2, 2, 6, 2, heads 3, 6,
    12, 24, window 7 (bias table (2*7-1)^2 = 169 rows), merging at the start of stages 1-3."""
    dims, depths, heads = (96, 192, 384, 768), (2, 2, 6, 2), (3, 6, 12, 24)
    s: Shapes = {"patch_embed.proj.weight": (96, 3, 4, 4), "patch_embed.proj.bias": (96,)}
    s |= _norm("patch_embed.norm", 96)
    for i, (d, n, h) in enumerate(zip(dims, depths, heads, strict=True)):
        if i > 0:
            s |= _norm(f"layers.{i}.downsample.norm", 2 * d)
            s |= _linear(f"layers.{i}.downsample.reduction", d, 2 * d, bias=False)
        for j in range(n):
            p = f"layers.{i}.blocks.{j}"
            s |= _norm(f"{p}.norm1", d) | _norm(f"{p}.norm2", d)
            s[f"{p}.attn.relative_position_bias_table"] = (169, h)
            s |= _linear(f"{p}.attn.qkv", 3 * d, d) | _linear(f"{p}.attn.proj", d, d)
            s |= _linear(f"{p}.mlp.fc1", 4 * d, d) | _linear(f"{p}.mlp.fc2", d, 4 * d)
    return s | _norm("norm", 768) | _linear("head.fc", 1000, 768)


def vit_small_layout(dinov2: bool = False, registers: int = 0) -> Shapes:
    """ViT-S: D = 384, 12 blocks. timm's /16 file at 224 px (14x14 positions, classifier
    ``head``) or DINOv2's /14 file at 518 px (37x37 positions, layer scales, mask token)."""
    d, patch, grid = 384, (14 if dinov2 else 16), (37 if dinov2 else 14)
    s: Shapes = {"cls_token": (1, 1, d), "pos_embed": (1, 1 + grid * grid, d)}
    s["patch_embed.proj.weight"] = (d, 3, patch, patch)
    s["patch_embed.proj.bias"] = (d,)
    for j in range(12):
        p = f"blocks.{j}"
        s |= _norm(f"{p}.norm1", d) | _norm(f"{p}.norm2", d)
        s |= _linear(f"{p}.attn.qkv", 3 * d, d) | _linear(f"{p}.attn.proj", d, d)
        s |= _linear(f"{p}.mlp.fc1", 4 * d, d) | _linear(f"{p}.mlp.fc2", d, 4 * d)
        if dinov2:
            s[f"{p}.ls1.gamma"] = (d,)
            s[f"{p}.ls2.gamma"] = (d,)
    s |= _norm("norm", d)
    if dinov2:
        s["mask_token"] = (1, d)
        if registers:
            s["register_tokens"] = (1, registers, d)
    else:
        s |= _linear("head", 1000, d)
    return s


def _bn(prefix: str, c: int) -> Shapes:
    stats = {f"{prefix}.running_mean": (c,), f"{prefix}.running_var": (c,)}
    return _norm(prefix, c) | stats | {f"{prefix}.num_batches_tracked": ()}


def _conv(prefix: str, cout: int, cin_per_group: int, k: int) -> Shapes:
    return {f"{prefix}.weight": (cout, cin_per_group, k, k)}


# MobileNetV3-Large blocks.1-5 (Howard et al. 2019, Table 1): (in, expanded, out, kernel,
# SE reduced channels or 0); expanded = in x ratio rounded to 8, SE = expanded / 4 rounded
MOBILENET_BLOCKS = [
    [(16, 64, 24, 3, 0), (24, 72, 24, 3, 0)],
    [(24, 72, 40, 5, 24), (40, 120, 40, 5, 32), (40, 120, 40, 5, 32)],
    [(40, 240, 80, 3, 0), (80, 200, 80, 3, 0), (80, 184, 80, 3, 0), (80, 184, 80, 3, 0)],
    [(80, 480, 112, 3, 120), (112, 672, 112, 3, 168)],
    [(112, 672, 160, 5, 168), (160, 960, 160, 5, 240), (160, 960, 160, 5, 240)],
]


def mobilenetv3_large_layout() -> Shapes:
    """timm's mobilenetv3_large_100 file (BatchNorm statistics included)."""
    s: Shapes = _conv("conv_stem", 16, 3, 3) | _bn("bn1", 16)
    s |= _conv("blocks.0.0.conv_dw", 16, 1, 3) | _bn("blocks.0.0.bn1", 16)
    s |= _conv("blocks.0.0.conv_pw", 16, 16, 1) | _bn("blocks.0.0.bn2", 16)
    for i, stage in enumerate(MOBILENET_BLOCKS, start=1):
        for j, (cin, mid, out, k, rd) in enumerate(stage):
            p = f"blocks.{i}.{j}"
            s |= _conv(f"{p}.conv_pw", mid, cin, 1) | _bn(f"{p}.bn1", mid)
            s |= _conv(f"{p}.conv_dw", mid, 1, k) | _bn(f"{p}.bn2", mid)
            if rd:
                s |= _conv(f"{p}.se.conv_reduce", rd, mid, 1) | {f"{p}.se.conv_reduce.bias": (rd,)}
                s |= _conv(f"{p}.se.conv_expand", mid, rd, 1)
                s[f"{p}.se.conv_expand.bias"] = (mid,)
            s |= _conv(f"{p}.conv_pwl", out, mid, 1) | _bn(f"{p}.bn3", out)
    s |= _conv("blocks.6.0.conv", 960, 160, 1) | _bn("blocks.6.0.bn1", 960)
    s |= _conv("conv_head", 1280, 960, 1) | {"conv_head.bias": (1280,)}
    return s | _linear("classifier", 1000, 1280)


# (tensors, values) of the reference implementations' state dicts
# (values: floating-point tensors only, i.e. without BatchNorm's num_batches_tracked)
REFERENCE_COUNTS = {
    "convnext_tiny": (182, 28_589_128),
    "swin_tiny_patch4_window7_224": (173, 28_288_354),
    "vit_small_patch16_224": (152, 22_050_664),
    "dinov2_vits14": (175, 22_056_576),
    "dinov2_vits14_reg4": (176, 22_058_112),
    "mobilenetv3_large_100": (312, 5_507_432),
}

LAYOUTS = {
    "convnext_tiny": (ConvNeXtEncoder, convnext_tiny_layout),
    "swin_tiny_patch4_window7_224": (SwinEncoder, swin_tiny_layout),
    "vit_small_patch16_224": (ViTEncoder, vit_small_layout),
    "dinov2_vits14": (ViTEncoder, lambda: vit_small_layout(dinov2=True)),
    "dinov2_vits14_reg4": (ViTEncoder, lambda: vit_small_layout(dinov2=True, registers=4)),
    "mobilenetv3_large_100": (MobileNetV3Encoder, mobilenetv3_large_layout),
}


@functools.cache
def _built(name: str) -> nn.Module:
    return LAYOUTS[name][0](name).eval()


def fresh(name: str) -> nn.Module:
    """A new encoder ``name`` in eval mode (a copy of one built once: building the 22-28M
    parameter trunks dominates these tests' time)."""
    return copy.deepcopy(_built(name))


def random_state(layout: Shapes, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        k: torch.tensor(3) if k.endswith("num_batches_tracked") else torch.randn(s, generator=g)
        for k, s in layout.items()
    }


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_layout_tables_match_the_reference_counts(name: str) -> None:
    layout = LAYOUTS[name][1]()
    values = sum(math.prod(s) for k, s in layout.items() if not k.endswith("batches_tracked"))
    assert (len(layout), values) == REFERENCE_COUNTS[name]


@pytest.mark.slow  # writes and reads a 12-110 MB file per family
@pytest.mark.parametrize("name", list(LAYOUTS))
def test_published_layout_loads_strictly(name: str, tmp_path) -> None:
    state = random_state(LAYOUTS[name][1]())
    if name.startswith("dinov2"):
        path = tmp_path / published_file_name(name)
        torch.save(state, path)
        loaded = torch.load(path, weights_only=True)
    else:
        path = tmp_path / "model.safetensors"
        save_file(state, path)
        loaded = load_file(path)
    enc = fresh(name)
    adapter_before = {k: v.clone() for k, v in enc.state_dict().items() if k.startswith("adapter")}
    enc.load_published_state_dict(loaded, str(path))
    own = enc.state_dict()
    for key, value in state.items():
        if key.startswith(("head.", "conv_head.", "classifier.")):
            assert key not in own  # the classifier is dropped
        else:
            assert torch.equal(own[key], value), key  # copied, not computed
    for key, value in adapter_before.items():
        assert torch.equal(own[key], value), key
    assert not {k for k in own if not k.startswith("adapter.")} - set(state)


def test_dinov2_file_names() -> None:
    assert published_file_name("dinov2_vits14") == "dinov2_vits14_pretrain.pth"
    assert published_file_name("dinov2_vitl14_reg4") == "dinov2_vitl14_reg4_pretrain.pth"
    assert VIT_VARIANTS["dinov2_vitb14_reg4"].source == (
        "https://dl.fbaipublicfiles.com/dinov2/dinov2_vitb14/dinov2_vitb14_reg4_pretrain.pth"
    )
    assert published_file_name("vit_base_patch16_224") == "model.safetensors"


@pytest.mark.parametrize(
    ("name", "change", "message"),
    [
        ("convnext_tiny", "drop", "1 missing keys (stages.3.blocks.2.gamma)"),
        ("swin_tiny_patch4_window7_224", "shape", "has shape"),
        ("dinov2_vits14", "extra", "1 unexpected keys (blocks.12.norm1.weight)"),
    ],
)
def test_mismatched_file_is_one_user_error(name: str, change: str, message: str) -> None:
    state = random_state(LAYOUTS[name][1]())
    enc = fresh(name)
    if change == "drop":
        del state["stages.3.blocks.2.gamma"]
    elif change == "shape":
        state["layers.1.blocks.0.attn.relative_position_bias_table"] = torch.zeros(49, 6)
    else:
        state["blocks.12.norm1.weight"] = torch.zeros(384)
    with pytest.raises(UserError, match=r"weights\.pth does not fit") as err:
        enc.load_published_state_dict(state, "weights.pth")
    assert message in str(err.value)
    with pytest.raises(UserError, match="does not hold a state dict"):
        enc.load_published_state_dict([1, 2], "weights.pth")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "name",
    [
        "convnext_tiny",
        "swin_tiny_patch4_window7_224",
        "vit_small_patch16_224",
        "dinov2_vits14",
        "mobilenetv3_large_100",
    ],
)
@pytest.mark.parametrize("size", [(64, 96), (50, 70)])  # 50, 70: not multiples of 4, 14, 32
def test_forward_gives_the_declared_pyramid(name: str, size: tuple[int, int]) -> None:
    enc = _built(name)
    with torch.no_grad():
        pyramid = enc(torch.randn(2, 3, *size))
    assert sorted(pyramid) == sorted(enc.channels)
    assert {4, 8, 16, 32} <= set(pyramid) <= {2, 4, 8, 16, 32}
    assert enc.output_stride == 32
    for s, f in pyramid.items():
        assert f.shape == (2, enc.channels[s], math.ceil(size[0] / s), math.ceil(size[1] / s))
        assert torch.isfinite(f).all()


def test_dinov2_with_registers_takes_any_size() -> None:
    enc = _built("dinov2_vits14_reg4")
    with torch.no_grad():
        tokens = enc.tokens(torch.randn(1, 3, 45, 100))  # 45 = 3*14 + 3
    assert tokens.shape == (1, 384, 3, 7)  # ceil(45/16), ceil(100/16)


@pytest.mark.parametrize(
    "name", ["convnext_tiny", "swin_tiny_patch4_window7_224", "mobilenetv3_large_100"]
)
def test_stem_then_stages_is_forward(name: str) -> None:
    enc = _built(name)
    x = torch.randn(1, 3, 60, 44)
    with torch.no_grad():
        pyramid = enc(x)
        y = enc.stem(x)
        for scale, stage, c in zip(
            enc.stage_scales, enc.stage_blocks, enc.stage_out_channels, strict=True
        ):
            y = stage(y)
            assert y.shape[1] == c == enc.channels[scale]
            # the same operations in the same order: equal up to a few float32 roundings
            torch.testing.assert_close(y, pyramid[scale], rtol=0, atol=1e-5)


def test_relative_position_index_by_hand() -> None:
    # window 2, tokens (0,0), (0,1), (1,0), (1,1); row = (dy + 1) * 3 + (dx + 1)
    expected = torch.tensor([[4, 3, 1, 0], [5, 4, 2, 1], [7, 6, 4, 3], [8, 7, 5, 4]])
    assert torch.equal(relative_position_index(2), expected)
    assert relative_position_index(7).max() == 168  # (2*7-1)^2 - 1: every table row


@pytest.mark.parametrize(("h", "w", "shift"), [(4, 4, (1, 1)), (14, 21, (3, 3)), (7, 14, (0, 3))])
def test_shifted_window_mask_allows_only_neighbours_of_the_original_map(h, w, shift) -> None:
    """After rolling by -shift, two tokens of a window may attend to each other iff they
    were within one window of each other before the roll along both axes (no wrap jump)."""
    win = 2 if h == 4 else 7
    mask = shifted_window_mask(h, w, win, shift)
    rows, cols = h // win, w // win
    assert mask.shape == (rows * cols, win * win, win * win)
    for wi in range(rows * cols):
        r0, c0 = (wi // cols) * win, (wi % cols) * win
        for i in range(win * win):
            for j in range(win * win):
                # rolled position -> original position
                ri, ci = (r0 + i // win + shift[0]) % h, (c0 + i % win + shift[1]) % w
                rj, cj = (r0 + j // win + shift[0]) % h, (c0 + j % win + shift[1]) % w
                near = abs(ri - rj) < win and abs(ci - cj) < win
                assert mask[wi, i, j].item() == (0.0 if near else -100.0), (wi, i, j)


def test_patch_merging_concatenation_order() -> None:
    merge = PatchMerging(2)
    merge.norm, merge.reduction = nn.Identity(), nn.Identity()  # see the concatenation
    r, c, ch = torch.meshgrid(torch.arange(4), torch.arange(6), torch.arange(2), indexing="ij")
    x = (100 * r + 10 * c + ch).float()[None]
    out = merge(x)
    assert out.shape == (1, 2, 3, 8)
    for i in range(2):
        for j in range(3):
            # Swin's x0, x1, x2, x3 = (0,0), (1,0), (0,1), (1,1) (row, column offsets)
            order = [(0, 0), (1, 0), (0, 1), (1, 1)]
            want = [100 * (2 * i + a) + 10 * (2 * j + b) + k for a, b in order for k in (0, 1)]
            assert out[0, i, j].tolist() == want


@pytest.mark.parametrize("name", ["vit_small_patch16_224", "dinov2_vits14", "dinov2_vits14_reg4"])
def test_position_embedding_keeps_rows_and_columns_apart(name: str) -> None:
    """A position embedding that varies with the row only must still vary with the row
    only after resampling to a non-square grid (catches swapped height and width)."""
    enc = fresh(name)
    side = enc.variant.pos_grid
    rows = torch.linspace(-1, 1, side)[:, None, None].expand(side, side, 384)
    with torch.no_grad():
        enc.pos_embed[0, 1:] = rows.reshape(side * side, 384)
        enc.pos_embed[0, 0] = 7.0
    pos = enc.position_embedding((5, 9))
    assert pos.shape == (1, 1 + 45, 384)
    assert torch.all(pos[0, 0] == 7.0)
    grid = pos[0, 1:].reshape(5, 9, 384)
    # the column weights of the bicubic resampling sum to 1 up to float32 rounding: a
    # constant row of values in [-1, 1] comes out within a few ulps (1e-6) of itself
    torch.testing.assert_close(grid, grid[:, :1].expand(5, 9, 384), rtol=0, atol=1e-6)
    # first row near the top of the original (-1), last near the bottom (+1)
    assert grid[0, 0, 0] < -0.7 and grid[-1, 0, 0] > 0.7
    assert enc.position_embedding((side, side)) is enc.pos_embed


def test_drop_path_rates_and_default() -> None:
    rates = drop_path_rates(0.3, [2, 2])
    assert [len(r) for r in rates] == [2, 2]
    assert [r for stage in rates for r in stage] == pytest.approx([0.0, 0.1, 0.2, 0.3])
    enc = _built("convnext_tiny")
    assert all(m.p == 0.0 for m in enc.modules() if isinstance(m, DropPath))
    enc = SwinEncoder("swin_tiny_patch4_window7_224", drop_path_rate=0.2)
    rates = [m.p for m in enc.modules() if isinstance(m, DropPath)]
    assert rates[0] == 0.0 and rates[-1] == pytest.approx(0.2) and len(rates) == 12
    with pytest.raises(UserError, match="drop_path_rate"):
        ViTEncoder("vit_small_patch16_224", drop_path_rate=1.5)


def test_drop_path_keeps_the_expectation() -> None:
    torch.manual_seed(0)
    dp = DropPath(0.25).train()
    out = dp(torch.ones(4000, 3))
    kept = out[:, 0] != 0
    # each sample whole: all channels kept or none; kept ones scaled by 1/(1-p)
    assert torch.equal(kept, out[:, 2] != 0)
    assert torch.allclose(out[kept], torch.full_like(out[kept], 1 / 0.75))
    # fraction kept ~ Binomial(4000, 0.75)/4000: std 0.0068, 5 sigma = 0.034
    assert abs(kept.float().mean().item() - 0.75) < 0.034
    assert torch.equal(dp.eval()(torch.ones(3, 2)), torch.ones(3, 2))


def test_make_divisible_rounds_channels_as_mobilenet() -> None:
    # nearest multiple of 8, one step up when rounding down loses more than 10%
    assert [make_divisible(v) for v in (18, 30, 184, 200, 3, 22.9)] == [24, 32, 184, 200, 8, 24]


@pytest.mark.parametrize("cls", [ConvNeXtEncoder, SwinEncoder, ViTEncoder, MobileNetV3Encoder])
def test_unknown_variant_is_one_user_error(cls) -> None:
    with pytest.raises(UserError, match="unknown encoder 'resnet9'"):
        cls("resnet9")


def brute_force_window_attention(attn, x: torch.Tensor, shifted: bool) -> torch.Tensor:
    """Swin's (shifted) window attention written from its definition on the zero-padded map,
    without rolling or window partitions: token p attends to token q iff they fall in the
    same window of the map rolled by -shift and lie within one window of each other on the
    padded map (no wrap-around jump); logit = q.k / sqrt(d) + table[(dy+6)*13 + (dx+6)]."""
    win = 7
    b, h, w, c = x.shape
    hp, wp = math.ceil(h / win) * win, math.ceil(w / win) * win
    padded = x.new_zeros(b, hp, wp, c)
    padded[:, :h, :w] = x
    sh = win // 2 if shifted and h > win else 0
    sw = win // 2 if shifted and w > win else 0
    heads, d = attn.heads, c // attn.heads
    q, k, v = attn.qkv(padded.reshape(b, hp * wp, c)).split(c, dim=-1)
    pos = [(i // wp, i % wp) for i in range(hp * wp)]
    out = torch.zeros(b, hp * wp, c, dtype=x.dtype)
    for i, (ri, ci) in enumerate(pos):
        wi = (((ri - sh) % hp) // win, ((ci - sw) % wp) // win)
        keys = [
            j
            for j, (rj, cj) in enumerate(pos)
            if (((rj - sh) % hp) // win, ((cj - sw) % wp) // win) == wi
            and abs(ri - rj) < win
            and abs(ci - cj) < win
        ]
        rows = torch.tensor([(ri - pos[j][0] + 6) * 13 + (ci - pos[j][1] + 6) for j in keys])
        for hd in range(heads):
            sl = slice(hd * d, (hd + 1) * d)
            logits = torch.einsum("bd,bkd->bk", q[:, i, sl], k[:, keys, sl]) / math.sqrt(d)
            weights = torch.softmax(logits + attn.relative_position_bias_table[rows, hd], dim=-1)
            out[:, i, sl] = torch.einsum("bk,bkd->bd", weights, v[:, keys, sl])
    return attn.proj(out).reshape(b, hp, wp, c)[:, :h, :w]


@pytest.mark.parametrize(("h", "w", "shifted"), [(14, 14, True), (10, 16, True), (9, 12, False)])
def test_swin_window_attention_matches_its_definition_in_float64(h, w, shifted) -> None:
    from scenemtl.models.encoders.swin import SwinBlock

    torch.manual_seed(0)
    block = SwinBlock(8, 2, shifted=shifted, drop_path=0.0).double()
    with torch.no_grad():
        block.attn.relative_position_bias_table.normal_()  # make the bias matter
        x = torch.randn(2, h, w, 8, dtype=torch.float64)
        got = block._window_attention(x)
        want = brute_force_window_attention(block.attn, x, shifted)
    # float64, a few dozen terms per sum: the two summation orders agree to ~1e-15; the
    # -100 mask leaves exp(-100) ~ 4e-44 of weight on excluded tokens, far below the bound
    torch.testing.assert_close(got, want, rtol=0, atol=1e-10)


@pytest.mark.slow  # a backward pass through each 3-28M parameter trunk
@pytest.mark.parametrize("name", list(LAYOUTS))
def test_every_parameter_gets_a_gradient(name: str) -> None:
    """DDP (find_unused_parameters=False) stops on a parameter without gradient: DINOv2's
    mask token is a buffer for that reason, Swin's final norm feeds the stride-32 map."""
    enc = fresh(name).train()
    pyramid = enc(torch.randn(1, 3, 40, 56))
    sum(f.float().mean() for f in pyramid.values()).backward()
    missing = [n for n, p in enc.named_parameters() if p.grad is None]
    assert not missing


@pytest.mark.parametrize("grid", [(2, 3), (16, 32), (40, 80)])
def test_bicubic_matrix_is_dinov2s_scale_factor_resampling(grid) -> None:
    """The exported form of DINOv2's first-release position resampling. Bound: both are
    float32 with the same source positions; the kernel weights are computed in another
    order (~1e-7 relative) and each output sums 16 taps of |x| <= 5: < 2e-5."""
    from scenemtl.models.encoders.vit import bicubic_matrix

    g = torch.Generator().manual_seed(0)
    pos = torch.randn(1, 4, 37, 37, generator=g).clamp(-5, 5)
    scale = tuple((n + 0.1) / 37 for n in grid)
    want = torch.nn.functional.interpolate(pos, scale_factor=scale, mode="bicubic")
    mh, mw = (bicubic_matrix(n, 37, s) for n, s in zip(grid, scale, strict=True))
    got = torch.einsum("ij,bdjk,lk->bdil", mh, pos, mw)
    torch.testing.assert_close(got, want, rtol=0, atol=2e-5)


@pytest.mark.parametrize("size", [(5, 7), (6, 8), (1, 3)])
def test_exportable_ceil_pooling_and_ceil_div(size) -> None:
    """max_pool_2x2_ceil is ceil-mode max pooling (a max selects one of the same inputs:
    no rounding, so the values are identical), ceil_div is ceil for a >= 0."""
    from scenemtl.models.encoders.parts import ceil_div, max_pool_2x2_ceil

    x = torch.randn(2, 3, *size, dtype=torch.float64) - 10  # all negative: zero padding would show
    want = torch.nn.functional.max_pool2d(x, 2, 2, ceil_mode=True)
    torch.testing.assert_close(max_pool_2x2_ceil(x), want, rtol=0, atol=0)
    assert [ceil_div(a, 4) for a in range(10)] == [math.ceil(a / 4) for a in range(10)]
