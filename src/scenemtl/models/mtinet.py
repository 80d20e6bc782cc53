"""MTI-Net (Vandenhende, Georgoulis, Van Gool, ECCV 2020) on the ResNet pyramid.

Task interactions differ per scale, so MTI-Net distills them at every scale of the
backbone: at each pyramid level s (4x, 8x, 16x, ... down to the output stride) every task
makes an initial prediction from the level's features and the task features propagated
from the coarser level; the tasks then exchange features at that level (multi-modal
distillation), and each task aggregates its distilled features of all levels into the
final prediction::

    level os: B_os -> ctx[t] -> IPM[t] -> F_t^os -> initial_t^os
    level s:  [reduce[t](B_s), FPM[t](up(F_u^2s), all tasks u)] -> IPM[t] -> F_t^s -> initial_t^s
    D_t^s = F_t^s + sum_{u != t} SA[t][u]^s(F_u^s)                      (every level)
    final_t = head[t](concat_s up_to_4x(D_t^s))

``IPM`` (initial prediction module) is two 3x3 Conv-BN-ReLU then a 1x1 prediction conv;
``FPM`` (feature propagation) a 1x1 Conv-BN-ReLU over the upsampled features of all
tasks; ``ctx`` the configured context module (ASPP, vortex or the 1x1 projection) and a
1x1 reduction. Features are ``channels // 4`` wide at every level (MTI-Net's HRNet
branches are 18-144 wide; 256 at 4x would cost ~5 GMAC per conv at 256x512).

Differences from the paper: the backbone is the ResNet pyramid instead of HRNet-18; the
paper's FPM combines all tasks' features and splits them again with per-task
squeeze-and-excitation, here one 1x1 conv per task does both; no ASPP-free variant
(``aspp: false`` gives the 1x1 projection). ``skip``, ``extra_skips`` and
``attention_skips`` do not apply: every level is always used.

Outputs per task: the initial predictions from the coarsest level to 4x, then the final
one (:attr:`output_stages`, e.g. ``("initial_16x", "initial_8x", "initial_4x",
"final")`` at output stride 16).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, ClassVar

import torch
from torch import Tensor, nn

from scenemtl.models.base import MultiTaskNet, make_bottleneck
from scenemtl.models.blocks import ConvBnReLU, SelfAttention, resize

if TYPE_CHECKING:
    from scenemtl.models.registry import ModelConfig


class MTINet(MultiTaskNet):
    """Shared encoder; per level and task an initial prediction, per level cross-task
    distillation, per task aggregation of all levels. See the module docstring.

    Module layout: ``reduce[t][s]``, ``propagate[t][s]`` (all but the coarsest level),
    ``ipm[t][s]``, ``initial[t][s]``, ``attention[s][t][u]``, ``head[t]``; ``s`` is the
    level as a string ("4", "8", ...).
    """

    min_tasks: ClassVar[int] = 2  # per-level distillation exchanges features between tasks

    def __init__(self, cfg: ModelConfig, heads: Mapping[str, int] | None = None) -> None:
        super().__init__(cfg, heads)
        enc = self.encoder
        self.levels = sorted(s for s in enc.channels if s >= 4)  # fine to coarse
        coarsest = self.levels[-1]
        # one initial output per level: the count depends on the dilation, so per instance
        self.output_stages = (*(f"initial_{s}x" for s in reversed(self.levels)), "final")
        w = max(cfg.channels // 4, 4)
        n = len(self.heads)

        def reduce(name: str, s: int) -> nn.Module:
            if s == coarsest:
                return nn.Sequential(
                    make_bottleneck(cfg, enc.channels[s], name), ConvBnReLU(cfg.channels, w, 1)
                )
            return ConvBnReLU(enc.channels[s], w, 1)

        self.reduce = nn.ModuleDict(
            {t: nn.ModuleDict({str(s): reduce(t, s) for s in self.levels}) for t in self.heads}
        )
        self.propagate = nn.ModuleDict(
            {
                t: nn.ModuleDict({str(s): ConvBnReLU(n * w, w, 1) for s in self.levels[:-1]})
                for t in self.heads
            }
        )
        self.ipm = nn.ModuleDict(
            {
                t: nn.ModuleDict(
                    {
                        str(s): nn.Sequential(
                            ConvBnReLU(w if s == coarsest else 2 * w, w, 3), ConvBnReLU(w, w, 3)
                        )
                        for s in self.levels
                    }
                )
                for t in self.heads
            }
        )
        self.initial = nn.ModuleDict(
            {
                t: nn.ModuleDict({str(s): nn.Conv2d(w, c, 1) for s in self.levels})
                for t, c in self.heads.items()
            }
        )
        self.attention = nn.ModuleDict(
            {
                str(s): nn.ModuleDict(
                    {
                        t: nn.ModuleDict({u: SelfAttention(w, w) for u in self.heads if u != t})
                        for t in self.heads
                    }
                )
                for s in self.levels
            }
        )
        self.head = nn.ModuleDict(
            {
                t: nn.Sequential(ConvBnReLU(len(self.levels) * w, w, 3), nn.Conv2d(w, c, 1))
                for t, c in self.heads.items()
            }
        )

    def decode(self, shared: dict[int, Tensor]) -> dict[str, list[Tensor]]:
        """From the encoder pyramid ``{scale: [B, C_s, H/s, W/s]}``: per task the initial
        predictions [B, C_t, H/s, W/s] from the coarsest level to 4x, then the final
        prediction [B, C_t, H/4, W/4]."""
        initials: dict[str, list[Tensor]] = {t: [] for t in self.heads}
        distilled: dict[str, list[Tensor]] = {t: [] for t in self.heads}
        coarser: dict[str, Tensor] | None = None
        for s in reversed(self.levels):
            key = str(s)
            size = shared[s].shape[-2:]
            features: dict[str, Tensor] = {}
            if coarser is not None:
                # every task's coarser features, at this level's size, for the FPMs
                carried = torch.cat([resize(coarser[t], size) for t in self.heads], dim=1)
            for t in self.heads:
                x = self.reduce[t][key](shared[s])
                if coarser is not None:
                    x = torch.cat([x, self.propagate[t][key](carried)], dim=1)
                features[t] = self.ipm[t][key](x)
                initials[t].append(self.initial[t][key](features[t]))
            for t in self.heads:
                d = features[t]
                for u, sa in self.attention[key][t].items():
                    d = d + sa(features[u])
                distilled[t].append(d)
            coarser = features
        outputs: dict[str, list[Tensor]] = {}
        size4 = shared[self.levels[0]].shape[-2:]
        for t in self.heads:
            aggregated = torch.cat([resize(d, size4) for d in distilled[t]], dim=1)
            outputs[t] = [*initials[t], self.head[t](aggregated)]
        return outputs
