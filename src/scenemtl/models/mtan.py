"""Multi-task attention network, MTAN (Liu, Johns, Davison, CVPR 2019), on a hierarchical
encoder (the ResNet, as the authors' ResNet version; also ConvNeXt, Swin, MobileNetV3).

One shared encoder; every task owns a soft attention mask per encoder stage that picks,
channel by channel and pixel by pixel, what it takes from the shared features::

    shared:   stem -> layer1 -----------> layer2 -----------> layer3 -----------> layer4
                      | u1  p1             | u2  p2            | u3  p3            | u4  p4
    task t:         m1 = g1(u1)   m2 = g2([u2, f1(a1)])  m3 = g3([u3, f2(a2)])  m4 = ...
                    a1 = m1 * p1  a2 = m2 * p2           a3 = m3 * p3           a4 = m4 * p4
              pyramid_t = {2: stem, 4: a1, 8: a2, 16: a3, 32: a4} -> ASPP[t] -> decoder[t]

``u_j`` is the output of stage j's second-to-last block, ``p_j`` that of its last block
(the paper's "last layer of the block" and the layer before it; ``g_j`` reads ``u_j``'s
channels, which differ from ``p_j``'s only in MobileNetV3's last stage, 160 vs 960); ``g_j`` is 1x1
Conv-BN-ReLU to a quarter width, 1x1 Conv-BN, sigmoid; ``f_j`` (the authors' refinement
block) a residual bottleneck block from stage j's width to stage j+1's (1x1 to a quarter
of the output width, 3x3, 1x1 to the output width; 1x1 Conv-BN projection shortcut),
followed by 2x max pooling when stage j+1 is strided. This is the block of the authors'
ResNet MTAN (lorenmt/mtan ``im2im_pred/model_resnet_mtan``) and of Vandenhende et al.'s
re-implementation, on every ResNet depth.

``f_j`` is shared by all tasks, as the authors build it (``mtan_refinement: shared``), or
one per task (``per_task``), which keeps the encoder's features the single representation
every task reads.

Differences from the paper: the paper's networks are SegNet / a wide ResNet with their own
decoders (the authors' ResNet version uses a DeepLabV3 head on ``a4``); here the attended
pyramid feeds each task's DeepLabV3+ head (ASPP + skip decoder), as in the branched
architecture. The authors' convs in ``g_j`` carry a bias before their BatchNorm, which the
BatchNorm cancels; here they have none (``c/4 + c`` parameters fewer per mask).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import torch
from torch import Tensor, nn

from scenemtl.errors import UserError
from scenemtl.models.base import MultiTaskNet, make_bottleneck, make_decoder, task_key
from scenemtl.models.blocks import ConvBnReLU
from scenemtl.models.encoders.base import HierarchicalEncoder
from scenemtl.models.encoders.parts import max_pool_2x2_ceil
from scenemtl.models.encoders.resnet import Bottleneck
from scenemtl.models.options import check_choice

if TYPE_CHECKING:
    from scenemtl.models.config import ModelConfig

MTAN_REFINEMENTS = ("shared", "per_task")
"""Whether MTAN's refinement blocks ``f_j`` are shared by the tasks (the authors') or
one per task (``mtan_refinement``)."""

REFINED = "refined"
"""Key suffix of a task's refined features ``f_{n-1}(a_{n-1})`` in the shared dict."""


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


def refinement_block(cin: int, cout: int) -> Bottleneck:
    """MTAN's ``f``: a ResNet bottleneck block of width ``cout // 4`` (so its output is
    ``cout`` wide) with a 1x1 Conv-BN projection shortcut, stride 1; PyTorch's default
    initialization (the authors build it fresh, without zeroing its last BatchNorm).

    Shapes: [B, cin, H, W] -> [B, cout, H, W].
    """
    if cout % Bottleneck.expansion:
        raise UserError(
            f"mtan's refinement blocks need stage widths that are multiples of 4, got {cout} "
            "(model.net.encoder_width: use an even width)"
        )
    return Bottleneck(cin, cout // Bottleneck.expansion)


@dataclass
class MTANOptions:
    """Options of ``mtan`` (``model.net.options``; the flat key is accepted).

    Attributes:
        mtan_refinement: the refinement blocks ``f_j``: "shared" by the tasks (the
            authors') or "per_task" (then the encoder's features are the one shared
            representation, as representation-level balancing needs).
    """

    mtan_refinement: str = "shared"

    def __post_init__(self) -> None:
        check_choice(self, "mtan_refinement", MTAN_REFINEMENTS)


class MTANNet(MultiTaskNet):
    """Shared ResNet encoder, per-task attention masks at its four stages, per-task ASPP
    and decoder on the attended pyramid. One output per task.

    Sharing contract, ``mtan_refinement: per_task``: :meth:`shared_forward` is the
    encoder's features :meth:`stage_features` (one representation all tasks read), and
    everything after it belongs to one task.

    ``mtan_refinement: shared`` (the authors'): the refinement blocks ``f_1..f_{n-1}``
    act on every task's attended features, so the cut between shared and task-specific
    computation lies after the last of them. :meth:`shared_forward` then returns the
    encoder's stem and last stage ``{"stem", "u<n>", "p<n>"}`` plus, per task, its attended
    features of the earlier stages ``"task/scale"`` and ``"task/refined"`` =
    ``f_{n-1}(a_{n-1})``; :meth:`shared_modules` holds the encoder, the refinement blocks
    and the masks ``g_1..g_{n-1}`` of every task (they run before the cut, so the
    gradient-level methods must reach them through it); no single shared representation.
    """

    supports_depth_bins: ClassVar[bool] = True
    needs_hierarchical_encoder: ClassVar[bool] = True
    Options: ClassVar[type] = MTANOptions
    options: MTANOptions
    encoder: HierarchicalEncoder

    def __init__(self, cfg: ModelConfig, heads: Mapping[str, int]) -> None:
        super().__init__(cfg, heads)
        enc = self.encoder
        widths = enc.stage_out_channels
        self.stage_scales = list(enc.stage_scales)
        n = len(widths)
        self.shared_refinement = self.options.mtan_refinement == "shared"
        # per instance: the option decides whether the encoder output is all tasks read
        self.has_shared_representation = not self.shared_refinement  # type: ignore[misc]

        inner = enc.stage_inner_channels  # u_j's channels (MobileNetV3's last: 160 < 960)

        def masks() -> nn.ModuleList:
            # stage 1 sees u1 only; later stages also the previous refined features
            return nn.ModuleList(
                AttentionMask(inner[j] + (c if j else 0), max(c // 4, 1), c)
                for j, c in enumerate(widths)
            )

        def refinements() -> nn.ModuleList:
            return nn.ModuleList(refinement_block(widths[j], widths[j + 1]) for j in range(n - 1))

        self.attention = nn.ModuleDict({name: masks() for name in self.heads})
        self.refine: nn.Module = (
            refinements()
            if self.shared_refinement
            else nn.ModuleDict({name: refinements() for name in self.heads})
        )
        cin = enc.channels[enc.output_stride]
        self.aspp = nn.ModuleDict({name: make_bottleneck(cfg, cin, name) for name in self.heads})
        self.decoder = nn.ModuleDict(
            {name: make_decoder(cfg, enc.channels, c, name) for name, c in self.heads.items()}
        )

    def stage_features(self, x: Tensor) -> dict[str, Tensor]:
        """The shared encoder's stem and, per stage j = 1..n, ``u_j`` (before the last
        block) and ``p_j`` (the stage's output): ``{"stem": [B, C, H/s, W/s] (ResNet: 64
        at s = 2), "u1": ..., "p1": ..., ...}`` with ``u_j``/``p_j`` [B, C_j, H/s_j, W/s_j]
        (``C_j`` the stage widths, ``s_j`` the stage scales of the encoder)."""
        enc = self.encoder
        stem = enc.stem(x)
        features = {"stem": stem}
        h = stem
        for j, stage in enumerate(enc.stage_blocks, 1):
            # the protocol promises at least two modules per stage
            u = stage[:-1](h)
            h = stage[-1](u)
            features[f"u{j}"] = u
            features[f"p{j}"] = h
        return features

    def refinement(self, name: str, j: int) -> nn.Module:
        """``f_{j+1}`` as task ``name`` applies it (the shared one or the task's own)."""
        refine = self.refine if self.shared_refinement else self.refine[name]  # type: ignore[index]
        return refine[j]  # type: ignore[index]

    def attend_stages(
        self,
        name: str,
        features: Mapping[str, Tensor],
        stages: range,
        previous: Tensor | None = None,
    ) -> tuple[dict[int, Tensor], Tensor | None]:
        """Task ``name``'s attention chain over the 0-based ``stages``, starting from the
        refined features ``previous`` of the stage before (None for stage 0).

        Returns the attended stage outputs ``{scale: [B, C_j, H/s_j, W/s_j]}`` (the
        deepest per scale, as the encoder's pyramid) and ``f_j(a_j)`` of the last stage
        run, None after the network's last stage.
        """
        attended: dict[int, Tensor] = {}
        masks = self.attention[name]
        last = len(self.stage_scales) - 1
        for j in stages:
            u, p = features[f"u{j + 1}"], features[f"p{j + 1}"]
            if previous is None:
                mask = masks[j](u)
            else:
                if previous.shape[-2:] != u.shape[-2:]:
                    # strided stage: halve like the encoder's stride-2 convs (ceil)
                    previous = max_pool_2x2_ceil(previous)
                mask = masks[j](torch.cat([u, previous], dim=1))
            a = mask * p
            attended[self.stage_scales[j]] = a
            previous = self.refinement(name, j)(a) if j < last else None
        return attended, previous

    def attended_pyramid(self, name: str, features: Mapping[str, Tensor]) -> dict[int, Tensor]:
        """Task ``name``'s whole pyramid from :meth:`stage_features`: the shared stem at
        its stride (2 for the ResNet) and the attended stage outputs
        ``{scale: [B, C_s, H/s, W/s]}`` (which replace it at a shared stride)."""
        attended, _ = self.attend_stages(name, features, range(len(self.stage_scales)))
        return {self.encoder.stem_stride: features["stem"], **attended}

    def shared_forward(self, x: Tensor) -> dict[str, Tensor]:
        """:meth:`stage_features` (``per_task``), or the part of every task's chain up to
        the last shared refinement (``shared``); see the class docstring."""
        features = self.stage_features(x)
        if not self.shared_refinement:
            return features
        last = len(self.stage_scales) - 1
        shared = {k: features[k] for k in ("stem", f"u{last + 1}", f"p{last + 1}")}
        for name in self.heads:
            attended, refined = self.attend_stages(name, features, range(last))
            for scale, a in attended.items():
                if scale != self.stage_scales[last]:  # the last stage's output replaces it
                    shared[task_key(name, scale)] = a
            assert refined is not None
            shared[task_key(name, REFINED)] = refined
        return shared

    def shared_modules(self) -> list[nn.Module]:
        if not self.shared_refinement:
            return [self.encoder]
        last = len(self.stage_scales) - 1
        early = [self.attention[name][j] for name in self.heads for j in range(last)]
        return [self.encoder, self.refine, *early]

    def task_pyramid(self, name: str, shared: Mapping[str, Tensor]) -> dict[int, Tensor]:
        """Task ``name``'s attended pyramid ``{scale: [B, C_s, H/s, W/s]}`` (stem at 2)
        from :meth:`shared_forward`'s output."""
        if not self.shared_refinement:
            return self.attended_pyramid(name, shared)
        last = len(self.stage_scales) - 1
        pyramid = {self.encoder.stem_stride: shared["stem"]}
        for scale in self.stage_scales[:last]:
            if scale != self.stage_scales[last]:
                pyramid[scale] = shared[task_key(name, scale)]
        attended, _ = self.attend_stages(
            name, shared, range(last, last + 1), shared[task_key(name, REFINED)]
        )
        return {**pyramid, **attended}

    def decode(self, shared: dict[str, Tensor]) -> dict[str, list[Tensor]]:
        """``{task: [[B, heads[task], H/4, W/4]]}`` from :meth:`shared_forward`'s output."""
        outputs: dict[str, list[Tensor]] = {}
        for name in self.heads:
            pyramid = self.task_pyramid(name, shared)
            bottleneck = self.aspp[name](pyramid[self.encoder.output_stride])
            prediction, _ = self.decoder[name](bottleneck, pyramid)
            outputs[name] = [prediction]
        return outputs
