"""Plain ViTs (timm's ViT-S/B/L/16) and DINOv2 (ViT-S/B/L/14, with and without registers)
as feature-pyramid encoders, through a multi-scale adapter: the ViTDet simple feature
pyramid, or DPT's reassembly of four blocks.

Trunk names and computation:

- ViT: timm's ``VisionTransformer`` for ``vit_{small,base,large}_patch16_224`` (``cls_token``,
  ``pos_embed`` [1, 1 + 14*14, D], ``patch_embed.proj``, ``blocks.N.norm1``,
  ``blocks.N.attn.qkv``, ``blocks.N.attn.proj``, ``blocks.N.norm2``, ``blocks.N.mlp.fc1``,
  ``blocks.N.mlp.fc2``, ``norm``; pre-norm blocks, qkv with bias, LayerNorm eps 1e-6, no
  layer scale). Files: timm's on the Hugging Face Hub (``model.safetensors``); their
  classifier ``head.*`` is dropped.
- DINOv2: the official release files ``dinov2_vit{s,b,l}14[_reg4]_pretrain.pth`` (the same
  block names plus ``ls1.gamma``/``ls2.gamma`` layer scales, ``mask_token`` [1, D],
  ``register_tokens`` [1, 4, D] for the ``_reg4`` files, ``pos_embed`` [1, 1 + 37*37, D]
  learned at 518 px). Registers are inserted after the class token once the position
  embedding is added, as DINOv2 does.

Position embeddings are resampled to the token grid of each input (bicubic): for timm's
ViTs as timm's ``resample_abs_pos_embed`` (output size, antialias), for DINOv2 as DINOv2's
``interpolate_pos_encoding`` (scale factor ``(grid + 0.1) / 37`` without antialias for the
first release, output size with antialias for the register release).

Input sizes: the image is zero-padded at the bottom/right to a multiple of 16, so the token
grid is ``ceil(H/16) x ceil(W/16)``. A patch-14 model sees that padded image *resized* by
14/16 (bilinear, antialiased), so its 14-pixel patches cover 16 input pixels each and its
token grid is the same stride-16 grid (any H and W work, none needs to be a multiple of 14).
This costs DINOv2 12.5% of linear resolution against feeding it the native size, and keeps
every map of the pyramid aligned with the input (pad + crop, no fractional strides).

Multi-scale adapter (ViTDet, Li et al. 2022, "simple feature pyramid"): from the last
block's tokens after the final ``norm`` as a [B, D, H/16, W/16] map, stride 4 = two 2x2
transposed convs (D -> D/2 -> D/4, LayerNorm2d + GELU between), stride 8 = one (D -> D/2),
stride 16 = the map, stride 32 = 2x2 max pooling (ceil mode); each then 1x1 conv + LN2d and
3x3 conv + LN2d to ``pyramid_channels`` (256 in ViTDet). Its weights (``adapter.*``) are not
in any published file and start random. Maps are cropped to ``ceil(H/s) x ceil(W/s)``.

DPT's reassembly (Ranftl et al. 2021, authors' code isl-org/DPT ``dpt/vit.py``; the same
operations in Depth Anything V2's ``DPTHead``) is the other adapter (``adapter: dpt``, the
default when a task's decoder is DPT): the outputs of four blocks (:func:`dpt_hooks`), each
with its read-out of the class token, 1x1 conv to its width (:func:`dpt_widths`) and
resampling to strides 4, 8, 16, 32
(:class:`~scenemtl.models.encoders.reassemble.Reassemble`). Published conventions: timm's
ViTs as DPT (raw block outputs, read-out ``project``); DINOv2 as Depth Anything V2 (block
outputs through the final ``norm``, read-out ``ignore``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from scenemtl.errors import UserError
from scenemtl.models.encoders.base import Family
from scenemtl.models.encoders.parts import (
    DropPath,
    LayerNorm2d,
    LayerScale,
    MaxPool2x2Ceil,
    Mlp,
    ceil_div,
    drop_path_rates,
    is_symbolic,
    pad_to_multiple,
)
from scenemtl.models.encoders.reassemble import READOUTS, TARGET_STRIDES, Reassemble
from scenemtl.models.encoders.timm_family import PublishedLayout
from scenemtl.models.encoders.weights import PublishedFile, TorchHubFile, hub_safetensors
from scenemtl.models.options import OptionError, check_choice

DINOV2_URL = "https://dl.fbaipublicfiles.com/dinov2"
TOKEN_STRIDE = 16
"""Input pixels per token for every variant (patch-14 models see the image scaled by 14/16)."""


@dataclass(frozen=True)
class ViTVariant:
    """One published ViT: shape, position-embedding grid, DINOv2 extras and the file."""

    patch: int
    dim: int
    depth: int
    heads: int
    pos_grid: int
    """Side of the learned position-embedding grid (224/16 = 14, DINOv2's 518/14 = 37)."""
    source: str
    """timm: Hugging Face Hub repo id (file ``model.safetensors``); DINOv2: the file's URL."""
    dinov2: bool = False
    """DINOv2 layout: layer scales, ``mask_token``, DINOv2's position interpolation."""
    registers: int = 0
    interp_offset: float = 0.0
    """DINOv2's interpolation offset (0.1 for the first release, 0 with registers)."""
    interp_antialias: bool = True
    dpt_hooks: tuple[int, ...] | None = None
    """Blocks DPT's reassembly reads when they differ from :func:`dpt_hooks`' rule (Depth
    Anything V2's ViT-L/14: 4, 11, 17, 23)."""


def _dinov2(
    arch: str, dim: int, depth: int, heads: int, reg: bool, hooks: tuple[int, ...] | None = None
) -> ViTVariant:
    stem = f"dinov2_{arch}14"
    name = f"{stem}_reg4" if reg else stem
    return ViTVariant(
        14,
        dim,
        depth,
        heads,
        37,
        f"{DINOV2_URL}/{stem}/{name}_pretrain.pth",
        dinov2=True,
        registers=4 if reg else 0,
        interp_offset=0.0 if reg else 0.1,
        interp_antialias=reg,
        dpt_hooks=hooks,
    )


DA_VITL_HOOKS = (4, 11, 17, 23)
"""Depth Anything V2's blocks for ViT-L (``intermediate_layer_idx['vitl']``; DPT-Large's
are 5, 11, 17, 23, the rule of :func:`dpt_hooks`)."""

VARIANTS: dict[str, ViTVariant] = {
    "vit_small_patch16_224": ViTVariant(
        16, 384, 12, 6, 14, "timm/vit_small_patch16_224.augreg_in21k_ft_in1k"
    ),
    "vit_base_patch16_224": ViTVariant(
        16, 768, 12, 12, 14, "timm/vit_base_patch16_224.augreg2_in21k_ft_in1k"
    ),
    "vit_large_patch16_224": ViTVariant(
        16, 1024, 24, 16, 14, "timm/vit_large_patch16_224.augreg_in21k_ft_in1k"
    ),
    "dinov2_vits14": _dinov2("vits", 384, 12, 6, reg=False),
    "dinov2_vitb14": _dinov2("vitb", 768, 12, 12, reg=False),
    "dinov2_vitl14": _dinov2("vitl", 1024, 24, 16, reg=False, hooks=DA_VITL_HOOKS),
    "dinov2_vits14_reg4": _dinov2("vits", 384, 12, 6, reg=True),
    "dinov2_vitb14_reg4": _dinov2("vitb", 768, 12, 12, reg=True),
    "dinov2_vitl14_reg4": _dinov2("vitl", 1024, 24, 16, reg=True, hooks=DA_VITL_HOOKS),
}
"""Encoder name -> published variant. timm's default tag per model; DINOv2's LVD-142M."""

DPT_WIDTHS: dict[int, tuple[int, int, int, int]] = {
    384: (48, 96, 192, 384),
    768: (96, 192, 384, 768),
    1024: (256, 512, 1024, 1024),
}
"""Embedding width -> the widths of DPT's four reassembled maps: DPT-Base and DPT-Large
(``_make_pretrained_vit{b,l}16_384`` features), Depth Anything V2's ViT-S (``model_configs``)."""
ADAPTERS = ("simple", "dpt")
"""Multi-scale adapters: ViTDet's simple feature pyramid, DPT's reassembly."""


def dpt_hooks(variant: ViTVariant) -> tuple[int, int, int, int]:
    """The four blocks (0-based) DPT's reassembly reads: the variant's own list, else the
    last block of each quarter of the depth (12 blocks: 2, 5, 8, 11 as DPT-Base and Depth
    Anything V2's ViT-S/B; 24: 5, 11, 17, 23 as DPT-Large), at least block 0."""
    if variant.dpt_hooks is not None:
        return tuple(variant.dpt_hooks)  # type: ignore[return-value]
    d = variant.depth
    return tuple(max(0, (k + 1) * d // 4 - 1) for k in range(4))  # type: ignore[return-value]


def dpt_widths(dim: int) -> tuple[int, int, int, int]:
    """Widths of the four reassembled maps for embedding width ``dim``: :data:`DPT_WIDTHS`,
    else DPT-Base's ratios (dim/8, dim/4, dim/2, dim), at least 1."""
    if dim in DPT_WIDTHS:
        return DPT_WIDTHS[dim]
    return tuple(max(1, dim // k) for k in (8, 4, 2, 1))  # type: ignore[return-value]


HUB_FILE = "model.safetensors"
ADAPTER_PREFIX = "adapter."
LAYER_SCALE_INIT = 1e-5
"""DINOv2's training value of the layer scales (its released files hold the learned ones)."""


def published_file_name(name: str) -> str:
    """File name of the published weights: ``model.safetensors`` in the Hub repo for timm's,
    ``dinov2_vits14_pretrain.pth`` ... for DINOv2's."""
    source = VARIANTS[name].source
    return source.rsplit("/", 1)[-1] if source.startswith("https://") else HUB_FILE


class Attention(nn.Module):
    """Multi-head self-attention with one ``qkv`` projection (bias) and ``proj``.
    [B, N, D] -> [B, N, D]; softmax(q k^T / sqrt(D/heads)) v per head."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        b, n, d = x.shape
        # [B, N, 3*D] -> 3 x [B, heads, N, D/heads], q k v in this order as timm's and DINOv2's
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v)
        return self.proj(y.transpose(1, 2).reshape(b, n, d))


class Block(nn.Module):
    """Pre-norm transformer block: x + ls1(attn(norm1 x)), then x + ls2(mlp(norm2 x)),
    each branch with drop path. ``layer_scale`` False: no ``ls1``/``ls2`` (timm's ViTs)."""

    def __init__(self, dim: int, heads: int, layer_scale: bool, drop_path: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.ls1: nn.Module = LayerScale(dim, LAYER_SCALE_INIT) if layer_scale else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, 4 * dim)
        self.ls2: nn.Module = LayerScale(dim, LAYER_SCALE_INIT) if layer_scale else nn.Identity()
        self.drop_path = DropPath(drop_path)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.drop_path(self.ls1(self.attn(self.norm1(x))))
        return x + self.drop_path(self.ls2(self.mlp(self.norm2(x))))


class PatchEmbed(nn.Module):
    """``proj``: conv patch x patch, stride patch. [B, 3, H, W] -> [B, D, H/p, W/p]."""

    def __init__(self, patch: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, dim, patch, stride=patch)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x)


def _conv_ln(cin: int, cout: int, k: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, k, padding=k // 2, bias=False), LayerNorm2d(cout)]


class SimpleFeaturePyramid(nn.Module):
    """ViTDet's simple feature pyramid: one [B, D, h, w] map -> ``{4: [B, C, 4h, 4w],
    8: [B, C, 2h, 2w], 16: [B, C, h, w], 32: [B, C, ceil(h/2), ceil(w/2)]}`` for a
    stride-16 input map (C = ``channels``)."""

    def __init__(self, dim: int, channels: int) -> None:
        super().__init__()
        half, quarter = dim // 2, dim // 4
        resample: dict[int, list[nn.Module]] = {
            4: [
                nn.ConvTranspose2d(dim, half, 2, stride=2),
                LayerNorm2d(half),
                nn.GELU(),
                nn.ConvTranspose2d(half, quarter, 2, stride=2),
            ],
            8: [nn.ConvTranspose2d(dim, half, 2, stride=2)],
            16: [],
            32: [MaxPool2x2Ceil()],
        }
        width = {4: quarter, 8: half, 16: dim, 32: dim}
        self.levels = nn.ModuleDict(
            {
                str(s): nn.Sequential(
                    *layers, *_conv_ln(width[s], channels, 1), *_conv_ln(channels, channels, 3)
                )
                for s, layers in resample.items()
            }
        )

    def forward(self, x: Tensor) -> dict[int, Tensor]:
        return {int(s): level(x) for s, level in self.levels.items()}


class DPTReassembly(nn.Module):
    """DPT's reassembly as the ViT's multi-scale adapter: the token maps of four blocks
    [B, D, h, w] (stride 16) and their class tokens [B, D] -> ``{4: [B, C_0, 4h, 4w],
    8: [B, C_1, 2h, 2w], 16: [B, C_2, h, w], 32: [B, C_3, ceil(h/2), ceil(w/2)]}``, map i
    through read-out, 1x1 conv to C_i and DPT's resampling (4x4 stride-4 and 2x2 stride-2
    transposed convs, identity, 3x3 stride-2 conv); ``reassemble[i]`` holds map i's."""

    def __init__(self, dim: int, widths: Sequence[int], readout: str) -> None:
        super().__init__()
        self.reassemble = nn.ModuleList(
            Reassemble(dim, c, TOKEN_STRIDE, s, readout)
            for c, s in zip(widths, TARGET_STRIDES, strict=True)
        )

    def forward(self, maps: Sequence[Tensor], class_tokens: Sequence[Tensor]) -> dict[int, Tensor]:
        return {
            s: r(x, c)
            for s, r, x, c in zip(TARGET_STRIDES, self.reassemble, maps, class_tokens, strict=True)
        }


def bicubic_matrix(size: int, n: int, scale: float) -> Tensor:
    """[size, n] float32: row i holds the weights of ``F.interpolate(..., scale_factor=
    scale, mode="bicubic", align_corners=False)`` (no antialias) for output i along one
    axis of length n: source position ``(i + 0.5) / scale - 0.5``, Keys' cubic kernel with
    a = -0.75 (PyTorch's), taps clamped to the border. ``size`` may be symbolic."""
    a = -0.75
    # float32 as PyTorch's kernel: step 1/scale, then (i + 0.5) * step - 0.5
    src = (torch.arange(size, dtype=torch.float32) + 0.5) * (1.0 / scale) - 0.5
    base = torch.floor(src)
    t = src - base
    taps = torch.arange(n)

    def near(x: Tensor) -> Tensor:  # |x| <= 1
        return ((a + 2) * x - (a + 3)) * x * x + 1

    def far(x: Tensor) -> Tensor:  # 1 < |x| < 2
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

    weights = (far(t + 1), near(t), near(1 - t), far(2 - t))
    matrix = torch.zeros(())
    for k, w in enumerate(weights):
        index = (base.long() + (k - 1)).clamp(0, n - 1)
        matrix = matrix + w[:, None] * (index[:, None] == taps[None, :])
    return matrix.float()


class ViTEncoder(PublishedLayout, nn.Module):
    """A plain ViT or DINOv2 trunk plus a multi-scale adapter.

    Args:
        name: a key of :data:`VARIANTS`.
        drop_path_rate: stochastic depth of the last block (linear from 0 over the blocks).
        pyramid_channels: channels of every level of the simple feature pyramid (ViTDet:
            256).
        adapter: ``"simple"`` (ViTDet's simple feature pyramid on the last block) or
            ``"dpt"`` (DPT's reassembly of four blocks); None: simple.
        hooks: the four blocks (0-based, non-decreasing, the last one the last block) DPT's
            reassembly reads; None: :func:`dpt_hooks`.
        readout: DPT's read-out of the class token (``ignore``, ``add``, ``project``);
            None: ``project`` for timm's ViTs (DPT), ``ignore`` for DINOv2 (Depth Anything).
        reassemble_channels: widths of the four reassembled maps; None: :func:`dpt_widths`.

    Forward: x [B, 3, H, W] (any H, W) -> ``{s: [B, C_s, ceil(H/s), ceil(W/s)]}`` for
    s = 4, 8, 16, 32 (C_s: ``pyramid_channels``, or the reassembled widths).
    :meth:`tokens` gives the trunk's last stride-16 map alone, :meth:`hooked_tokens` the
    four blocks DPT reads.
    """

    own_prefixes = (ADAPTER_PREFIX,)
    """The adapter's layers, in no published file: they keep their values."""

    def __init__(
        self,
        name: str = "vit_small_patch16_224",
        drop_path_rate: float = 0.0,
        pyramid_channels: int = 256,
        adapter: str | None = None,
        hooks: Sequence[int] | None = None,
        readout: str | None = None,
        reassemble_channels: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        if name not in VARIANTS:
            raise UserError(f"unknown encoder {name!r}; known ViTs: {', '.join(VARIANTS)}")
        if isinstance(pyramid_channels, bool) or not isinstance(pyramid_channels, int):
            raise UserError(f"pyramid_channels must be an integer, got {pyramid_channels!r}")
        if pyramid_channels < 1:
            raise UserError(f"pyramid_channels must be positive, got {pyramid_channels}")
        self.name = name
        v = self.variant = VARIANTS[name]
        self.adapter_kind = adapter or "simple"
        if self.adapter_kind not in ADAPTERS:
            raise UserError(f"adapter must be one of {', '.join(ADAPTERS)}, got {adapter!r}")
        self.hooks = _checked_hooks(hooks, v)
        # DINOv2's convention is Depth Anything's (its get_intermediate_layers: norm=True)
        self.hook_norm = v.dinov2
        self.readout = readout or ("ignore" if v.dinov2 else "project")
        if self.readout not in READOUTS:
            raise UserError(f"readout must be one of {', '.join(READOUTS)}, got {readout!r}")
        widths = _checked_widths(reassemble_channels, v.dim)
        self.patch_embed = PatchEmbed(v.patch, v.dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, v.dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + v.pos_grid**2, v.dim))
        if v.registers:
            self.register_tokens = nn.Parameter(torch.zeros(1, v.registers, v.dim))
        if v.dinov2:
            # DINOv2's token for masked patches (its iBOT loss); a buffer, not a parameter:
            # it is never used here, and an unused parameter would stop DDP
            self.register_buffer("mask_token", torch.zeros(1, v.dim))
        (rates,) = drop_path_rates(drop_path_rate, [v.depth])
        self.blocks = nn.ModuleList([Block(v.dim, v.heads, v.dinov2, r) for r in rates])
        self.norm = nn.LayerNorm(v.dim, eps=1e-6)
        self.adapter: SimpleFeaturePyramid | DPTReassembly
        if self.adapter_kind == "dpt":
            self.adapter = DPTReassembly(v.dim, widths, self.readout)
            self.channels: dict[int, int] = dict(zip(TARGET_STRIDES, widths, strict=True))
        else:
            self.adapter = SimpleFeaturePyramid(v.dim, pyramid_channels)
            self.channels = dict.fromkeys(TARGET_STRIDES, pyramid_channels)
        self.output_stride = max(self.channels)
        self.reset_parameters()
        if self.adapter_kind == "dpt" and not self.hook_norm:
            # DPT reads the raw block outputs: the final norm never runs. It stays (the
            # published files hold it) but frozen, so no trainable parameter lacks a gradient
            self.norm.requires_grad_(False)

    def reset_parameters(self) -> None:
        """timm's ViT initialization for the trunk (truncated normal std 0.02 linears and
        position embedding, normal std 1e-6 class and register tokens), layer scales at
        :data:`LAYER_SCALE_INIT`; PyTorch's defaults for the patch conv and the adapter."""
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        if self.variant.registers:
            nn.init.normal_(self.register_tokens, std=1e-6)
        for m in self.blocks.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
            elif isinstance(m, LayerScale):
                nn.init.constant_(m.gamma, LAYER_SCALE_INIT)

    def position_embedding(self, grid: tuple[int, int]) -> Tensor:
        """The position embedding [1, 1 + gh*gw, D] for a ``grid`` of tokens, the class
        token's entry first (unchanged), the patch entries resampled bicubically."""
        v = self.variant
        if not is_symbolic(*grid) and grid == (v.pos_grid, v.pos_grid):
            return self.pos_embed  # (exported: always resample, the same values then)
        cls_pos, patch_pos = self.pos_embed[:, :1], self.pos_embed[:, 1:]
        dtype = patch_pos.dtype
        patch_pos = patch_pos.float().reshape(1, v.pos_grid, v.pos_grid, -1).permute(0, 3, 1, 2)
        if v.dinov2 and v.interp_offset and is_symbolic(*grid):
            # exported with dynamic sizes: the same resampling as below, written as two
            # interpolation matrices (a symbolic scale factor does not export)
            mh, mw = (
                bicubic_matrix(g, v.pos_grid, (g + v.interp_offset) / v.pos_grid) for g in grid
            )
            patch_pos = torch.einsum("ij,bdjk,lk->bdil", mh, patch_pos, mw)
        elif v.dinov2 and v.interp_offset:
            # DINOv2's first release: a scale factor slightly above grid/37 sets both the
            # output size (floor) and the sampling positions (1/scale), as its code does
            scale = tuple((g + v.interp_offset) / v.pos_grid for g in grid)
            patch_pos = F.interpolate(
                patch_pos, scale_factor=scale, mode="bicubic", antialias=v.interp_antialias
            )
        else:
            patch_pos = F.interpolate(
                patch_pos, size=grid, mode="bicubic", antialias=v.interp_antialias
            )
        patch_pos = patch_pos.permute(0, 2, 3, 1).reshape(1, grid[0] * grid[1], -1).to(dtype)
        return torch.cat([cls_pos, patch_pos], dim=1)

    def embed(self, x: Tensor) -> tuple[Tensor, tuple[int, int]]:
        """The tokens the first block reads: x [B, 3, H, W] -> ([B, prefix + gh*gw, D],
        (gh, gw)) with gh x gw = ceil(H/16) x ceil(W/16), the class token (and registers)
        first."""
        v = self.variant
        x = pad_to_multiple(x, TOKEN_STRIDE)
        if v.patch != TOKEN_STRIDE:
            size = [s // TOKEN_STRIDE * v.patch for s in x.shape[-2:]]
            x = F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)
        fmap = self.patch_embed(x)
        b, _, gh, gw = fmap.shape
        t = fmap.flatten(2).transpose(1, 2)
        t = torch.cat([self.cls_token.expand(b, -1, -1), t], dim=1)
        t = t + self.position_embedding((gh, gw))
        if v.registers:
            regs = self.register_tokens.expand(b, -1, -1)
            t = torch.cat([t[:, :1], regs, t[:, 1:]], dim=1)
        return t, (gh, gw)

    @property
    def prefix_tokens(self) -> int:
        """Tokens before the patch tokens: the class token and the registers."""
        return 1 + self.variant.registers

    def _as_map(self, t: Tensor, grid: tuple[int, int]) -> Tensor:
        """Patch tokens [B, prefix + gh*gw, D] -> map [B, D, gh, gw]."""
        b, _, d = t.shape
        return t[:, self.prefix_tokens :].transpose(1, 2).reshape(b, d, *grid)

    def tokens(self, x: Tensor) -> Tensor:
        """The trunk: x [B, 3, H, W] -> the last block's patch tokens after ``norm`` as a
        map [B, D, ceil(H/16), ceil(W/16)] (class and register tokens dropped)."""
        t, grid = self.embed(x)
        for block in self.blocks:
            t = block(t)
        return self._as_map(self.norm(t), grid)

    def hooked_tokens(self, x: Tensor) -> tuple[list[Tensor], list[Tensor]]:
        """What DPT's reassembly reads: x [B, 3, H, W] -> the outputs of the blocks
        :attr:`hooks` as four maps [B, D, ceil(H/16), ceil(W/16)] and their class tokens
        [B, D] (through ``norm`` for DINOv2, as Depth Anything; raw for timm's, as DPT)."""
        t, grid = self.embed(x)
        outputs = []
        for i, block in enumerate(self.blocks):
            t = block(t)
            outputs += [self.norm(t) if self.hook_norm else t] * self.hooks.count(i)
        return [self._as_map(o, grid) for o in outputs], [o[:, 0] for o in outputs]

    def forward(self, x: Tensor) -> dict[int, Tensor]:
        h, w = x.shape[-2:]
        if isinstance(self.adapter, DPTReassembly):
            pyramid = self.adapter(*self.hooked_tokens(x))
        else:
            pyramid = self.adapter(self.tokens(x))
        return {s: f[..., : ceil_div(h, s), : ceil_div(w, s)] for s, f in pyramid.items()}


def _checked_hooks(hooks: Sequence[int] | None, variant: ViTVariant) -> tuple[int, ...]:
    """``hooks`` as a tuple, or the variant's; one UserError line unless four non-decreasing
    block indices ending at the last block (a later block would run for nothing)."""
    if hooks is None:
        return dpt_hooks(variant)
    last = variant.depth - 1
    if (
        not isinstance(hooks, (list, tuple))
        or len(hooks) != 4
        or not all(isinstance(i, int) and not isinstance(i, bool) for i in hooks)
        or list(hooks) != sorted(hooks)
        or hooks[0] < 0
        or hooks[-1] != last
    ):
        raise UserError(
            f"hooks must be four non-decreasing block indices 0..{last} ending at the last "
            f"block {last}, got {hooks!r}"
        )
    return tuple(hooks)


def _checked_widths(widths: Sequence[int] | None, dim: int) -> tuple[int, ...]:
    """``widths`` as a tuple, or :func:`dpt_widths`; one UserError line unless four
    positive integers."""
    if widths is None:
        return dpt_widths(dim)
    if (
        not isinstance(widths, (list, tuple))
        or len(widths) != 4
        or not all(isinstance(c, int) and not isinstance(c, bool) and c > 0 for c in widths)
    ):
        raise UserError(f"reassemble_channels must be four positive integers, got {widths!r}")
    return tuple(widths)


@dataclass(frozen=True)
class ViTOptions:
    """``model.net.encoder_options`` of the ViT family (timm's ViTs and DINOv2)."""

    drop_path_rate: float = 0.0
    """Stochastic depth: the largest rate, reached linearly at the last block."""
    pyramid_channels: int | None = None
    """``adapter: simple``: channels of every level of its pyramid (strides 4-32); null: 256."""
    adapter: str | None = None
    """The multi-scale adapter: ``simple`` (ViTDet's simple feature pyramid) or ``dpt``
    (DPT's reassembly of four blocks); null: ``dpt`` when a task's decoder is DPT, else
    ``simple`` (:meth:`for_decoders`)."""
    hooks: tuple[int, ...] | None = None
    """``adapter: dpt``: the four blocks it reads (0-based); null: :func:`dpt_hooks`."""
    readout: str | None = None
    """``adapter: dpt``: read-out of the class token (``ignore``, ``add``, ``project``);
    null: ``project`` for timm's ViTs (DPT), ``ignore`` for DINOv2 (Depth Anything V2)."""
    reassemble_channels: tuple[int, ...] | None = None
    """``adapter: dpt``: widths of the maps at strides 4, 8, 16, 32; null:
    :func:`dpt_widths` (ViT-B 96/192/384/768, ViT-L 256/512/1024/1024, ViT-S 48/96/192/384)."""

    def __post_init__(self) -> None:
        if self.adapter is not None:
            check_choice(self, "adapter", ADAPTERS)
        if self.readout is not None:
            check_choice(self, "readout", READOUTS)
        for key in ("hooks", "reassemble_channels"):
            value = getattr(self, key)
            if isinstance(value, list):
                object.__setattr__(self, key, tuple(value))
            elif value is not None and not isinstance(value, tuple):
                raise OptionError(key, f"expected a list of four integers or null, got {value!r}")
        if self.adapter is not None:
            self._refuse_other_adapters_options()

    def _refuse_other_adapters_options(self) -> None:
        """An option of the adapter not in use would be dropped without a word."""
        if self.adapter == "dpt":
            if self.pyramid_channels is not None:
                raise OptionError(
                    "pyramid_channels", "only with adapter: simple (dpt: reassemble_channels)"
                )
            return
        for key in ("hooks", "readout", "reassemble_channels"):
            if getattr(self, key) is not None:
                raise OptionError(key, f"only with adapter: dpt (this network's is {self.adapter})")

    def for_decoders(self, decoders: frozenset[str]) -> ViTOptions:
        """The options with ``adapter`` chosen for the decoder kinds the network uses:
        DPT's reassembly when one is ``dpt`` (what DPT and Depth Anything do), else the
        simple feature pyramid."""
        if self.adapter is not None:
            return self
        return replace(self, adapter="dpt" if "dpt" in decoders else "simple")  # checks


def _build(name: str, options: ViTOptions) -> ViTEncoder:
    return ViTEncoder(
        name,
        options.drop_path_rate,
        256 if options.pyramid_channels is None else options.pyramid_channels,
        options.adapter,
        options.hooks,
        options.readout,
        options.reassemble_channels,
    )


def _published(name: str, key: str, options: ViTOptions) -> PublishedFile | TorchHubFile | None:
    """``published`` (or ``imagenet`` for timm's ViTs, ``lvd142m`` for DINOv2): the
    variant's published file: timm's on the Hugging Face Hub, DINOv2's release file
    through the torch hub cache. The feature pyramid's layers are not in them and start
    random."""
    source = VARIANTS[name].source
    dinov2 = source.startswith("https://")
    if key not in ("published", "lvd142m" if dinov2 else "imagenet"):
        return None
    if dinov2:
        return TorchHubFile(source, "DINOv2 weights", "Meta's ", check_hash=False)
    return hub_safetensors(source, "timm's ImageNet weights")


FAMILY = Family(_build, tuple(VARIANTS), ViTOptions, hierarchical=False, weights=_published)
"""The registry entry (``ENCODER_FAMILIES``): a plain ViT is one stride, so mtan,
cross_stitch and nddr refuse it in one line. Its options resolve ``adapter`` from the
network's decoders (:meth:`ViTOptions.for_decoders`)."""
