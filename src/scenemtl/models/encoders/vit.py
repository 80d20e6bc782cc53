"""Plain ViTs (timm's ViT-S/B/L/16) and DINOv2 (ViT-S/B/L/14, with and without registers)
as feature-pyramid encoders, through the ViTDet simple feature pyramid.

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
"""

from __future__ import annotations

from dataclasses import dataclass

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
from scenemtl.models.encoders.timm_family import PublishedLayout
from scenemtl.models.encoders.weights import PublishedFile, TorchHubFile, hub_safetensors

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


def _dinov2(arch: str, dim: int, depth: int, heads: int, reg: bool) -> ViTVariant:
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
    )


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
    "dinov2_vitl14": _dinov2("vitl", 1024, 24, 16, reg=False),
    "dinov2_vits14_reg4": _dinov2("vits", 384, 12, 6, reg=True),
    "dinov2_vitb14_reg4": _dinov2("vitb", 768, 12, 12, reg=True),
    "dinov2_vitl14_reg4": _dinov2("vitl", 1024, 24, 16, reg=True),
}
"""Encoder name -> published variant. timm's default tag per model; DINOv2's LVD-142M."""

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
    """A plain ViT or DINOv2 trunk plus the simple feature pyramid.

    Args:
        name: a key of :data:`VARIANTS`.
        drop_path_rate: stochastic depth of the last block (linear from 0 over the blocks).
        pyramid_channels: channels of every pyramid level (ViTDet: 256).

    Forward: x [B, 3, H, W] (any H, W) -> ``{s: [B, pyramid_channels, ceil(H/s), ceil(W/s)]}``
    for s = 4, 8, 16, 32. :meth:`tokens` gives the trunk's stride-16 map alone.
    """

    own_prefixes = (ADAPTER_PREFIX,)
    """The feature pyramid's layers, in no published file: they keep their values."""

    def __init__(
        self,
        name: str = "vit_small_patch16_224",
        drop_path_rate: float = 0.0,
        pyramid_channels: int = 256,
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
        self.adapter = SimpleFeaturePyramid(v.dim, pyramid_channels)
        self.channels: dict[int, int] = dict.fromkeys((4, 8, 16, 32), pyramid_channels)
        self.output_stride = max(self.channels)
        self.reset_parameters()

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

    def tokens(self, x: Tensor) -> Tensor:
        """The trunk: x [B, 3, H, W] -> the last block's patch tokens after ``norm`` as a
        map [B, D, ceil(H/16), ceil(W/16)] (class and register tokens dropped)."""
        v = self.variant
        x = pad_to_multiple(x, TOKEN_STRIDE)
        if v.patch != TOKEN_STRIDE:
            size = [s // TOKEN_STRIDE * v.patch for s in x.shape[-2:]]
            x = F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)
        fmap = self.patch_embed(x)
        b, d, gh, gw = fmap.shape
        t = fmap.flatten(2).transpose(1, 2)
        t = torch.cat([self.cls_token.expand(b, -1, -1), t], dim=1)
        t = t + self.position_embedding((gh, gw))
        prefix = 1
        if v.registers:
            regs = self.register_tokens.expand(b, -1, -1)
            t = torch.cat([t[:, :1], regs, t[:, 1:]], dim=1)
            prefix += v.registers
        for block in self.blocks:
            t = block(t)
        t = self.norm(t)[:, prefix:]
        return t.transpose(1, 2).reshape(b, d, gh, gw)

    def forward(self, x: Tensor) -> dict[int, Tensor]:
        h, w = x.shape[-2:]
        pyramid = self.adapter(self.tokens(x))
        return {s: f[..., : ceil_div(h, s), : ceil_div(w, s)] for s, f in pyramid.items()}


@dataclass(frozen=True)
class ViTOptions:
    """``model.net.encoder_options`` of the ViT family (timm's ViTs and DINOv2)."""

    drop_path_rate: float = 0.0
    """Stochastic depth: the largest rate, reached linearly at the last block."""
    pyramid_channels: int = 256
    """Channels of every level of the simple feature pyramid (strides 4-32)."""


def _build(name: str, options: ViTOptions) -> ViTEncoder:
    return ViTEncoder(name, options.drop_path_rate, options.pyramid_channels)


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
cross_stitch and nddr refuse it in one line."""
