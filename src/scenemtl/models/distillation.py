"""Task distillation (Problem 3): branched, then features exchanged across tasks.

::

    x -> encoder -+-> ASPP[s] -> decoder[s] -> initial semseg,  F_s
                  +-> ASPP[d] -> decoder[d] -> initial depth,   F_d
    G_s = F_s + SA[s][d](F_d)  -> final_decoder[s] -> final semseg (prediction)
    G_d = F_d + SA[d][s](F_s)  -> final_decoder[d] -> final depth  (prediction)

``SA[t][u]`` is the self-attention that gates task u's features for task t; with more
tasks, task t sums the gated features of every other task.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from torch import Tensor, nn

from scenemtl.models.blocks import HeadDecoder, SelfAttention
from scenemtl.models.branched import BranchedNet
from scenemtl.tasks import TASKS

if TYPE_CHECKING:
    from scenemtl.models.registry import ModelConfig


class DistillationNet(BranchedNet):
    """Branched network plus cross-task self-attention and final per-task decoders.

    Outputs per task: ``[initial, final]`` (see :attr:`output_stages`); the initial
    predictions of the branched decoders are deep supervision, the final ones are the
    prediction.
    """

    output_stages: ClassVar[tuple[str, ...]] = ("initial", "final")

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__(cfg)
        feat = {name: dec.feature_channels for name, dec in self.decoder.items()}
        self.attention = nn.ModuleDict(
            {
                t.name: nn.ModuleDict(
                    {u: SelfAttention(feat[u], feat[t.name]) for u in feat if u != t.name}
                )
                for t in TASKS
            }
        )
        self.final_decoder = nn.ModuleDict(
            {
                t.name: HeadDecoder(
                    feat[t.name],
                    t.channels,
                    # same width as the features it refines (half width at 2x)
                    channels=feat[t.name],
                    n_convs=cfg.final_decoder_convs,
                    squeeze_excitation=cfg.squeeze_excitation,
                    se_reduction=cfg.se_reduction,
                )
                for t in TASKS
            }
        )

    def decode(self, pyramid: dict[int, Tensor]) -> dict[str, list[Tensor]]:
        branches = self.branch_outputs(pyramid)
        outputs: dict[str, list[Tensor]] = {}
        for t in TASKS:
            initial, features = branches[t.name]
            for other, sa in self.attention[t.name].items():
                features = features + sa(branches[other][1])
            final, _ = self.final_decoder[t.name](features)
            outputs[t.name] = [initial, final]
        return outputs
