"""Task distillation (Problem 3): branched, then features exchanged across tasks.

::

    x -> encoder -+-> ASPP[s] -> decoder[s] -> initial semseg,  F_s
                  +-> ASPP[d] -> decoder[d] -> initial depth,   F_d
    G_s = F_s + SA[s][d](F_d)  -> final_decoder[s] -> final semseg (prediction)
    G_d = F_d + SA[d][s](F_s)  -> final_decoder[d] -> final depth  (prediction)

``SA[t][u]`` is the self-attention that gates task u's features for task t; with more
tasks, task t sums the gated features of every other task.

``distill_alpha: true`` (report 000, after the Dual Attention Network's learned scale):
``G_s = F_s + alpha[s][d] * SA[s][d](F_d)`` with a learned scalar per (task, other task)
initialized at zero, so the final decoders start from the branch's own features and
take in the other task's only as far as training finds it useful.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import torch
from torch import Tensor, nn

from scenemtl.models.blocks import HeadDecoder, SelfAttention, resize
from scenemtl.models.branched import BranchedNet
from scenemtl.models.options import check_bool, check_int

if TYPE_CHECKING:
    from scenemtl.models.config import ModelConfig


@dataclass
class DistillationOptions:
    """Options of ``distillation`` (``model.net.options``; flat keys accepted).

    Attributes:
        final_decoder_convs: 3x3 convs in each final decoder (0..8).
        distill_alpha: scale each distilled feature map by a learned scalar initialized
            at zero (report 000, after the Dual Attention Network), so training starts
            from the branched network.
    """

    final_decoder_convs: int = 2
    distill_alpha: bool = False

    def __post_init__(self) -> None:
        check_int(self, "final_decoder_convs", 0, 8)
        check_bool(self, "distill_alpha")


class DistillationNet(BranchedNet):
    """Branched network plus cross-task self-attention and final per-task decoders.

    Outputs per task: ``[initial, final]`` (see :attr:`output_stages`); the initial
    predictions of the branched decoders are deep supervision, the final ones are the
    prediction.
    """

    supports_depth_bins: ClassVar[bool] = False  # its predictions come from the final decoders

    output_stages: ClassVar[tuple[str, ...]] = ("initial", "final")
    min_tasks: ClassVar[int] = 2  # distillation exchanges features between tasks
    Options: ClassVar[type] = DistillationOptions
    options: DistillationOptions

    def __init__(self, cfg: ModelConfig, heads: Mapping[str, int]) -> None:
        super().__init__(cfg, heads)
        feat = {name: dec.feature_channels for name, dec in self.decoder.items()}
        self.attention = nn.ModuleDict(
            {
                name: nn.ModuleDict(
                    {u: SelfAttention(feat[u], feat[name]) for u in feat if u != name}
                )
                for name in self.heads
            }
        )
        self.alpha: nn.ParameterDict | None = None
        if self.options.distill_alpha:
            # one scalar per (task, other task), in the order of attention[task]
            self.alpha = nn.ParameterDict(
                {name: nn.Parameter(torch.zeros(len(self.attention[name]))) for name in self.heads}
            )
        self.final_decoder = nn.ModuleDict(
            {
                name: HeadDecoder(
                    feat[name],
                    channels_out,
                    # same width as the features it refines (half width at 2x)
                    channels=feat[name],
                    n_convs=self.options.final_decoder_convs,
                    squeeze_excitation=cfg.squeeze_excitation,
                    se_reduction=cfg.se_reduction,
                )
                for name, channels_out in self.heads.items()
            }
        )

    def decode(self, shared: dict[int, Tensor]) -> dict[str, list[Tensor]]:
        branches = self.branch_outputs(shared)
        outputs: dict[str, list[Tensor]] = {}
        for name in self.heads:
            initial, features = branches[name]
            for i, (other, sa) in enumerate(self.attention[name].items()):
                # a DPT head's features can be finer than a DeepLabV3+ decoder's (stride 1
                # or 2 against 4): the other task's are brought to this task's grid
                distilled = sa(resize(branches[other][1], features.shape[-2:]))
                if self.alpha is not None:
                    distilled = self.alpha[name][i] * distilled
                features = features + distilled
            final, _ = self.final_decoder[name](features)
            outputs[name] = [initial, final]
        return outputs
