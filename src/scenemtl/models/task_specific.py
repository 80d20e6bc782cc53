"""Task-specific encoders (report 002): the "no sharing" end of the spectrum.

::

    x -+-> encoder[semseg] -> ASPP[semseg] -> decoder[semseg] -> semseg
       +-> encoder[depth]  -> ASPP[depth]  -> decoder[depth]  -> depth
       (each decoder reads the 4x skip of its own encoder)

One network holding a full DeepLabV3+ per task: the single-task baselines trained in one
run, at the same cost as training them separately. It bounds what sharing buys: compare a
shared architecture's Δm against this one at equal schedule.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, ClassVar

from torch import Tensor, nn

from scenemtl.models.base import (
    MultiTaskNet,
    make_bottleneck,
    make_decoder,
    make_dpt_head,
    make_encoder,
)

if TYPE_CHECKING:
    from scenemtl.models.config import ModelConfig


class TaskSpecificNet(MultiTaskNet):
    """``encoders[task]``, ``aspp[task]`` and ``decoder[task]`` per task; nothing shared.

    Sharing contract: no shared parameter (:meth:`shared_modules` is empty) and no shared
    representation; :meth:`shared_forward` passes the image through as ``{"image": x}``
    and :meth:`decode` runs every task's own network on it. One output per task.
    """

    supports_depth_bins: ClassVar[bool] = True
    supports_dpt: ClassVar[bool] = True

    single_encoder: ClassVar[bool] = False
    has_shared_representation: ClassVar[bool] = False

    def __init__(self, cfg: ModelConfig, heads: Mapping[str, int]) -> None:
        super().__init__(cfg, heads)
        self.encoders = nn.ModuleDict({name: make_encoder(cfg, name) for name in self.heads})
        first = next(iter(self.encoders.values()))
        self.output_stride = first.output_stride
        dpt = {name for name in self.heads if cfg.decoder_for(name) == "dpt"}
        self.always_resized = dpt
        # a task with the DPT head has no context module: the head reads the pyramid
        self.aspp = nn.ModuleDict(
            {
                name: make_bottleneck(cfg, first.channels[self.output_stride], name)
                for name in self.heads
                if name not in dpt
            }
        )
        self.decoder = nn.ModuleDict(
            {
                name: (make_dpt_head if name in dpt else make_decoder)(cfg, first.channels, c, name)
                for name, c in self.heads.items()
            }
        )

    def shared_forward(self, x: Tensor) -> dict[str, Tensor]:
        """Nothing is shared: ``{"image": x}`` with x [B, 3, H, W] unchanged."""
        return {"image": x}

    def shared_modules(self) -> list[nn.Module]:
        return []

    def decode(self, shared: dict[str, Tensor]) -> dict[str, list[Tensor]]:
        """Every task's own encoder, ASPP and decoder on ``shared["image"]``
        [B, 3, H, W] -> ``{task: [[B, heads[task], H/4, W/4]]}`` (H/os without skip)."""
        x = shared["image"]
        outputs: dict[str, list[Tensor]] = {}
        for name in self.heads:
            pyramid = self.encoders[name](x)
            if name not in self.aspp:  # the DPT head
                outputs[name] = [self.decoder[name](pyramid)]
                continue
            bottleneck = self.aspp[name](pyramid[self.output_stride])
            prediction, _ = self.decoder[name](bottleneck, pyramid)
            outputs[name] = [prediction]
        return outputs
