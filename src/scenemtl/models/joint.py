"""Joint architecture (Problem 1): everything shared but the output channels.

::

    x -> encoder -> ASPP -> decoder -> 1x1 conv (sum of the heads' channels, e.g. 19 + 1)
                       4x skip --^               -> split per task
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from scenemtl.models.base import MultiTaskNet, make_bottleneck, make_decoder

if TYPE_CHECKING:
    from scenemtl.models.registry import ModelConfig


class JointNet(MultiTaskNet):
    """Shared encoder, ASPP and decoder; the decoder's last conv emits every task's
    channels (in ``heads`` order), split per task. One output per task."""

    def __init__(self, cfg: ModelConfig, heads: Mapping[str, int] | None = None) -> None:
        super().__init__(cfg, heads)
        self.split_sizes = list(self.heads.values())
        self.aspp = make_bottleneck(cfg, self.encoder.channels[self.encoder.output_stride])
        self.decoder = make_decoder(cfg, self.encoder.channels, sum(self.split_sizes))

    def decode(self, pyramid: dict[int, Tensor]) -> dict[str, list[Tensor]]:
        bottleneck = self.aspp(pyramid[self.encoder.output_stride])
        predictions, _ = self.decoder(bottleneck, pyramid)
        parts = torch.split(predictions, self.split_sizes, dim=1)
        return {name: [p] for name, p in zip(self.heads, parts, strict=True)}
