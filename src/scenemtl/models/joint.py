"""Joint architecture (Problem 1): everything shared but the output channels.

::

    x -> encoder -> ASPP -> decoder -> 1x1 conv (sum of the heads' channels, e.g. 19 + 1)
                       4x skip --^               -> split per task
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from scenemtl.models.base import MultiTaskNet, make_bottleneck, make_decoder

if TYPE_CHECKING:
    from scenemtl.models.config import ModelConfig


class JointNet(MultiTaskNet):
    """Shared encoder, ASPP and decoder; the decoder's last conv emits every task's
    channels (in ``heads`` order), split per task. One output per task.

    Shared representation: the decoder's features before its last conv,
    ``{"features": [B, C, H/4, W/4]}``; the last conv is the only task-specific layer
    (its output channels are partitioned among the tasks).
    """

    def __init__(self, cfg: ModelConfig, heads: Mapping[str, int]) -> None:
        super().__init__(cfg, heads)
        self.split_sizes = list(self.heads.values())
        self.aspp = make_bottleneck(cfg, self.encoder.channels[self.encoder.output_stride])
        self.decoder = make_decoder(cfg, self.encoder.channels, sum(self.split_sizes))

    def shared_forward(self, x: Tensor) -> dict[str, Tensor]:
        pyramid = self.encoder(x)
        bottleneck = self.aspp(pyramid[self.encoder.output_stride])
        return {"features": self.decoder.features(bottleneck, pyramid)}

    def shared_modules(self) -> list[nn.Module]:
        return [self.encoder, self.aspp, *self.decoder.feature_modules()]

    def decode(self, shared: dict[str, Tensor]) -> dict[str, list[Tensor]]:
        predictions = self.decoder.predict(shared["features"])
        parts = torch.split(predictions, self.split_sizes, dim=1)
        return {name: [p] for name, p in zip(self.heads, parts, strict=True)}
