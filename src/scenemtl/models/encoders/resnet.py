"""ResNet-18/34/50/101: the ``resnet`` encoder family (options ``dilation``, ``width``).

torchvision cannot be installed next to the CPU build of torch used here, so the ResNet is
written out in this file. Module names (``conv1``, ``bn1``, ``layer1.0.conv1``,
``layer2.0.downsample.0``, ``layer1.0.conv3`` ...) are exactly torchvision's, so
torchvision's ImageNet files (``resnet18-f37072fd.pth`` ... ``resnet101-63fe2227.pth``)
load with ``strict=True``; their ``fc`` layer is loaded too and dropped right after, the
encoder has no classifier.

ResNet-18/34 stack :class:`BasicBlock` (two 3x3 convs), ResNet-50/101 :class:`Bottleneck`
(1x1 reduce, 3x3, 1x1 expand by 4, stride on the 3x3 as torchvision's "V1.5"), so their
stages are 4x wider: 256, 512, 1024, 2048 channels against 64, 128, 256, 512.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor, nn

from scenemtl.errors import UserError
from scenemtl.models.encoders.base import HierarchicalEncoder, load_strict
from scenemtl.models.encoders.weights import TorchHubFile
from scenemtl.models.options import OptionError, check_flags

ENCODERS: dict[str, tuple[int, int, int, int]] = {
    "resnet18": (2, 2, 2, 2),
    "resnet34": (3, 4, 6, 3),
    "resnet50": (3, 4, 6, 3),
    "resnet101": (3, 4, 23, 3),
}
"""Encoder name -> number of residual blocks in layer1..layer4 (block type:
:data:`BOTTLENECK_ENCODERS`)."""

BOTTLENECK_ENCODERS = frozenset({"resnet50", "resnet101"})
"""Encoders built from :class:`Bottleneck` blocks; the others use :class:`BasicBlock`."""

IMAGENET_URLS: dict[str, str] = {
    "resnet18": "https://download.pytorch.org/models/resnet18-f37072fd.pth",
    "resnet34": "https://download.pytorch.org/models/resnet34-b627a593.pth",
    # IMAGENET1K_V1, trained with the same recipe as the two above
    "resnet50": "https://download.pytorch.org/models/resnet50-0676ba61.pth",
    "resnet101": "https://download.pytorch.org/models/resnet101-63fe2227.pth",
}
"""torchvision's published ImageNet weights (IMAGENET1K_V1); the 8 hex digits after the
dash are the start of the file's sha256, which ``check_hash`` verifies on download."""

PUBLISHED_WIDTH = 64
"""Width of the published ResNets' stem and first stage; the stages are 1, 2, 4, 8 times it."""
STAGE_MULTIPLIERS: tuple[int, int, int, int] = (1, 2, 4, 8)
MAX_WIDTH = 1024


@dataclass
class ResNetOptions:
    """Options of the ResNet encoders (``model.net.encoder_options``; the flat
    ``model.net.dilation`` and ``model.net.encoder_width`` are accepted for them).

    Attributes:
        dilation: replace the stride of layer2, layer3, layer4 by dilation
            (torchvision's ``replace_stride_with_dilation``); at most two, so that the
            output stride is 8, 16 or 32 and the 4x skip stays a separate level.
        width: channels of the stem and layer1 (64 in the published ResNets; the stages
            are 1, 2, 4, 8 times it). Another width trains from scratch only; 16 makes a
            ResNet-18 16x smaller (the tests' networks).
    """

    dilation: tuple[bool, bool, bool] = (False, False, False)
    width: int = PUBLISHED_WIDTH

    def __post_init__(self) -> None:
        check_flags(self, "dilation", 3, "layer2, layer3, layer4")
        if all(self.dilation):
            raise OptionError(
                "dilation",
                "dilating all three stages gives output stride 4, where the bottleneck and "
                "the 4x skip coincide; dilate at most two stages",
            )
        try:
            check_width(self.width)
        except UserError:
            raise OptionError(
                "width", f"expected an integer in 1..{MAX_WIDTH}, got {self.width!r}"
            ) from None


def stage_widths(width: int = PUBLISHED_WIDTH) -> tuple[int, int, int, int]:
    """Width of the 3x3 convs of layer1..layer4 (a stage's output for BasicBlock encoders):
    (64, 128, 256, 512) at the published width."""
    return tuple(width * m for m in STAGE_MULTIPLIERS)  # type: ignore[return-value]


def stage_channels(name: str, width: int = PUBLISHED_WIDTH) -> tuple[int, int, int, int]:
    """Output channels of layer1..layer4 of encoder ``name``: (64, 128, 256, 512) for
    ResNet-18/34 at the published width, four times that for the bottleneck ResNets."""
    expansion = Bottleneck.expansion if name in BOTTLENECK_ENCODERS else BasicBlock.expansion
    return tuple(c * expansion for c in stage_widths(width))  # type: ignore[return-value]


def _conv3x3(cin: int, cout: int, stride: int = 1, dilation: int = 1) -> nn.Conv2d:
    # padding == dilation keeps the spatial size for stride 1 at any dilation
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=dilation, dilation=dilation, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with an identity (or 1x1 projection) shortcut.

    ``dilation_in`` is used by the first convolution and ``dilation`` by the second, as
    torchvision does for its first block of a dilated stage: the first convolution still
    sees the finer grid of the previous stage.

    Shapes: [B, cin, H, W] -> [B, cout, ceil(H / stride), ceil(W / stride)].
    """

    expansion = 1
    """Output channels per unit of width (``cout`` is both width and output)."""

    def __init__(
        self,
        cin: int,
        cout: int,
        stride: int = 1,
        dilation_in: int = 1,
        dilation: int = 1,
    ) -> None:
        super().__init__()
        self.conv1 = _conv3x3(cin, cout, stride, dilation_in)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(cout, cout, 1, dilation)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample: nn.Sequential | None = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)

    def last_bn(self) -> nn.BatchNorm2d:
        """The BatchNorm closing the residual branch (zeroed for ``zero_init_residual``)."""
        return self.bn2


class Bottleneck(nn.Module):
    """torchvision's bottleneck block: 1x1 to ``width``, 3x3 at ``width`` (carrying the
    stride, "ResNet V1.5"), 1x1 to ``4 * width``; identity or 1x1 projection shortcut.

    The single 3x3 conv uses ``dilation_in``, as torchvision gives the first block of a
    dilated stage the previous dilation (``previous_dilation``) and every later block the
    new one; ``dilation`` is accepted for the same call signature as :class:`BasicBlock`.

    Shapes: [B, cin, H, W] -> [B, 4 * width, ceil(H / stride), ceil(W / stride)].
    """

    expansion = 4

    def __init__(
        self,
        cin: int,
        width: int,
        stride: int = 1,
        dilation_in: int = 1,
        dilation: int = 1,
    ) -> None:
        super().__init__()
        cout = width * self.expansion
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = _conv3x3(width, width, stride, dilation_in)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Sequential | None = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)

    def last_bn(self) -> nn.BatchNorm2d:
        """The BatchNorm closing the residual branch (zeroed for ``zero_init_residual``)."""
        return self.bn3


class ResNetEncoder(HierarchicalEncoder):
    """ResNet trunk without pooling and classifier, returning a feature pyramid.

    Args:
        name: "resnet18", "resnet34", "resnet50" or "resnet101".
        dilation: for layer2, layer3, layer4: replace that stage's stride 2 by dilation
            (torchvision's ``replace_stride_with_dilation``).
        width: channels of the stem and layer1 (64 in the published ResNets; the stages are
            1, 2, 4, 8 times it). Another width has the same module names, other shapes:
            it trains from scratch (tests and quick experiments use 16).

    Forward: x [B, 3, H, W] -> ``{scale: Tensor [B, C_scale, ceil(H/scale), ceil(W/scale)]}``
    (sizes rounded up per strided layer). ``scale`` is the true downscale factor. When
    dilation makes several stages share a scale, the deepest one is kept, so
    ``max(pyramid)`` is the output stride and ``pyramid[max(pyramid)]`` the bottleneck.
    Key 2 is the stem (after conv1/bn1/relu, before max pooling), key 4 the deepest stage
    at 1/4 (layer1 without dilation). ``channels`` maps each key to its channel count
    (:func:`stage_channels`: layer4 has 512 channels in ResNet-18/34, 2048 in ResNet-50/101).

    As a :class:`~scenemtl.models.encoders.base.HierarchicalEncoder`: :meth:`stem` is
    conv1/bn1/relu (stride 2, pyramid key 2), ``stage_blocks[0]`` is the max pooling
    followed by layer1's blocks, ``stage_blocks[1:]`` are layer2..layer4.
    """

    names: ClassVar[tuple[str, ...]] = tuple(ENCODERS)
    Options: ClassVar[type] = ResNetOptions

    @classmethod
    def build(cls, name: str, options: ResNetOptions) -> ResNetEncoder:
        return cls(name, options.dilation, options.width)

    @classmethod
    def declared_pyramid(cls, name: str, options: ResNetOptions) -> dict[int, int]:
        """{2: width, 4: ..., 32 // 2**dilated: layer4's channels}, the deepest stage
        per stride (see :func:`stage_channels`)."""
        channels = {2: options.width}
        scale = 4
        for i, c in enumerate(stage_channels(name, options.width)):
            if i > 0 and not options.dilation[i - 1]:
                scale *= 2
            channels[scale] = c
        return channels

    @classmethod
    def published_weights(cls, name: str, key: str, options: ResNetOptions) -> TorchHubFile | None:
        """``imagenet``: torchvision's file (:data:`IMAGENET_URLS`) via the torch hub
        cache, for the published width only."""
        if key != "imagenet":
            return None
        if options.width != PUBLISHED_WIDTH:
            raise UserError(
                f"ImageNet weights exist for the published width {PUBLISHED_WIDTH} only; "
                f"encoder_width {options.width} trains from scratch (weights: null)"
            )
        return TorchHubFile(IMAGENET_URLS[name], "ImageNet weights", "torchvision's ")

    def __init__(
        self,
        name: str = "resnet34",
        dilation: tuple[bool, bool, bool] = (False, False, False),
        width: int = PUBLISHED_WIDTH,
    ) -> None:
        super().__init__()
        if name not in ENCODERS:
            raise UserError(f"unknown encoder {name!r}; known: {', '.join(ENCODERS)}")
        if len(dilation) != 3:
            raise UserError(f"dilation needs 3 flags (layer2, layer3, layer4), got {dilation}")
        check_width(width)
        self.name = name
        self.width = width
        self.dilation_flags = tuple(bool(d) for d in dilation)
        self.conv1 = nn.Conv2d(3, width, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)

        # scale and dilation bookkeeping while stacking stages
        scale, current_dilation = 4, 1
        self.stage_scales: list[int] = []
        cin = width
        blocks = ENCODERS[name]
        block: type[BasicBlock] | type[Bottleneck] = (
            Bottleneck if name in BOTTLENECK_ENCODERS else BasicBlock
        )
        self.stage_out_channels = stage_channels(name, width)
        for i, (n_blocks, planes) in enumerate(zip(blocks, stage_widths(width), strict=True)):
            stride = 1 if i == 0 else 2
            dilation_in = current_dilation
            if i > 0 and self.dilation_flags[i - 1]:
                current_dilation *= stride
                stride = 1
            scale *= stride
            layers = [block(cin, planes, stride, dilation_in, current_dilation)]
            cout = planes * block.expansion
            layers += [
                block(cout, planes, 1, current_dilation, current_dilation)
                for _ in range(n_blocks - 1)
            ]
            self.add_module(f"layer{i + 1}", nn.Sequential(*layers))
            self.stage_scales.append(scale)
            cin = cout

        self.channels: dict[int, int] = {2: width}
        for s, c in zip(self.stage_scales, self.stage_out_channels, strict=True):
            self.channels[s] = c  # later (deeper) stages overwrite shallower ones
        self.output_stride = max(self.channels)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Random initialization as torchvision's with ``zero_init_residual=True``.

        Zeroing the last BN of each residual branch makes every block start as identity,
        which trains better from scratch (Goyal et al., 2017).
        """
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
                m.reset_running_stats()
        for m in self.modules():
            if isinstance(m, (BasicBlock, Bottleneck)):
                nn.init.zeros_(m.last_bn().weight)

    def stem(self, x: Tensor) -> Tensor:
        """conv1, bn1, relu: [B, 3, H, W] -> [B, width, ceil(H/2), ceil(W/2)] (pyramid key 2)."""
        return self.relu(self.bn1(self.conv1(x)))

    @property
    def stem_stride(self) -> int:
        return 2

    @property
    def stage_blocks(self) -> list[nn.Sequential]:
        """maxpool + layer1, layer2, layer3, layer4; stage i maps the previous one's
        output (:meth:`stem`'s for the first) to ``stage_out_channels[i]`` at
        ``stage_scales[i]``. Architectures that act between stages (MTAN, cross-stitch)
        run them one by one. The first is a fresh Sequential over the registered
        ``maxpool`` and layer1's blocks, so module names stay torchvision's."""
        layers = [getattr(self, f"layer{i + 1}") for i in range(len(self.stage_scales))]
        return [nn.Sequential(self.maxpool, *layers[0]), *layers[1:]]

    def forward(self, x: Tensor) -> dict[int, Tensor]:
        pyramid: dict[int, Tensor] = {}
        x = self.stem(x)
        pyramid[2] = x
        x = self.maxpool(x)
        for i, scale in enumerate(self.stage_scales):
            x = getattr(self, f"layer{i + 1}")(x)
            pyramid[scale] = x
        return pyramid

    def load_pretrained(self, state: Mapping[str, Tensor], source: str) -> None:
        """Load a torchvision ResNet state dict strictly; its ``fc`` layer is dropped.

        A state dict without ``fc.*`` keys (an encoder saved from this class) loads too.
        Any missing, unexpected or mis-shaped key raises :class:`UserError` naming
        ``source`` and the first offending keys.
        """
        has_fc = isinstance(state, Mapping) and any(
            isinstance(k, str) and k.startswith("fc.") for k in state
        )
        if has_fc:
            # a temporary classifier makes strict loading check fc's keys and shapes too
            self.fc = nn.Linear(self.stage_out_channels[-1], 1000)
        try:
            load_strict(self, state, source)
        finally:
            if has_fc:
                del self.fc


def check_width(width: object) -> None:
    """Raise :class:`UserError` unless ``width`` is an int in 1..MAX_WIDTH."""
    if isinstance(width, bool) or not isinstance(width, int) or not 1 <= width <= MAX_WIDTH:
        raise UserError(f"encoder_width must be an integer in 1..{MAX_WIDTH}, got {width!r}")
