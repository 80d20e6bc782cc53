"""DPT dense head (Ranftl, Bochkovskiy, Koltun 2021, "Vision Transformers for Dense
Prediction"), after the authors' code (isl-org/DPT: ``dpt/vit.py``, ``dpt/blocks.py``,
``dpt/models.py``) and the same head in Depth Anything V2 (``depth_anything_v2/dpt.py``).

::

    4 inputs (ViT blocks at stride 16, or pyramid levels at strides 4..32)
      -> reassemble_i: [read-out] -> 1x1 conv -> resample to stride 4, 8, 16, 32
         (4x4/stride-4 or 2x2/stride-2 transposed conv, identity, 3x3/stride-2 conv)
      -> layer_rn_i: 3x3 conv (no bias) to ``features``
    fusion_4(l4) -> fusion_3(., l3) -> fusion_2(., l2) -> fusion_1(., l1)    (stride 2)
      fusion: x + RCU(skip) -> RCU -> bilinear up (to the next level's size, or 2x) -> 1x1
      RCU (residual conv unit): ReLU -> 3x3 -> [BN] -> ReLU -> 3x3 -> [BN] -> + input
    head: "regression" (DPT's depth head):
          3x3 (F -> F/2) -> bilinear up 2x -> 3x3 (F/2 -> 32) -> ReLU -> 1x1
          "segmentation": 3x3 (no bias) -> BN -> ReLU -> dropout 0.1 -> 1x1 -> bilinear up 2x

The output is at stride 1 of the stride-4 grid: [B, out, 4*ceil(H/4), 4*ceil(W/4)], or
exactly ``size`` when given (the last upsampling goes there). Bilinear resampling uses
``align_corners=True`` as the authors do. See docs/models.md ("DPT head") for the
differences to the authors' head and the parameter counts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch.nn.functional as F
from torch import Tensor, nn

from scenemtl.errors import UserError
from scenemtl.models.encoders.reassemble import TARGET_STRIDES, Reassemble
from scenemtl.models.options import OptionError, check_bool, check_int

HEADS = ("regression", "segmentation")
"""DPT's two published heads: DPTDepthModel's (also Depth Anything's), named for what it
does here (it serves any task, not only depth), and DPTSegmentationModel's."""
HEAD_ALIASES = {"depth": "regression"}
"""Earlier names still read (configs and checkpoints written before the rename)."""


@dataclass
class DPTOptions:
    """``model.net.decoder_options`` when a task's decoder is ``dpt`` (one set for every
    DPT task of the network).

    Attributes:
        features: fusion width F (DPT-Hybrid and DPT-Large: 256; Depth Anything V2:
            64/128/256 for ViT-S/B/L).
        head: ``regression`` (DPT's depth head, Depth Anything's; the default for every
            task here; ``depth`` is read as this) or ``segmentation`` (DPT's segmentation
            head), or a mapping task -> one of those (tasks left out get ``regression``).
        use_bn: BatchNorm in the residual conv units; null = as the authors' models:
            on with the segmentation head, off with the regression head.
    """

    features: int = 256
    head: Any = "regression"
    use_bn: bool | None = None

    def __post_init__(self) -> None:
        check_int(self, "features", 2, 4096)
        if isinstance(self.head, str):
            self.head = HEAD_ALIASES.get(self.head, self.head)
        elif isinstance(self.head, dict):
            self.head = {t: HEAD_ALIASES.get(h, h) for t, h in self.head.items()}
        if self.features % 2:
            raise OptionError("features", f"expected an even number, got {self.features}")
        heads = self.head.values() if isinstance(self.head, dict) else [self.head]
        if not isinstance(self.head, (str, dict)) or not all(
            isinstance(h, str) and h in HEADS for h in heads
        ):
            raise OptionError(
                "head",
                f"expected {' or '.join(HEADS)} or a mapping task -> one of those, "
                f"got {self.head!r}",
            )
        if self.use_bn is not None:
            check_bool(self, "use_bn")

    def head_for(self, task: str | None) -> str:
        """The head kind of ``task`` (``None``: one head for every task, which a per-task
        mapping cannot give)."""
        if isinstance(self.head, str):
            return self.head
        if task is None:
            raise UserError(
                "model.net.decoder_options.head: one DPT head serves every task here; give "
                "one kind (regression or segmentation), not a per-task mapping"
            )
        return self.head.get(task, "regression")

    def head_kwargs(self, task: str | None) -> dict[str, Any]:
        """Keyword arguments of :class:`DPTHead` for ``task``."""
        head = self.head_for(task)
        use_bn = head == "segmentation" if self.use_bn is None else self.use_bn
        return {"features": self.features, "head": head, "use_bn": use_bn}


def _upsample(x: Tensor, size: Sequence[int] | None) -> Tensor:
    """Bilinear (align_corners=True, as DPT) to ``size``, or 2x without one."""
    if size is None:
        return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=True)


class ResidualConvUnit(nn.Module):
    """ReLU -> 3x3 -> [BN] -> ReLU -> 3x3 -> [BN] -> + input (convs biased without BN).
    [B, F, h, w] -> [B, F, h, w]."""

    def __init__(self, features: int, use_bn: bool) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(features, features, 3, padding=1, bias=not use_bn)
        self.bn1 = nn.BatchNorm2d(features) if use_bn else nn.Identity()
        self.conv2 = nn.Conv2d(features, features, 3, padding=1, bias=not use_bn)
        self.bn2 = nn.BatchNorm2d(features) if use_bn else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        out = self.bn1(self.conv1(F.relu(x)))
        out = self.bn2(self.conv2(F.relu(out)))
        return out + x


class FusionBlock(nn.Module):
    """RefineNet-style fusion: (x + RCU(skip)) -> RCU -> bilinear up -> 1x1 conv.

    The coarsest block has no skip (``skip=False``: no first RCU; DPT builds one it never
    uses). Shapes: x [B, F, h, w], skip [B, F, h, w] -> [B, F, *size] (2h x 2w without)."""

    def __init__(self, features: int, use_bn: bool, skip: bool = True) -> None:
        super().__init__()
        self.rcu1 = ResidualConvUnit(features, use_bn) if skip else None
        self.rcu2 = ResidualConvUnit(features, use_bn)
        self.out_conv = nn.Conv2d(features, features, 1)

    def forward(
        self, x: Tensor, skip: Tensor | None = None, size: Sequence[int] | None = None
    ) -> Tensor:
        if self.rcu1 is not None:
            if skip is None:
                raise ValueError("this fusion block takes a skip input")
            x = x + self.rcu1(skip)
        return self.out_conv(_upsample(self.rcu2(x), size))


class RegressionHead(nn.Module):
    """DPT's depth head (DPTDepthModel's, Depth Anything's) without its final ReLU:
    fused map [B, F, h, w] -> 3x3 (F/2) -> bilinear to ``size`` (2x without) -> 3x3
    (hidden) -> ReLU -> 1x1 -> [B, out, *size]."""

    def __init__(self, features: int, out_channels: int, hidden: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(features, features // 2, 3, padding=1)
        self.conv2 = nn.Sequential(
            nn.Conv2d(features // 2, hidden, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, out_channels, 1),
        )
        self.feature_channels = hidden

    @property
    def last_conv(self) -> nn.Module:
        return self.conv2[2]

    def features(self, path: Tensor, size: Sequence[int] | None) -> Tensor:
        """[B, hidden, *size]: everything up to the last conv."""
        return self.conv2[1](self.conv2[0](_upsample(self.conv1(path), size)))

    def predict(self, features: Tensor, size: Sequence[int] | None) -> Tensor:
        return self.conv2[2](features)


class SegmentationHead(nn.Module):
    """DPT's segmentation head (DPTSegmentationModel's): fused map [B, F, h, w] -> 3x3
    (no bias) -> BN -> ReLU -> dropout 0.1 -> 1x1 -> bilinear to ``size`` (2x without)."""

    def __init__(self, features: int, out_channels: int, hidden: int) -> None:
        super().__init__()
        self.conv1 = nn.Sequential(
            nn.Conv2d(features, features, 3, padding=1, bias=False),
            nn.BatchNorm2d(features),
            nn.ReLU(inplace=True),
            nn.Dropout(0.1),
        )
        self.conv2 = nn.Conv2d(features, out_channels, 1)
        self.feature_channels = features

    @property
    def last_conv(self) -> nn.Module:
        return self.conv2

    def features(self, path: Tensor, size: Sequence[int] | None) -> Tensor:
        """[B, F, h, w] (stride 2): everything up to the last conv."""
        return self.conv1(path)

    def predict(self, features: Tensor, size: Sequence[int] | None) -> Tensor:
        return _upsample(self.conv2(features), size)


HEAD_MODULES: dict[str, type[RegressionHead] | type[SegmentationHead]] = {
    "regression": RegressionHead,
    "segmentation": SegmentationHead,
}
"""The module of each of :data:`HEADS` (``hidden``: the regression head's hidden width)."""


class DPTHead(nn.Module):
    """DPT's dense head for one task.

    Args:
        in_channels: channels of the four inputs, finest first.
        out_channels: the task's output channels.
        in_strides: stride of each input (ViT blocks: (16, 16, 16, 16); a pyramid: its
            levels' strides); they are resampled to 4, 8, 16, 32.
        features: fusion width (DPT-Hybrid and DPT-Large: 256).
        reassemble_channels: 1x1 projection width per input (DPT: ViT-B (96, 192, 384,
            768), ViT-L (256, 512, 1024, 1024)); ``None`` (all, or one entry): identity
            where the stride is already right (a pyramid level), else the input width.
        readout: read-out for ViT class tokens (``"project"`` is DPT's default), or
            ``None`` when the inputs have none; one value for all inputs or one per input
            (DPT-Hybrid: ``(None, None, "project", "project")``).
        use_bn: BN in the residual conv units (DPT: off for depth, on for segmentation).
        head: ``"regression"`` (DPTDepthModel / Depth Anything, without the final ReLU: the
            task's output activation applies) or ``"segmentation"`` (DPTSegmentationModel).
        head_hidden: the regression head's hidden width (32).

    Forward: ``features`` (a sequence of four [B, C_i, h_i, w_i], or a pyramid mapping
    stride -> map, see :meth:`for_pyramid`), optional class tokens (four [B, C_i]) and
    ``size`` -> [B, out_channels, *size], or [B, out_channels, 4*h_4, 4*w_4] with h_4 x w_4
    the stride-4 grid (stride 1).
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        out_channels: int,
        in_strides: Sequence[int] = TARGET_STRIDES,
        features: int = 256,
        reassemble_channels: Sequence[int | None] | None = None,
        readout: str | Sequence[str | None] | None = None,
        use_bn: bool = False,
        head: Literal["regression", "segmentation"] = "regression",
        head_hidden: int = 32,
    ) -> None:
        super().__init__()
        n = len(TARGET_STRIDES)
        if len(in_channels) != n or len(in_strides) != n:
            raise UserError(f"DPT takes {n} inputs, got {len(in_channels)} channels")
        if reassemble_channels is not None and len(reassemble_channels) != n:
            raise UserError(f"DPT: reassemble_channels needs {n} values")
        head = HEAD_ALIASES.get(head, head)
        if head not in HEADS:
            raise UserError(f"DPT: head must be one of {', '.join(HEADS)}, got {head!r}")
        if features < 2 or features % 2:
            raise UserError(f"DPT: features must be an even number >= 2, got {features}")
        self.in_strides = tuple(in_strides)
        widths = reassemble_channels or [None] * n
        readouts = [readout] * n if readout is None or isinstance(readout, str) else readout
        if len(readouts) != n:
            raise UserError(f"DPT: readout needs one value or {n}")
        self.reassemble = nn.ModuleList(
            Reassemble(*args)
            for args in zip(in_channels, widths, in_strides, TARGET_STRIDES, readouts, strict=True)
        )
        self.layer_rn = nn.ModuleList(
            nn.Conv2d(r.cout, features, 3, padding=1, bias=False)  # type: ignore[arg-type]
            for r in self.reassemble
        )
        self.fusion = nn.ModuleList(FusionBlock(features, use_bn, skip=i < n - 1) for i in range(n))
        self.head_kind = head
        self.head = HEAD_MODULES[head](features, out_channels, head_hidden)

    @classmethod
    def for_pyramid(
        cls, channels: Mapping[int, int], out_channels: int, **kwargs: object
    ) -> DPTHead:
        """The head on an encoder pyramid (``channels``: stride -> channels): target stride
        t reads the level at t, or when the pyramid has none (a dilated ResNet has no 32)
        the coarsest level finer than t, resampled."""
        strides = [pyramid_source(channels, t) for t in TARGET_STRIDES]
        return cls([channels[s] for s in strides], out_channels, strides, **kwargs)  # type: ignore[arg-type]

    def forward(
        self,
        features: Sequence[Tensor] | Mapping[int, Tensor],
        class_tokens: Sequence[Tensor] | None = None,
        size: Sequence[int] | None = None,
    ) -> Tensor:
        return self.predict(self.features(features, class_tokens, size), size)

    def features(
        self,
        features: Sequence[Tensor] | Mapping[int, Tensor],
        class_tokens: Sequence[Tensor] | None = None,
        size: Sequence[int] | None = None,
    ) -> Tensor:
        """Reassembly, fusion and the head up to its last conv (what :meth:`predict` maps
        to the output): regression head [B, head_hidden, *size] (stride 1 without ``size``),
        segmentation head [B, features, h, w] (stride 2)."""
        if isinstance(features, Mapping):
            features = [features[s] for s in self.in_strides]
        tokens: Sequence[Tensor | None] = class_tokens or [None] * len(features)
        layers = [
            rn(r(x, c))
            for rn, r, x, c in zip(self.layer_rn, self.reassemble, features, tokens, strict=True)
        ]
        path = self.fusion[-1](layers[-1], size=layers[-2].shape[-2:])
        for i in range(len(layers) - 2, -1, -1):
            nxt = layers[i - 1].shape[-2:] if i > 0 else None
            path = self.fusion[i](path, layers[i], size=nxt)
        return self.head.features(path, size)

    def predict(self, features: Tensor, size: Sequence[int] | None = None) -> Tensor:
        """The last conv (and, for the segmentation head, the final upsampling to ``size``
        or 2x) on :meth:`features`' output -> [B, out_channels, *size] (stride 1 without)."""
        return self.head.predict(features, size)

    def feature_modules(self) -> list[nn.Module]:
        """The modules :meth:`features` runs (all but the last conv)."""
        last = self.head.last_conv
        return [m for m in self.modules() if not list(m.children()) and m is not last]

    @property
    def feature_channels(self) -> int:
        """Channels of :meth:`features`' output."""
        return self.head.feature_channels


def pyramid_source(channels: Mapping[int, int], target: int) -> int:
    """The pyramid stride DPT reads for ``target``: ``target`` itself if present, else the
    coarsest stride below it."""
    if target in channels:
        return target
    finer = [s for s in channels if s < target]
    if not finer:
        raise UserError(f"DPT: the encoder has no level at or below stride {target}")
    return max(finer)
