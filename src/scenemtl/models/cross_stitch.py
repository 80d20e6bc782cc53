"""Cross-stitch networks (Misra, Shrivastava, Gupta, Hebert, CVPR 2016) on a hierarchical
encoder (ResNet, ConvNeXt, Swin or MobileNetV3).

One encoder per task; after each of the four stages, a cross-stitch unit replaces every
task's activations by a learned linear combination of all tasks' activations::

    x -> stem[s] -> layer1[s] -+   +-> layer2[s] -+   +-> ... layer4[s] -+   +-> head[s]
                               | X |              | X |                  | X |
    x -> stem[d] -> layer1[d] -+   +-> layer2[d] -+   +-> ... layer4[d] -+   +-> head[d]

    head[t] = ASPP[t] -> decoder[t] (reading the mixed 4x features of task t)

    X (per channel c):  x'_t[c] = sum_u alpha_j[t, u, c] * x_u[c]

``alpha`` starts at 0.9 on the diagonal and shares 0.1 among the other tasks (the paper's
(alpha_S, alpha_D) = (0.9, 0.1) for two tasks), so training starts close to separate
networks. :class:`MixedTrunksNet` holds what cross-stitch and NDDR-CNN have in common; a
subclass only says how one stage's activations are mixed (:meth:`MixedTrunksNet.make_mixer`).

Training as in the authors' code (Vandenhende et al.'s survey code): the mixing
parameters (:meth:`MixedTrunksNet.mixing_parameters`) learn at 100x the base rate
(``mixing_lr_multiplier``; the paper scales it by 10^2-10^3), and each trunk can start
from a single-task run's encoder (``weights`` as a per-task mapping).

Differences from the paper: ResNet stages instead of AlexNet's pooling layers, one
coefficient per channel (the paper's channel-wise variant), DeepLabV3+ heads per task.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import torch
from torch import Tensor, nn

from scenemtl.models.base import (
    MultiTaskNet,
    make_bottleneck,
    make_decoder,
    make_encoder,
    task_key,
)
from scenemtl.models.encoders.base import HierarchicalEncoder
from scenemtl.models.options import check_positive_or_none

if TYPE_CHECKING:
    from scenemtl.models.config import ModelConfig


@dataclass
class MixedTrunksOptions:
    """Options of ``cross_stitch`` and ``nddr`` (``model.net.options``; the flat key is
    accepted).

    Attributes:
        mixing_lr_multiplier: learning rate of the mixing units (cross-stitch units, NDDR
            layers) as a multiple of the base rate; None = the authors' value (100,
            Vandenhende et al.'s code).
    """

    mixing_lr_multiplier: float | None = None

    def __post_init__(self) -> None:
        check_positive_or_none(self, "mixing_lr_multiplier")


class MixedTrunksNet(MultiTaskNet):
    """One ResNet per task, the tasks' activations mixed after each stage by
    ``mixers[j]`` ([T x [B, C_j, h, w]] -> [T x [B, C_j, h, w]]), then per-task ASPP and
    decoder on each task's mixed pyramid. One output per task.

    Sharing contract: no shared representation (each task reads its own mixed trunk);
    :meth:`shared_modules` holds every encoder and every mixer, since after the first
    mixing unit each encoder's parameters influence every task's loss.
    :meth:`shared_forward` returns the mixed pyramids ``{"task/scale": [B, C_s, H/s,
    W/s]}``; :meth:`decode` runs only the task-specific heads on them.
    """

    supports_depth_bins: ClassVar[bool] = True

    single_encoder: ClassVar[bool] = False
    has_shared_representation: ClassVar[bool] = False
    min_tasks: ClassVar[int] = 2  # mixing needs at least two networks
    # Vandenhende et al.'s code (utils/common_config.py get_optimizer) trains the
    # cross-stitch units and NDDR layers at 100x the base rate, with the same weight decay
    default_mixing_lr_multiplier: ClassVar[float] = 100.0
    needs_hierarchical_encoder: ClassVar[bool] = True
    Options: ClassVar[type] = MixedTrunksOptions
    options: MixedTrunksOptions

    def __init__(self, cfg: ModelConfig, heads: Mapping[str, int]) -> None:
        super().__init__(cfg, heads)
        self.encoders = nn.ModuleDict({name: make_encoder(cfg, name) for name in self.heads})
        first: HierarchicalEncoder = next(iter(self.encoders.values()))  # type: ignore[assignment]
        self.stem_stride = first.stem_stride
        self.stage_scales = list(first.stage_scales)
        self.output_stride = first.output_stride
        self.mixers = nn.ModuleList(
            self.make_mixer(len(self.heads), c) for c in first.stage_out_channels
        )
        cin = first.channels[self.output_stride]
        self.aspp = nn.ModuleDict({name: make_bottleneck(cfg, cin, name) for name in self.heads})
        self.decoder = nn.ModuleDict(
            {name: make_decoder(cfg, first.channels, c, name) for name, c in self.heads.items()}
        )

    def make_mixer(self, n_tasks: int, channels: int) -> nn.Module:
        """The unit mixing ``n_tasks`` activations of ``channels`` channels after a stage."""
        raise NotImplementedError

    def shared_forward(self, x: Tensor) -> dict[str, Tensor]:
        """Every task's mixed pyramid, keyed ``"task/scale"``: the task's own stem at its
        stride (2 for the ResNet), the mixed stage outputs at the stage scales (deepest
        per scale)."""
        names = list(self.heads)
        features: dict[str, Tensor] = {}
        hs = []
        for name in names:
            stem = self.encoders[name].stem(x)
            features[task_key(name, self.stem_stride)] = stem
            hs.append(stem)
        for j, (scale, mixer) in enumerate(zip(self.stage_scales, self.mixers, strict=True)):
            hs = [self.encoders[name].stage_blocks[j](h) for name, h in zip(names, hs, strict=True)]
            hs = mixer(hs)
            for name, h in zip(names, hs, strict=True):
                features[task_key(name, scale)] = h
        return features

    def shared_modules(self) -> list[nn.Module]:
        return [self.encoders, self.mixers]

    def mixing_parameters(self) -> list[nn.Parameter]:
        """Every parameter of the mixing units (cross-stitch ``alpha``; NDDR's 1x1 convs
        and their BatchNorms, as the authors' code selects them by module name)."""
        return [p for p in self.mixers.parameters() if p.requires_grad]

    @property
    def mixing_lr_multiplier(self) -> float:
        """The configured ``mixing_lr_multiplier``, or the authors' 100."""
        m = self.options.mixing_lr_multiplier
        return float(m) if m is not None else self.default_mixing_lr_multiplier

    def decode(self, shared: dict[str, Tensor]) -> dict[str, list[Tensor]]:
        """``{task: [[B, heads[task], H/4, W/4]]}``; task t reads only its ``"t/scale"``
        entries."""
        outputs: dict[str, list[Tensor]] = {}
        scales = [self.stem_stride, *self.stage_scales]
        for name in self.heads:
            pyramid = {s: shared[task_key(name, s)] for s in scales}
            bottleneck = self.aspp[name](pyramid[self.output_stride])
            prediction, _ = self.decoder[name](bottleneck, pyramid)
            outputs[name] = [prediction]
        return outputs


class CrossStitchUnit(nn.Module):
    """Per-channel linear mixing of T tasks' activations.

    ``alpha`` [T, T, C]: ``out_t = sum_u alpha[t, u] * x_u`` (per channel), initialized
    to ``same`` on the diagonal and ``(1 - same) / (T - 1)`` elsewhere, so every output
    starts as a convex combination dominated by its own task.

    Shapes: T tensors [B, C, H, W] -> T tensors [B, C, H, W].
    """

    def __init__(self, n_tasks: int, channels: int, same: float = 0.9) -> None:
        super().__init__()
        other = (1.0 - same) / max(n_tasks - 1, 1)
        init = torch.full((n_tasks, n_tasks), other)
        init.fill_diagonal_(same)
        self.alpha = nn.Parameter(init[:, :, None].repeat(1, 1, channels))

    def forward(self, xs: list[Tensor]) -> list[Tensor]:
        stacked = torch.stack(xs, dim=0)  # [T, B, C, H, W]
        mixed = torch.einsum("tuc,ubchw->tbchw", self.alpha, stacked)
        return list(mixed.unbind(0))


class CrossStitchNet(MixedTrunksNet):
    """Cross-stitch network: :class:`MixedTrunksNet` with :class:`CrossStitchUnit`s."""

    def make_mixer(self, n_tasks: int, channels: int) -> nn.Module:
        return CrossStitchUnit(n_tasks, channels)
