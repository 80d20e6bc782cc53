"""MTI-Net (Vandenhende, Georgoulis, Van Gool, ECCV 2020) on the ResNet pyramid.

Task interactions differ per scale, so MTI-Net distills them at every scale of the
backbone: at each pyramid level s (4x, 8x, 16x, ... down to the output stride) every task
makes an initial prediction from the level's features and its own features propagated
from the coarser level, the tasks exchange features at that level (multi-modal
distillation), and each task aggregates its distilled features of all levels into the
final prediction::

    level os: ctx[t](B_os)            -> IPM[t] -> F_t^os -> initial_t^os
    level s:  [B_s, up(P_t^2s)]       -> IPM[t] -> F_t^s  -> initial_t^s
              P_t^s = FPM^s(F_u^s, all tasks u)[t]           (every level but the finest)
    D_t^s = F_t^s + sum_{u != t} SA[t][u]^s(F_u^s)           (every level)
    final_t = head[t](concat_s up_to_4x(D_t^s))

as in the authors' code (SimonVandenhende/Multi-Task-Learning-PyTorch, ``models/
mti_net.py``):

* ``IPM`` (initial prediction module, per task and level): two ResNet basic blocks to the
  feature width (the first with a 1x1 Conv-BN projection shortcut when its input is
  wider), then a 1x1 prediction conv.
* ``FPM`` (feature propagation module, per level): the tasks' features ``F_u^s``
  [B, C, h, w] are stacked into X [B, T, C, h, w]; a non-linear function (two basic
  blocks to T*C/4 channels, a 1x1 conv back to T*C) scores them, a softmax over the
  tasks turns the scores into per-channel, per-pixel weights (they sum to 1 over the
  tasks), the weighted features (T*C channels) are reduced to C by a basic block, and
  each task takes its own squeeze-and-excitation of the result plus its own features:
  ``P_t = SE_t(reduce(softmax_T(f(X)) * X)) + F_t``.
* ``SA`` the self-attention gates of PAD-Net; ``head`` the HRNet head: 1x1 Conv-BN-ReLU
  at the concatenated width, 1x1 prediction conv.

Features are ``channels // 4`` (64) wide at every level (HRNet-18's branches are 18, 36,
72 and 144 wide; ResNet levels are 64-2048).

Differences from the authors' code, each for a reason:

* backbone: the ResNet pyramid instead of HRNet-18, and the configured context module
  (ASPP, vortex or the 1x1 projection) per task at the coarsest level, where HRNet's
  lowest-resolution branch has no such module;
* the FPM softmax runs over the tasks for every channel. The authors' code views the
  task-major concatenation [B, T*C, h, w] as [B, C, T, h, w], so its softmax actually
  runs over T consecutive channels of that concatenation (mostly channels of one task);
  the module is described as weighting the tasks per channel, which is what is done here;
* convs followed by BatchNorm have no bias (the BatchNorm cancels it) and the
  self-attention gates start closed (as everywhere in this project);
* ``skip``, ``extra_skips`` and ``attention_skips`` do not apply: every level is used.

Outputs per task: the initial predictions from the coarsest level to 4x, then the final
one (:attr:`output_stages`, e.g. ``("initial_16x", "initial_8x", "initial_4x",
"final")`` at output stride 16).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, ClassVar

import torch
from torch import Tensor, nn

from scenemtl.models.base import MultiTaskNet, make_bottleneck
from scenemtl.models.blocks import ConvBnReLU, SelfAttention, SqueezeExcitation, resize
from scenemtl.models.encoders.resnet import BasicBlock

if TYPE_CHECKING:
    from scenemtl.models.config import ModelConfig


class InitialPrediction(nn.Module):
    """MTI-Net's initial prediction module for one task and level: two basic blocks
    (``cin`` -> ``width`` -> ``width``; projection shortcut when ``cin != width``), then
    a 1x1 conv to ``cout``.

    Shapes: [B, cin, h, w] -> (features [B, width, h, w], prediction [B, cout, h, w]).
    """

    def __init__(self, cin: int, width: int, cout: int) -> None:
        super().__init__()
        self.refine = nn.Sequential(BasicBlock(cin, width), BasicBlock(width, width))
        self.predict = nn.Conv2d(width, cout, 1)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        features = self.refine(x)
        return features, self.predict(features)


class FeaturePropagation(nn.Module):
    """MTI-Net's feature propagation module at one level (see the module docstring).

    Args:
        tasks: the task names, in the order their features are stacked.
        channels: C, every task's feature width.
        se_reduction: bottleneck ratio of the per-task squeeze-and-excitation.

    Shapes: ``{task: [B, C, h, w]}`` -> ``{task: [B, C, h, w]}``.
    """

    def __init__(self, tasks: Sequence[str], channels: int, se_reduction: int = 16) -> None:
        super().__init__()
        self.tasks = list(tasks)
        stacked = len(self.tasks) * channels
        hidden = max(stacked // 4, 1)
        self.score = nn.Sequential(
            BasicBlock(stacked, hidden), BasicBlock(hidden, hidden), nn.Conv2d(hidden, stacked, 1)
        )
        self.reduce = BasicBlock(stacked, channels)
        self.se = nn.ModuleDict({t: SqueezeExcitation(channels, se_reduction) for t in self.tasks})

    def task_weights(self, stacked: Tensor) -> Tensor:
        """Softmax over the tasks of the scores of ``stacked`` [B, T, C, h, w]: weights
        [B, T, C, h, w] that sum to 1 over T for every channel and pixel."""
        b, t, c, h, w = stacked.shape
        scores = self.score(stacked.reshape(b, t * c, h, w)).reshape(b, t, c, h, w)
        return torch.softmax(scores, dim=1)

    def forward(self, features: Mapping[str, Tensor]) -> dict[str, Tensor]:
        stacked = torch.stack([features[t] for t in self.tasks], dim=1)  # [B, T, C, h, w]
        weighted = (self.task_weights(stacked) * stacked).flatten(1, 2)
        mixed = self.reduce(weighted)
        return {t: self.se[t](mixed) + features[t] for t in self.tasks}


class MTINet(MultiTaskNet):
    """Shared encoder; per level and task an initial prediction, per level feature
    propagation and cross-task distillation, per task aggregation of all levels. See the
    module docstring.

    Module layout: ``context[t]`` (coarsest level), ``ipm[t][s]``, ``fpm[s]`` (all but
    the finest level), ``attention[s][t][u]``, ``head[t]``; ``s`` is the level as a
    string ("4", "8", ...).
    """

    min_tasks: ClassVar[int] = 2  # per-level distillation exchanges features between tasks

    def __init__(self, cfg: ModelConfig, heads: Mapping[str, int]) -> None:
        super().__init__(cfg, heads)
        enc = self.encoder
        self.levels = sorted(s for s in enc.channels if s >= 4)  # fine to coarse
        coarsest = self.levels[-1]
        # one initial output per level: the count depends on the dilation, so per instance
        self.output_stages = (*(f"initial_{s}x" for s in reversed(self.levels)), "final")
        w = max(cfg.channels // 4, 4)

        def ipm_input(s: int) -> int:
            # the coarsest level reads the context module; the others the encoder level
            # and the task's propagated features of the coarser level
            return cfg.channels if s == coarsest else enc.channels[s] + w

        self.context = nn.ModuleDict(
            {t: make_bottleneck(cfg, enc.channels[coarsest], t) for t in self.heads}
        )
        self.ipm = nn.ModuleDict(
            {
                t: nn.ModuleDict(
                    {str(s): InitialPrediction(ipm_input(s), w, c) for s in self.levels}
                )
                for t, c in self.heads.items()
            }
        )
        self.fpm = nn.ModuleDict(
            {
                str(s): FeaturePropagation(list(self.heads), w, cfg.se_reduction)
                for s in self.levels[1:]
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
        width = len(self.levels) * w
        self.head = nn.ModuleDict(
            {
                t: nn.Sequential(ConvBnReLU(width, width, 1), nn.Conv2d(width, c, 1))
                for t, c in self.heads.items()
            }
        )

    def decode(self, shared: dict[int, Tensor]) -> dict[str, list[Tensor]]:
        """From the encoder pyramid ``{scale: [B, C_s, H/s, W/s]}``: per task the initial
        predictions [B, C_t, H/s, W/s] from the coarsest level to 4x, then the final
        prediction [B, C_t, H/4, W/4]."""
        initials: dict[str, list[Tensor]] = {t: [] for t in self.heads}
        distilled: dict[str, list[Tensor]] = {t: [] for t in self.heads}
        propagated: dict[str, Tensor] | None = None  # the coarser level's FPM output
        for s in reversed(self.levels):
            key = str(s)
            size = shared[s].shape[-2:]
            features: dict[str, Tensor] = {}
            for t in self.heads:
                if propagated is None:
                    x = self.context[t](shared[s])
                else:
                    x = torch.cat([shared[s], resize(propagated[t], size)], dim=1)
                features[t], initial = self.ipm[t][key](x)
                initials[t].append(initial)
            for t in self.heads:
                d = features[t]
                for u, sa in self.attention[key][t].items():
                    d = d + sa(features[u])
                distilled[t].append(d)
            propagated = self.fpm[key](features) if key in self.fpm else None
        outputs: dict[str, list[Tensor]] = {}
        size4 = shared[self.levels[0]].shape[-2:]
        for t in self.heads:
            aggregated = torch.cat([resize(d, size4) for d in distilled[t]], dim=1)
            outputs[t] = [*initials[t], self.head[t](aggregated)]
        return outputs
