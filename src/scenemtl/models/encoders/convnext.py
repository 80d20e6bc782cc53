"""ConvNeXt-T/S/B (Liu et al. 2022, "A ConvNet for the 2020s") as a feature-pyramid encoder.

Module and parameter names are timm's (``stem.0``, ``stem.1``, ``stages.N.downsample.0/1``,
``stages.N.blocks.M.conv_dw/norm/mlp.fc1/mlp.fc2/gamma``), so timm's files on the Hugging
Face Hub (``timm/convnext_tiny.fb_in22k_ft_in1k``, file ``model.safetensors``) load with
every key and shape checked; their classifier ``head.norm``/``head.fc`` is dropped.

The computation is timm's ``ConvNeXt`` with its defaults for these variants (patch stem
4x4/4 + LayerNorm2d, stage 0 without downsampling, LayerNorm2d + 2x2/2 conv between stages,
block = depthwise 7x7 -> channels-last LayerNorm -> Linear 4C -> GELU -> Linear C -> layer
scale ``gamma`` -> drop path + identity; every LayerNorm eps 1e-6). One difference: an input
whose sides are not multiples of 32 is zero-padded at the bottom/right where a strided layer
needs it (to a multiple of 4 before the stem, to an even size before each downsampling), so
stage ``i`` has ``ceil(H / s_i)`` rows as every encoder of the project; timm drops the
remainder instead. For sides divisible by 32 both are the same computation.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from scenemtl.errors import UserError
from scenemtl.models.encoders.base import HierarchicalEncoder
from scenemtl.models.encoders.parts import (
    DropPath,
    LayerNorm2d,
    Mlp,
    drop_path_rates,
    pad_to_multiple,
)
from scenemtl.models.encoders.timm_family import PublishedLayout, WidthOptions, timm_family


@dataclass(frozen=True)
class ConvNeXtVariant:
    """One published ConvNeXt: blocks and channels per stage, and timm's file on the Hub."""

    depths: tuple[int, int, int, int]
    dims: tuple[int, int, int, int]
    hub_repo: str
    """Hugging Face Hub repo id of timm's default weights; the file is ``model.safetensors``."""


VARIANTS: dict[str, ConvNeXtVariant] = {
    "convnext_tiny": ConvNeXtVariant(
        (3, 3, 9, 3), (96, 192, 384, 768), "timm/convnext_tiny.fb_in22k_ft_in1k"
    ),
    "convnext_small": ConvNeXtVariant(
        (3, 3, 27, 3), (96, 192, 384, 768), "timm/convnext_small.fb_in22k_ft_in1k"
    ),
    "convnext_base": ConvNeXtVariant(
        (3, 3, 27, 3), (128, 256, 512, 1024), "timm/convnext_base.fb_in22k_ft_in1k"
    ),
}
"""timm model name -> variant (timm's ``convnext_tiny/small/base`` entry points)."""

LAYER_SCALE_INIT = 1e-6


class _PatchStem(nn.Sequential):
    """``stem.0`` conv 4x4/4 and ``stem.1`` LayerNorm2d; pads the input to a multiple of 4.
    [B, 3, H, W] -> [B, C0, ceil(H/4), ceil(W/4)]."""

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(pad_to_multiple(x, 4))


class _Downsample(nn.Sequential):
    """``downsample.0`` LayerNorm2d, ``downsample.1`` conv 2x2/2; odd sides are zero-padded
    after the norm. [B, C, H, W] -> [B, C', ceil(H/2), ceil(W/2)]."""

    def forward(self, x: Tensor) -> Tensor:
        norm, conv = self[0], self[1]
        return conv(pad_to_multiple(norm(x), 2))


class ConvNeXtBlock(nn.Module):
    """Depthwise 7x7 conv, LayerNorm (channels last, eps 1e-6), MLP 4x with GELU, layer
    scale, residual. [B, C, H, W] -> [B, C, H, W]."""

    def __init__(self, dim: int, drop_path: float = 0.0) -> None:
        super().__init__()
        self.conv_dw = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, 4 * dim)
        self.gamma = nn.Parameter(torch.full((dim,), LAYER_SCALE_INIT))
        self.drop_path = DropPath(drop_path)

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv_dw(x).permute(0, 2, 3, 1)  # channels last for the norm and MLP
        y = self.mlp(self.norm(y)).permute(0, 3, 1, 2)
        return x + self.drop_path(y * self.gamma.view(1, -1, 1, 1))


class ConvNeXtStage(nn.Module):
    """Optional downsampling (all stages but the first) then ``depth`` blocks."""

    def __init__(self, cin: int, cout: int, depth: int, rates: list[float]) -> None:
        super().__init__()
        self.downsample: nn.Module = (
            _Downsample(LayerNorm2d(cin), nn.Conv2d(cin, cout, 2, stride=2))
            if cin != cout
            else nn.Identity()
        )
        self.blocks = nn.Sequential(*[ConvNeXtBlock(cout, rates[i]) for i in range(depth)])

    def forward(self, x: Tensor) -> Tensor:
        return self.blocks(self.downsample(x))


class ConvNeXtEncoder(PublishedLayout, HierarchicalEncoder):
    """ConvNeXt trunk without classifier, returning ``{4: C0, 8: C1, 16: C2, 32: C3}`` maps.

    Args:
        name: a key of :data:`VARIANTS` (``convnext_tiny``, ``convnext_small``,
            ``convnext_base``).
        drop_path_rate: stochastic depth of the last block (linear from 0 over all blocks).
        embed_dim: channels of the first stage (None: the variant's, 96 or 128); the stages
            are 1, 2, 4, 8 times it. Another width trains from scratch only.

    Forward: x [B, 3, H, W] -> ``{s: [B, channels[s], ceil(H/s), ceil(W/s)]}`` for
    s = 4, 8, 16, 32 (the outputs of ``stages.0`` .. ``stages.3``, no extra norm).

    As a :class:`~scenemtl.models.encoders.base.HierarchicalEncoder`: ``stem`` is the
    patch stem module (stride 4) and stage ``i`` of :attr:`stage_blocks` is
    ``stages.i``'s downsampling (identity in stage 0) followed by its blocks, one module
    each.
    """

    def __init__(
        self, name: str = "convnext_tiny", drop_path_rate: float = 0.0, embed_dim: int | None = None
    ) -> None:
        super().__init__()
        if name not in VARIANTS:
            raise UserError(f"unknown encoder {name!r}; known ConvNeXts: {', '.join(VARIANTS)}")
        self.name = name
        variant = VARIANTS[name]
        dims = variant.dims if embed_dim is None else tuple(embed_dim * m for m in (1, 2, 4, 8))
        # ``stem`` (a module: the protocol's stem) and ``stages`` as timm names them
        self.stem = _PatchStem(nn.Conv2d(3, dims[0], 4, stride=4), LayerNorm2d(dims[0]))
        rates = drop_path_rates(drop_path_rate, variant.depths)
        cins = (dims[0], *dims[:-1])
        self.stages = nn.Sequential(
            *[
                ConvNeXtStage(cin, cout, depth, r)
                for cin, cout, depth, r in zip(cins, dims, variant.depths, rates, strict=True)
            ]
        )
        self.stage_scales: list[int] = [4, 8, 16, 32]
        self.stage_out_channels: tuple[int, ...] = tuple(dims)
        self.channels: dict[int, int] = dict(zip(self.stage_scales, dims, strict=True))
        self.output_stride = max(self.channels)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """timm's initialization: truncated normal (std 0.02) convs and linears, zero
        biases, LayerNorms 1/0, layer scales 1e-6."""
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, ConvNeXtBlock):
                nn.init.constant_(m.gamma, LAYER_SCALE_INIT)

    @property
    def stage_blocks(self) -> list[nn.Sequential]:
        """Per stage, a fresh Sequential over ``stages.i.downsample`` and the blocks of
        ``stages.i.blocks`` (so the last module is the stage's last block, as MTAN reads
        it; the registered modules and their names are timm's)."""
        return [nn.Sequential(stage.downsample, *stage.blocks) for stage in self.stages]

    def forward(self, x: Tensor) -> dict[int, Tensor]:
        pyramid: dict[int, Tensor] = {}
        x = self.stem(x)
        for scale, stage in zip(self.stage_scales, self.stages, strict=True):
            x = stage(x)  # ConvNeXtStage: downsample then blocks, as stage_blocks
            pyramid[scale] = x
        return pyramid


FAMILY = timm_family(
    ConvNeXtEncoder,
    {name: v.hub_repo for name, v in VARIANTS.items()},
    options=WidthOptions,
    published_width=lambda name: VARIANTS[name].dims[0],
)
"""The registry entry (``ENCODER_FAMILIES``); ``weights: imagenet`` (or ``published``) is
timm's file on the Hugging Face Hub."""
