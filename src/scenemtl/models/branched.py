"""Branched architecture (Problem 2): shared encoder, one ASPP and decoder per task.

::

    x -> encoder -+-> ASPP[semseg] -> decoder[semseg] -> semseg
                  +-> ASPP[depth]  -> decoder[depth]  -> depth
      (each decoder also reads the encoder's 4x features)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, ClassVar

from torch import Tensor, nn

from scenemtl.models.base import MultiTaskNet, make_bottleneck, make_decoder

if TYPE_CHECKING:
    from scenemtl.models.config import ModelConfig


class BranchedNet(MultiTaskNet):
    """Shared encoder; ``aspp[task]`` and ``decoder[task]`` per task. One output per task."""

    supports_depth_bins: ClassVar[bool] = True

    def __init__(self, cfg: ModelConfig, heads: Mapping[str, int]) -> None:
        super().__init__(cfg, heads)
        cin = self.encoder.channels[self.encoder.output_stride]
        self.aspp = nn.ModuleDict({name: make_bottleneck(cfg, cin, name) for name in self.heads})
        self.decoder = nn.ModuleDict(
            {
                name: make_decoder(cfg, self.encoder.channels, c, name)
                for name, c in self.heads.items()
            }
        )

    def branch_outputs(self, pyramid: dict[int, Tensor]) -> dict[str, tuple[Tensor, Tensor]]:
        """Per task (predictions, decoder features before the last conv)."""
        bottleneck = pyramid[self.encoder.output_stride]
        return {
            name: self.decoder[name](self.aspp[name](bottleneck), pyramid) for name in self.heads
        }

    def decode(self, shared: dict[int, Tensor]) -> dict[str, list[Tensor]]:
        return {name: [pred] for name, (pred, _) in self.branch_outputs(shared).items()}
