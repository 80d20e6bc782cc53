"""MobileNetV3-Large (Howard et al. 2019) as the real-time feature-pyramid encoder.

Chosen over EfficientNet-B0 because it is the lighter of the two (0.22 against 0.39 GMACs
at 224 px, the papers' figures; 3.0M against 3.6M parameters without the classifier heads)
with the same kind of blocks, and it is the encoder of its paper's own real-time
segmentation model (LR-ASPP).

Module and parameter names are timm's ``mobilenetv3_large_100`` (``conv_stem``, ``bn1``,
``blocks.S.B.conv_pw/bn1/conv_dw/bn2/se.conv_reduce/se.conv_expand/conv_pwl/bn3``, and
``blocks.6.0.conv/bn1``), so timm's file on the Hugging Face Hub
(``timm/mobilenetv3_large_100.ra_in1k``, ``model.safetensors``) loads with every key and
shape checked; its classifier ``conv_head`` (960 -> 1280) and ``classifier`` are dropped.

Computation as timm's: BatchNorm eps 1e-5; hard-swish except in the first three stages
(ReLU); squeeze-excitation from the expanded channels (ratio 0.25 rounded to a multiple of
8), ReLU inside and hard-sigmoid gate; residual where stride 1 and channels equal; drop path
rate ``rate * i / n`` for block i of n (timm's EfficientNet builder rule). Symmetric padding
``k // 2`` makes every strided layer give ``ceil(H/2)``.

Pyramid as timm's ``features_only`` stages: 2 (``blocks.0``, 16), 4 (``blocks.1``, 24),
8 (``blocks.2``, 40), 16 (``blocks.4``, 112), 32 (``blocks.6``, 960).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from scenemtl.errors import UserError
from scenemtl.models.encoders.base import HierarchicalEncoder
from scenemtl.models.encoders.parts import DropPath
from scenemtl.models.encoders.timm_family import PublishedLayout, timm_family


def make_divisible(v: float, divisor: int = 8) -> int:
    """Nearest multiple of ``divisor`` (at least ``divisor``), one more step up if rounding
    lost more than 10% (the MobileNet rule for channel counts): 18 -> 24, 30 -> 32."""
    new = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new + divisor if new < 0.9 * v else new


@dataclass(frozen=True)
class BlockSpec:
    """One block: ``kind`` ds (depthwise separable), ir (inverted residual) or cn (1x1
    conv-BN-act); kernel, stride, expansion ratio, output channels, SE, hard-swish."""

    kind: str
    kernel: int
    stride: int
    expansion: float
    out: int
    se: bool
    hard_swish: bool


def _blocks(
    kind: str, k: int, s: int, e: float, c: int, se: bool, hs: bool, repeat: int = 1
) -> list[BlockSpec]:
    # the first block of a group carries the stride, the others stride 1
    return [BlockSpec(kind, k, s if i == 0 else 1, e, c, se, hs) for i in range(repeat)]


LARGE: tuple[list[BlockSpec], ...] = (
    _blocks("ds", 3, 1, 1, 16, False, False),
    _blocks("ir", 3, 2, 4, 24, False, False) + _blocks("ir", 3, 1, 3, 24, False, False),
    _blocks("ir", 5, 2, 3, 40, True, False, repeat=3),
    _blocks("ir", 3, 2, 6, 80, False, True)
    + _blocks("ir", 3, 1, 2.5, 80, False, True)
    + _blocks("ir", 3, 1, 2.3, 80, False, True, repeat=2),
    _blocks("ir", 3, 1, 6, 112, True, True, repeat=2),
    _blocks("ir", 5, 2, 6, 160, True, True, repeat=3),
    _blocks("cn", 1, 1, 1, 960, False, True),
)
"""timm's arch_def of mobilenetv3_large_100, one list per ``blocks.S``."""

VARIANTS: dict[str, str] = {"mobilenetv3_large_100": "timm/mobilenetv3_large_100.ra_in1k"}
"""Encoder name -> Hugging Face Hub repo id of timm's default weights."""
STEM_CHANNELS = 16
PYRAMID_STAGES = {2: (0,), 4: (1,), 8: (2,), 16: (3, 4), 32: (5, 6)}
"""Pyramid key -> the ``blocks.S`` that lead to it from the previous key."""


def _act(hard_swish: bool) -> nn.Module:
    return nn.Hardswish() if hard_swish else nn.ReLU()


class BatchNormAct(nn.BatchNorm2d):
    """BatchNorm then an activation (timm's ``BatchNormAct2d``: the BN's own names)."""

    def __init__(self, channels: int, act: nn.Module | None) -> None:
        super().__init__(channels)
        self.act = act if act is not None else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.act(super().forward(x))


class SqueezeExcite(nn.Module):
    """x * hardsigmoid(expand(relu(reduce(mean over H, W of x)))). [B, C, H, W] in/out."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        reduced = make_divisible(channels * 0.25)
        self.conv_reduce = nn.Conv2d(channels, reduced, 1)
        self.act1 = nn.ReLU()
        self.conv_expand = nn.Conv2d(reduced, channels, 1)
        self.gate = nn.Hardsigmoid()

    def forward(self, x: Tensor) -> Tensor:
        s = self.conv_expand(self.act1(self.conv_reduce(x.mean((2, 3), keepdim=True))))
        return x * self.gate(s)


def _dw(channels: int, k: int, stride: int) -> nn.Conv2d:
    return nn.Conv2d(channels, channels, k, stride, k // 2, groups=channels, bias=False)


class DepthwiseSeparable(nn.Module):
    """conv_dw kxk + bn1 + act, conv_pw 1x1 + bn2, residual when shapes allow."""

    def __init__(self, cin: int, spec: BlockSpec, drop_path: float) -> None:
        super().__init__()
        self.conv_dw = _dw(cin, spec.kernel, spec.stride)
        self.bn1 = BatchNormAct(cin, _act(spec.hard_swish))
        self.se: nn.Module = SqueezeExcite(cin) if spec.se else nn.Identity()
        self.conv_pw = nn.Conv2d(cin, spec.out, 1, bias=False)
        self.bn2 = BatchNormAct(spec.out, None)
        self.skip = spec.stride == 1 and cin == spec.out
        self.drop_path = DropPath(drop_path)

    def forward(self, x: Tensor) -> Tensor:
        y = self.bn2(self.conv_pw(self.se(self.bn1(self.conv_dw(x)))))
        return x + self.drop_path(y) if self.skip else y


class InvertedResidual(nn.Module):
    """conv_pw 1x1 expand + bn1 + act, conv_dw kxk + bn2 + act, SE, conv_pwl 1x1 + bn3,
    residual when stride 1 and channels equal."""

    def __init__(self, cin: int, spec: BlockSpec, drop_path: float) -> None:
        super().__init__()
        mid = make_divisible(cin * spec.expansion)
        self.conv_pw = nn.Conv2d(cin, mid, 1, bias=False)
        self.bn1 = BatchNormAct(mid, _act(spec.hard_swish))
        self.conv_dw = _dw(mid, spec.kernel, spec.stride)
        self.bn2 = BatchNormAct(mid, _act(spec.hard_swish))
        self.se: nn.Module = SqueezeExcite(mid) if spec.se else nn.Identity()
        self.conv_pwl = nn.Conv2d(mid, spec.out, 1, bias=False)
        self.bn3 = BatchNormAct(spec.out, None)
        self.skip = spec.stride == 1 and cin == spec.out
        self.drop_path = DropPath(drop_path)

    def forward(self, x: Tensor) -> Tensor:
        y = self.se(self.bn2(self.conv_dw(self.bn1(self.conv_pw(x)))))
        y = self.bn3(self.conv_pwl(y))
        return x + self.drop_path(y) if self.skip else y


class ConvBnAct(nn.Module):
    """conv 1x1 + bn1 + act (the last stage, 160 -> 960)."""

    def __init__(self, cin: int, spec: BlockSpec) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, spec.out, spec.kernel, spec.stride, spec.kernel // 2, bias=False)
        self.bn1 = BatchNormAct(spec.out, _act(spec.hard_swish))

    def forward(self, x: Tensor) -> Tensor:
        return self.bn1(self.conv(x))


class MobileNetV3Encoder(PublishedLayout, HierarchicalEncoder):
    """MobileNetV3-Large trunk without its head, returning ``{2: 16, 4: 24, 8: 40,
    16: 112, 32: 960}`` (stride: channels) maps of ``ceil(H/s) x ceil(W/s)``.

    Args:
        name: ``mobilenetv3_large_100``.
        drop_path_rate: stochastic depth, ``rate * i / n`` for block i of n.

    As a :class:`~scenemtl.models.encoders.base.HierarchicalEncoder`: :meth:`stem` is
    ``conv_stem``, ``bn1`` and ``blocks.0`` (stride 2); :attr:`stage_blocks` lead from stride 2
    to 4, 8, 16 and 32, each a Sequential of the blocks of ``blocks.1``, ``blocks.2``,
    ``blocks.3-4`` and ``blocks.5-6`` one by one.
    """

    classifier_prefixes = ("conv_head.", "classifier.")
    """timm's classifier (``conv_head`` 960 -> 1280 and ``classifier``), dropped on loading."""

    def __init__(self, name: str = "mobilenetv3_large_100", drop_path_rate: float = 0.0):
        super().__init__()
        if name not in VARIANTS:
            raise UserError(f"unknown encoder {name!r}; known MobileNets: {', '.join(VARIANTS)}")
        if not 0.0 <= drop_path_rate < 1.0:
            raise UserError(f"drop_path_rate must be in [0, 1), got {drop_path_rate!r}")
        self.name = name
        self.conv_stem = nn.Conv2d(3, STEM_CHANNELS, 3, 2, 1, bias=False)
        self.bn1 = BatchNormAct(STEM_CHANNELS, nn.Hardswish())
        n = sum(len(stage) for stage in LARGE)
        cin, i = STEM_CHANNELS, 0
        stages = []
        for specs in LARGE:
            blocks: list[nn.Module] = []
            for spec in specs:
                rate = drop_path_rate * i / n
                if spec.kind == "ds":
                    blocks.append(DepthwiseSeparable(cin, spec, rate))
                elif spec.kind == "ir":
                    blocks.append(InvertedResidual(cin, spec, rate))
                else:
                    blocks.append(ConvBnAct(cin, spec))
                cin, i = spec.out, i + 1
            stages.append(nn.Sequential(*blocks))
        self.blocks = nn.Sequential(*stages)
        self.channels: dict[int, int] = {
            s: LARGE[idx[-1]][-1].out for s, idx in PYRAMID_STAGES.items()
        }
        self.stage_scales: list[int] = [4, 8, 16, 32]
        self.stage_out_channels: tuple[int, ...] = tuple(self.channels[s] for s in (4, 8, 16, 32))
        self.output_stride = max(self.channels)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """timm's ("goog") initialization: convs normal(0, sqrt(2 / fan_out)) with
        fan_out = k*k*out/groups, zero biases, BatchNorms 1/0."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
                nn.init.normal_(m.weight, 0.0, (2.0 / fan_out) ** 0.5)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
                m.reset_running_stats()

    def stem(self, x: Tensor) -> Tensor:
        """conv_stem, bn1 (hard-swish), blocks.0: [B, 3, H, W] -> [B, 16, ceil(H/2),
        ceil(W/2)] (pyramid key 2)."""
        return self.blocks[0](self.bn1(self.conv_stem(x)))

    @property
    def stage_blocks(self) -> list[nn.Sequential]:
        """The blocks from key 2 to 4, 8, 16 and 32 (those of ``blocks.1``, ``blocks.2``,
        ``blocks.3-4``, ``blocks.5-6``), one module each, so that the last one is the
        stage's last block (MTAN); :meth:`stem` then these gives :meth:`forward`."""
        return [
            nn.Sequential(*[block for i in PYRAMID_STAGES[s] for block in self.blocks[i]])
            for s in self.stage_scales
        ]

    @property
    def stage_inner_channels(self) -> tuple[int, ...]:
        """Channels before each stage's last block: 24, 40, 112, and 160 in the last stage,
        whose last block is the 1x1 conv 160 -> 960 (``blocks.6.0``)."""
        return tuple(
            [block.out for i in PYRAMID_STAGES[s] for block in LARGE[i]][-2]
            for s in self.stage_scales
        )

    def forward(self, x: Tensor) -> dict[int, Tensor]:
        x = self.stem(x)
        pyramid = {2: x}
        for scale, stage in zip(self.stage_scales, self.stage_blocks, strict=True):
            x = stage(x)
            pyramid[scale] = x
        return pyramid


FAMILY = timm_family(MobileNetV3Encoder, VARIANTS)
"""The registry entry (``ENCODER_FAMILIES``); ``weights: imagenet`` (or ``published``) is
timm's file on the Hugging Face Hub."""
