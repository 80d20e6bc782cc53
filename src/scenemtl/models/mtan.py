"""Multi-task attention network, MTAN (Liu, Johns, Davison, CVPR 2019), on the ResNet.

One shared encoder; every task owns a soft attention mask per encoder stage that picks,
channel by channel and pixel by pixel, what it takes from the shared features::

    shared:   stem -> layer1 -----------> layer2 -----------> layer3 -----------> layer4
                      | u1  p1             | u2  p2            | u3  p3            | u4  p4
    task t:         m1 = g1(u1)   m2 = g2([u2, f1(a1)])  m3 = g3([u3, f2(a2)])  m4 = ...
                    a1 = m1 * p1  a2 = m2 * p2           a3 = m3 * p3           a4 = m4 * p4
              pyramid_t = {2: stem, 4: a1, 8: a2, 16: a3, 32: a4} -> ASPP[t] -> decoder[t]

``u_j`` is the output of stage j's second-to-last block, ``p_j`` that of its last block
(the paper's "last layer of the block" and the layer before it); ``g_j`` is 1x1
Conv-BN-ReLU to a quarter width, 1x1 Conv-BN, sigmoid; ``f_j`` a 3x3 Conv-BN-ReLU to the
next stage's width followed by 2x max pooling when that stage is strided.

Differences from the paper: the paper's networks are SegNet / a wide ResNet with their own
decoders, here the attended pyramid feeds each task's DeepLabV3+ head (ASPP + skip
decoder), as in the branched architecture; and ``f_j`` is per task (the paper shares its
weights across tasks) so that the shared encoder's features are the single
representation every task reads and all attention parameters are task-specific.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from scenemtl.models.base import MultiTaskNet, make_bottleneck, make_decoder
from scenemtl.models.blocks import ConvBnReLU

if TYPE_CHECKING:
    from scenemtl.models.registry import ModelConfig


class AttentionMask(nn.Module):
    """MTAN's ``g``: 1x1 Conv-BN-ReLU to ``hidden``, 1x1 Conv-BN to ``cout``, sigmoid.

    Shapes: [B, cin, H, W] -> [B, cout, H, W] with values in (0, 1).
    """

    def __init__(self, cin: int, hidden: int, cout: int) -> None:
        super().__init__()
        self.reduce = ConvBnReLU(cin, hidden, 1)
        self.expand = nn.Sequential(nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: Tensor) -> Tensor:
        return torch.sigmoid(self.expand(self.reduce(x)))


class MTANNet(MultiTaskNet):
    """Shared ResNet encoder, per-task attention masks at its four stages, per-task ASPP
    and decoder on the attended pyramid. One output per task.

    Shared representation (:meth:`shared_forward`): the encoder's features
    ``{"stem": [B, 64, H/2, W/2], "u1": ..., "p1": ..., ..., "u4": ..., "p4": ...}``
    where ``u_j``/``p_j`` are [B, C_j, H/s_j, W/s_j] (``C_j`` from the encoder's stage
    widths, ``s_j`` its stage scales). Everything after it belongs to one task.
    """

    supports_depth_bins: ClassVar[bool] = True

    def __init__(self, cfg: ModelConfig, heads: Mapping[str, int] | None = None) -> None:
        super().__init__(cfg, heads)
        enc = self.encoder
        widths = enc.stage_out_channels
        self.stage_scales = list(enc.stage_scales)
        n = len(widths)

        def masks() -> nn.ModuleList:
            # stage 1 sees u1 only; later stages also the previous attended features
            return nn.ModuleList(
                AttentionMask(c if j == 0 else 2 * c, max(c // 4, 1), c)
                for j, c in enumerate(widths)
            )

        def carries() -> nn.ModuleList:
            return nn.ModuleList(ConvBnReLU(widths[j], widths[j + 1], 3) for j in range(n - 1))

        self.attention = nn.ModuleDict({name: masks() for name in self.heads})
        self.carry = nn.ModuleDict({name: carries() for name in self.heads})
        cin = enc.channels[enc.output_stride]
        self.aspp = nn.ModuleDict({name: make_bottleneck(cfg, cin, name) for name in self.heads})
        self.decoder = nn.ModuleDict(
            {name: make_decoder(cfg, enc.channels, c, name) for name, c in self.heads.items()}
        )

    def shared_forward(self, x: Tensor) -> dict[str, Tensor]:
        """The shared encoder's stem and, per stage j = 1..4, ``u_j`` (before the last
        block) and ``p_j`` (the stage's output); see the class docstring for shapes."""
        enc = self.encoder
        stem = enc.stem(x)
        features = {"stem": stem}
        h = enc.maxpool(stem)
        for j, stage in enumerate(enc.stages, 1):
            # every stage has at least two blocks in ResNet-18..101
            u = stage[:-1](h)
            h = stage[-1](u)
            features[f"u{j}"] = u
            features[f"p{j}"] = h
        return features

    def attended_pyramid(self, name: str, shared: Mapping[str, Tensor]) -> dict[int, Tensor]:
        """Task ``name``'s pyramid ``{scale: [B, C_s, H/s, W/s]}``: the shared stem at
        key 2 and the attended stage outputs, deepest stage per scale (as the encoder)."""
        pyramid = {2: shared["stem"]}
        previous: Tensor | None = None
        masks, carries = self.attention[name], self.carry[name]
        for j, scale in enumerate(self.stage_scales):
            u, p = shared[f"u{j + 1}"], shared[f"p{j + 1}"]
            if previous is None:
                mask = masks[j](u)
            else:
                if previous.shape[-2:] != u.shape[-2:]:
                    # strided stage: halve like the encoder's stride-2 convs (ceil)
                    previous = F.max_pool2d(previous, 2, 2, ceil_mode=True)
                mask = masks[j](torch.cat([u, previous], dim=1))
            attended = mask * p
            pyramid[scale] = attended
            if j < len(carries):
                previous = carries[j](attended)
        return pyramid

    def decode(self, shared: dict[str, Tensor]) -> dict[str, list[Tensor]]:
        """``{task: [[B, heads[task], H/4, W/4]]}`` from the shared encoder features."""
        outputs: dict[str, list[Tensor]] = {}
        for name in self.heads:
            pyramid = self.attended_pyramid(name, shared)
            bottleneck = self.aspp[name](pyramid[self.encoder.output_stride])
            prediction, _ = self.decoder[name](bottleneck, pyramid)
            outputs[name] = [prediction]
        return outputs
