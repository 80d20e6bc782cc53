"""Joint architecture (Problem 1): everything shared but the output channels.

::

    x -> encoder -> ASPP -> decoder -> 1x1 conv (sum of the heads' channels, e.g. 19 + 1)
                       4x skip --^               -> split per task

With ``decoder: dpt`` the DPT head on the encoder pyramid replaces ASPP and decoder; its
last conv emits every task's channels.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, ClassVar

import torch
from torch import Tensor, nn

from scenemtl.models.base import MultiTaskNet, make_bottleneck, make_decoder, make_dpt_head

if TYPE_CHECKING:
    from scenemtl.models.blocks import DeepLabV3PlusDecoder
    from scenemtl.models.config import ModelConfig
    from scenemtl.models.dpt import DPTHead


class JointNet(MultiTaskNet):
    """Shared encoder, ASPP and decoder; the decoder's last conv emits every task's
    channels (in ``heads`` order), split per task. One output per task.

    Shared representation: the decoder's features before its last conv,
    ``{"features": [B, C, H/4, W/4]}`` (DPT: ``[B, 32, 4*ceil(H/4), 4*ceil(W/4)]`` for its
    depth head, ``[B, F, H/2, W/2]`` for its segmentation head); the last conv is the only
    task-specific layer (its output channels are partitioned among the tasks).
    """

    supports_dpt: ClassVar[bool] = True

    @classmethod
    def check_config(cls, cfg: ModelConfig) -> None:
        super().check_config(cfg)
        if cfg.decoder_for(None) == "dpt":  # one decoder: no per-task mapping
            cfg.decoder_config().head_for(None)

    def __init__(self, cfg: ModelConfig, heads: Mapping[str, int]) -> None:
        super().__init__(cfg, heads)
        self.split_sizes = list(self.heads.values())
        channels = self.encoder.channels
        self.decoder: DeepLabV3PlusDecoder | DPTHead
        if cfg.decoder_for(None) == "dpt":
            self.aspp = None
            self.decoder = make_dpt_head(cfg, channels, sum(self.split_sizes))
            self.always_resized = set(self.heads)
        else:
            self.aspp = make_bottleneck(cfg, channels[self.encoder.output_stride])
            self.decoder = make_decoder(cfg, channels, sum(self.split_sizes))

    def shared_forward(self, x: Tensor) -> dict[str, Tensor]:
        pyramid = self.encoder(x)
        if self.aspp is None:
            return {"features": self.decoder.features(pyramid)}  # type: ignore[call-arg]
        bottleneck = self.aspp(pyramid[self.encoder.output_stride])
        return {"features": self.decoder.features(bottleneck, pyramid)}

    def shared_modules(self) -> list[nn.Module]:
        context = [] if self.aspp is None else [self.aspp]
        return [self.encoder, *context, *self.decoder.feature_modules()]

    def decode(self, shared: dict[str, Tensor]) -> dict[str, list[Tensor]]:
        predictions = self.decoder.predict(shared["features"])
        parts = torch.split(predictions, self.split_sizes, dim=1)
        return {name: [p] for name, p in zip(self.heads, parts, strict=True)}
