"""NDDR-CNN (Gao, Ma, Zhao, Liu, Yuille, CVPR 2019) on a hierarchical encoder (ResNet,
ConvNeXt, Swin or MobileNetV3).

One encoder per task, as in cross-stitch networks; after each stage every task
concatenates all tasks' activations and reduces them back to its own width with a 1x1
convolution, BatchNorm and ReLU ("neural discriminative dimensionality reduction")::

    stage j [s] -+-> concat [B, T*C_j, h, w] -+-> 1x1 conv[s], BN, ReLU -> stage j+1 [s]
    stage j [d] -+                            +-> 1x1 conv[d], BN, ReLU -> stage j+1 [d]
    (after layer4 the mixed features go to each task's ASPP + decoder)

The 1x1 conv of task t starts as ``0.9 * I`` on its own channels and ``0.1 / (T-1) * I``
on every other task's (the paper's diagonal initialization with (alpha, beta) = (0.9,
0.1)), the mixing of cross-stitch; training then lets every output channel read any
input channel, where a cross-stitch unit only mixes equal channels.

That start is the cross-stitch mixing only in eval mode with fresh running statistics:
in training the BatchNorm restandardises every channel with the batch's statistics.
As in the authors' code the NDDR layers (convs and BatchNorms, momentum 0.05) learn at
100x the base rate (``mixing_lr_multiplier``), and each trunk can start from a
single-task run (``weights`` as a per-task mapping).

Differences from the paper: ResNet stages instead of VGG's pooling layers (the survey
code also mixes after the stem), DeepLabV3+ heads per task.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from scenemtl.models.cross_stitch import MixedTrunksNet


class NDDRLayer(nn.Module):
    """Per task: concat of the T activations -> 1x1 conv (no bias) -> BN -> ReLU.

    Shapes: T tensors [B, C, H, W] -> T tensors [B, C, H, W].
    """

    def __init__(self, n_tasks: int, channels: int, same: float = 0.9) -> None:
        super().__init__()
        other = (1.0 - same) / max(n_tasks - 1, 1)
        self.reduce = nn.ModuleList()
        eye = torch.eye(channels)
        for t in range(n_tasks):
            conv = nn.Conv2d(n_tasks * channels, channels, 1, bias=False)
            blocks = [(same if u == t else other) * eye for u in range(n_tasks)]
            with torch.no_grad():
                conv.weight.copy_(torch.cat(blocks, dim=1)[:, :, None, None])
            # BatchNorm momentum 0.05 as in the NDDR-CNN authors' code
            bn = nn.BatchNorm2d(channels, momentum=0.05)
            self.reduce.append(nn.Sequential(conv, bn, nn.ReLU()))

    def forward(self, xs: list[Tensor]) -> list[Tensor]:
        cat = torch.cat(xs, dim=1)
        return [reduce(cat) for reduce in self.reduce]


class NDDRNet(MixedTrunksNet):
    """NDDR-CNN: :class:`~scenemtl.models.cross_stitch.MixedTrunksNet` with
    :class:`NDDRLayer`s."""

    def make_mixer(self, n_tasks: int, channels: int) -> nn.Module:
        return NDDRLayer(n_tasks, channels)
