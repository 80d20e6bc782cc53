"""PAD-Net (Xu, Ouyang, Wang, Sebe, CVPR 2018) on the ResNet pyramid.

Prediction-and-distillation: every task first predicts from the bottleneck ("deep
multimodal auxiliary predictions"), then the tasks' intermediate features are exchanged
through attention-gated message passing (the paper's distillation module C) *before* the
decoders, and each task's decoder turns the distilled features into the final prediction::

    x -> encoder -+-> ASPP[s] -> F_s -> 1x1 -> initial semseg  (at the output stride)
                  +-> ASPP[d] -> F_d -> 1x1 -> initial depth
    G_s = F_s + SA[s][d](F_d) -> decoder[s] (+ 4x skip) -> final semseg
    G_d = F_d + SA[d][s](F_s) -> decoder[d] (+ 4x skip) -> final depth

Where the course's ``distillation`` exchanges the decoders' 4x features and adds a second
decoder, PAD-Net exchanges the coarse features at the output stride (16x cheaper per
exchange) and decodes once.

Differences from the paper: the paper's intermediate tasks include auxiliary ones (depth,
normals, contours, semantics) and its decoder is a few deconvolutions; here the
intermediate tasks are the run's own tasks, the intermediate heads sit on per-task ASPP
modules and the final decoder is DeepLabV3+. ``distill_alpha`` does not apply.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, ClassVar

from torch import Tensor, nn

from scenemtl.models.base import MultiTaskNet, make_bottleneck, make_decoder
from scenemtl.models.blocks import SelfAttention

if TYPE_CHECKING:
    from scenemtl.models.config import ModelConfig


class PADNet(MultiTaskNet):
    """Shared encoder; per task an ASPP with an intermediate 1x1 prediction, gated
    features from every other task added at the output stride, and a DeepLabV3+ decoder.

    Outputs per task: ``[initial, final]`` (initial at the output stride, final at 4x,
    both resized to the input); the final one is the prediction.
    """

    supports_depth_bins: ClassVar[bool] = True

    output_stages: ClassVar[tuple[str, ...]] = ("initial", "final")
    min_tasks: ClassVar[int] = 2  # distillation exchanges features between tasks

    def __init__(self, cfg: ModelConfig, heads: Mapping[str, int]) -> None:
        super().__init__(cfg, heads)
        enc = self.encoder
        cin = enc.channels[enc.output_stride]
        width = cfg.channels
        self.aspp = nn.ModuleDict({name: make_bottleneck(cfg, cin, name) for name in self.heads})
        self.initial = nn.ModuleDict(
            {name: nn.Conv2d(width, c, 1) for name, c in self.heads.items()}
        )
        self.attention = nn.ModuleDict(
            {
                name: nn.ModuleDict(
                    {u: SelfAttention(width, width) for u in self.heads if u != name}
                )
                for name in self.heads
            }
        )
        self.decoder = nn.ModuleDict(
            {name: make_decoder(cfg, enc.channels, c, name) for name, c in self.heads.items()}
        )

    def decode(self, shared: dict[int, Tensor]) -> dict[str, list[Tensor]]:
        """From the encoder pyramid ``{scale: [B, C_s, H/s, W/s]}``: per task
        ``[initial [B, C_t, H/os, W/os], final [B, C_t, H/4, W/4]]``."""
        bottleneck = shared[self.encoder.output_stride]
        features = {name: self.aspp[name](bottleneck) for name in self.heads}
        outputs: dict[str, list[Tensor]] = {}
        for name in self.heads:
            distilled = features[name]
            for other, sa in self.attention[name].items():
                distilled = distilled + sa(features[other])
            final, _ = self.decoder[name](distilled, shared)
            outputs[name] = [self.initial[name](features[name]), final]
        return outputs
