"""Branched architecture (Problem 2): shared encoder, one ASPP and decoder per task.

::

    x -> encoder -+-> ASPP[semseg] -> decoder[semseg] -> semseg
                  +-> ASPP[depth]  -> decoder[depth]  -> depth
      (each decoder also reads the encoder's 4x features)

A task whose ``decoder`` is ``dpt`` has no ASPP: its DPT head reads the encoder pyramid.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, ClassVar

from torch import Tensor, nn

from scenemtl.models.base import MultiTaskNet, make_bottleneck, make_decoder, make_dpt_head

if TYPE_CHECKING:
    from scenemtl.models.config import ModelConfig


class BranchedNet(MultiTaskNet):
    """Shared encoder; ``aspp[task]`` and ``decoder[task]`` per task. One output per task."""

    supports_depth_bins: ClassVar[bool] = True
    supports_dpt: ClassVar[bool] = True

    def __init__(self, cfg: ModelConfig, heads: Mapping[str, int]) -> None:
        super().__init__(cfg, heads)
        channels = self.encoder.channels
        cin = channels[self.encoder.output_stride]
        dpt = {name for name in self.heads if cfg.decoder_for(name) == "dpt"}
        self.always_resized = dpt
        # only the DeepLabV3+ tasks have a context module (checkpoints keep their keys)
        self.aspp = nn.ModuleDict(
            {name: make_bottleneck(cfg, cin, name) for name in self.heads if name not in dpt}
        )
        self.decoder = nn.ModuleDict(
            {
                name: (make_dpt_head if name in dpt else make_decoder)(cfg, channels, c, name)
                for name, c in self.heads.items()
            }
        )

    def branch_outputs(self, pyramid: dict[int, Tensor]) -> dict[str, tuple[Tensor, Tensor]]:
        """Per task (predictions, decoder features before the last conv)."""
        bottleneck = pyramid[self.encoder.output_stride]
        outputs = {}
        for name in self.heads:
            decoder = self.decoder[name]
            if name in self.aspp:
                outputs[name] = decoder(self.aspp[name](bottleneck), pyramid)
            else:  # a DPT head reads the pyramid
                features = decoder.features(pyramid)
                outputs[name] = (decoder.predict(features), features)
        return outputs

    def decode(self, shared: dict[int, Tensor]) -> dict[str, list[Tensor]]:
        return {name: [pred] for name, (pred, _) in self.branch_outputs(shared).items()}
