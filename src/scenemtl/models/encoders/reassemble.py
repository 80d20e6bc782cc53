"""DPT's reassemble operation (Ranftl, Bochkovskiy, Koltun 2021; authors' code
isl-org/DPT ``dpt/vit.py``: ``Readout*``, ``act_postprocess1..4``): read-out of the class
token, 1x1 projection, resampling from a stride to a target stride.

Its home is the encoder package because both read it: the ViT's DPT adapter
(:mod:`scenemtl.models.encoders.vit`) and the DPT head (:mod:`scenemtl.models.dpt`), which
applies it to inputs not yet at strides 4-32.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from scenemtl.errors import UserError

TARGET_STRIDES = (4, 8, 16, 32)
"""Strides the four reassembled maps are brought to."""
READOUTS = ("ignore", "add", "project")
"""Read-outs of the class token (DPT's ``use_readout``)."""


def resample_layer(channels: int, source_stride: int, target_stride: int) -> nn.Module:
    """DPT's resampling from ``source_stride`` to ``target_stride`` on ``channels``:
    upsampling by k = source/target is a k x k transposed conv with stride k (DPT: 4 and 2),
    equal strides the identity, downsampling by 2 a 3x3 conv with stride 2 and padding 1.
    [B, C, h, w] -> [B, C, h*k, w*k] (k >= 1) or [B, C, ceil(h/2), ceil(w/2)]."""
    if source_stride == target_stride:
        return nn.Identity()
    if source_stride > target_stride and source_stride % target_stride == 0:
        k = source_stride // target_stride
        return nn.ConvTranspose2d(channels, channels, k, stride=k)
    if target_stride == 2 * source_stride:
        return nn.Conv2d(channels, channels, 3, stride=2, padding=1)
    raise UserError(
        f"DPT: cannot resample stride {source_stride} to {target_stride} "
        "(upsampling by an integer factor or downsampling by 2 only)"
    )


class Reassemble(nn.Module):
    """One reassemble operation: read-out handling, 1x1 projection, resampling.

    ``readout`` (for ViT tokens with a class token): ``"ignore"`` drops the class token,
    ``"add"`` adds it to every token, ``"project"`` concatenates it to every token and maps
    back with Linear(2C -> C) + GELU (DPT's default); ``None`` for inputs without one.
    With ``cout=None`` and equal strides the operation is the identity (DPT-Hybrid's ResNet
    levels skip reassembly).

    Shapes: x [B, cin, h, w], class token [B, cin] -> [B, cout, h*k, w*k] with
    k = source_stride / target_stride.
    """

    def __init__(
        self,
        cin: int,
        cout: int | None,
        source_stride: int,
        target_stride: int,
        readout: str | None = None,
    ) -> None:
        super().__init__()
        if readout is not None and readout not in READOUTS:
            raise UserError(f"DPT: readout must be one of {', '.join(READOUTS)}, got {readout!r}")
        self.readout = readout
        self.readout_project = (
            nn.Sequential(nn.Linear(2 * cin, cin), nn.GELU()) if readout == "project" else None
        )
        identity = cout is None and source_stride == target_stride
        self.cout = cin if identity else (cout or cin)
        self.project = nn.Identity() if identity else nn.Conv2d(cin, self.cout, 1)
        self.resample = resample_layer(self.cout, source_stride, target_stride)

    def forward(self, x: Tensor, class_token: Tensor | None = None) -> Tensor:
        if self.readout is not None and self.readout != "ignore":
            if class_token is None:
                raise ValueError(f"readout {self.readout!r} needs the class token")
            token = class_token[:, :, None, None].expand_as(x)
            if self.readout_project is None:
                x = x + token
            else:
                x = torch.cat([x, token], 1).permute(0, 2, 3, 1)
                x = self.readout_project(x).permute(0, 3, 1, 2)
        return self.resample(self.project(x))
