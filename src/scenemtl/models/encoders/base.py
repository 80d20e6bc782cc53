"""The encoder protocol: what every encoder family gives the architectures.

An encoder family is one class (one file in this package, one line in
:data:`scenemtl.models.encoders.registry.ENCODER_FAMILIES`) that subclasses
:class:`Encoder` (or :class:`HierarchicalEncoder`) and declares:

* ``names``: the encoder names it builds (``model.net.encoder``: "resnet18", ...);
* ``Options``: a dataclass of its options (``model.net.encoder_options``; see
  :mod:`scenemtl.models.options`), with a default for each;
* :meth:`Encoder.declared_pyramid`: the strides and channels it returns, without
  building it (the configuration reads the output stride from it);
* :meth:`Encoder.published_weights`: where a named published file comes from
  (``model.net.weights: imagenet`` for the ResNets);
* its constructor ``Family(name, options)`` (:meth:`Encoder.build`).

The module it builds returns ``forward(x) -> {stride: [B, channels[stride], H/stride,
W/stride]}`` (sizes rounded up), with ``channels`` (stride -> channels) equal to the
declared pyramid and ``output_stride == max(channels)`` (the bottleneck every
architecture's context module reads).

A hierarchical family (:class:`HierarchicalEncoder`) also lets the architectures that act
between stages (mtan, cross_stitch, nddr) run it stage by stage.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import torch
from torch import Tensor, nn

from scenemtl.errors import UserError
from scenemtl.models.options import NoOptions


class WeightsSource(Protocol):
    """A published weights file: what it is and its name (for messages), and how to get
    its state dict."""

    what: str
    """e.g. "ImageNet weights"."""
    file_name: str

    def load(self) -> Mapping[str, Tensor]:
        """The file's state dict; :class:`UserError` (one line naming the file and the
        folder to put it in) when it cannot be had, e.g. offline."""
        ...


class Encoder(nn.Module):
    """Base class of the encoder families (see the module docstring)."""

    names: ClassVar[tuple[str, ...]] = ()
    """Encoder names this family builds."""
    Options: ClassVar[type] = NoOptions
    """The family's options (a dataclass with a default for every field)."""
    hierarchical: ClassVar[bool] = False
    """Whether the family is a :class:`HierarchicalEncoder` (stem and stages)."""

    channels: dict[int, int]
    """Stride -> channels of the pyramid :meth:`forward` returns."""
    output_stride: int
    """The coarsest stride, ``max(channels)``."""

    @classmethod
    def build(cls, name: str, options: Any) -> Encoder:
        """The encoder ``name`` with ``options`` (an instance of :attr:`Options`) and
        random weights."""
        return cls(name, options)

    @classmethod
    def declared_pyramid(cls, name: str, options: Any) -> dict[int, int]:
        """Stride -> channels of what :meth:`forward` returns, without building it
        (default: the ``channels`` of the module built on the meta device, which
        allocates nothing)."""
        return pyramid_on_meta(cls.build, name, options)

    @classmethod
    def published_weights(cls, name: str, key: str, options: Any) -> WeightsSource | None:
        """The published file ``model.net.weights: <key>`` names for encoder ``name``,
        None if ``key`` names none (it is then read as a path); :class:`UserError` when
        the file exists but does not fit ``options``."""
        return None

    def forward(self, x: Tensor) -> dict[int, Tensor]:
        """x [B, 3, H, W] ImageNet-normalized -> ``{stride: [B, C_s, H/s, W/s]}``."""
        raise NotImplementedError

    def load_pretrained(self, state: Mapping[str, Tensor], source: str) -> None:
        """Load ``state`` (the family's published layout, or this module's own state
        dict) strictly; :class:`UserError` naming ``source`` and the first offending
        keys when it does not fit. Families whose files carry a classifier drop it here."""
        load_strict(self, state, source)


class HierarchicalEncoder(Encoder):
    """An encoder that is a stem followed by stages, which mtan, cross_stitch and nddr
    run one by one.

    ``forward(x)`` must equal: ``h = stem(x)`` at :attr:`stem_stride`, then
    ``h = stage_blocks[i](h)`` at ``stage_scales[i]`` with ``stage_out_channels[i]``
    channels; the pyramid holds the stem and every stage output, the deepest per stride.
    Every tensor is [B, C, h, w] (channels first). Each stage is an ``nn.Sequential`` of
    at least two modules whose last one is the stage's last block: MTAN reads the
    features before it (``stage[:-1]``) and after it.

    ``stem`` is a method or a registered submodule (ConvNeXt's is timm's ``stem``
    module), so the name stays free for a published layout; the protocol's stages are
    ``stage_blocks``, not ``stages``, for the same reason (ConvNeXt's parameters live
    under ``stages.*``). torch.export and ``torch.func.functional_call`` resolve every
    submodule name with getattr, so an attribute must never hide a submodule's name.
    """

    hierarchical: ClassVar[bool] = True

    stage_scales: list[int]
    """Stride of each stage's output, in order."""
    stage_out_channels: tuple[int, ...]
    """Channels of each stage's output, in order."""

    @property
    def stem_stride(self) -> int:
        """Stride of :attr:`stem`'s output (default: the finest stride of the pyramid)."""
        return min(self.channels)

    @property
    def stage_inner_channels(self) -> tuple[int, ...]:
        """Channels of each stage's features before its last block, ``stage_blocks[i][:-1]``
        (default: :attr:`stage_out_channels`, blocks that keep the width)."""
        return tuple(self.stage_out_channels)

    stem: Callable[[Tensor], Tensor]
    """[B, 3, H, W] -> the input of ``stage_blocks[0]`` [B, C, H/stem_stride,
    W/stem_stride]: a method, or a submodule (then named as the published files name it)."""

    @property
    def stage_blocks(self) -> list[nn.Sequential]:
        """The stages, in order, each a Sequential of blocks (views over the registered
        modules); ``stage_blocks[0]`` reads :attr:`stem`'s output."""
        raise NotImplementedError


def pyramid_on_meta(
    build: Callable[[str, Any], nn.Module], name: str, options: Any
) -> dict[int, int]:
    """``channels`` of ``build(name, options)`` built on the meta device (no memory)."""
    with torch.device("meta"):
        module = build(name, options)
    return dict(module.channels)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Family:
    """A family whose modules follow the protocol's module part (``channels``,
    ``output_stride``, ``forward``; ``stem``/``stage_blocks``/``stage_scales``/
    ``stage_out_channels`` when hierarchical) but are not :class:`Encoder` subclasses:
    its registry entry. E.g. ``Family(_build, tuple(VARIANTS), ViTOptions,
    hierarchical=False, weights=_published)`` (the ViT's; the timm families get theirs
    from :func:`~scenemtl.models.encoders.timm_family.timm_family`).

    Attributes:
        constructor: ``(name, options) -> module``.
        names: the encoder names it builds.
        Options: its options dataclass.
        hierarchical: whether its modules are stem + stages.
        weights: ``(name, key, options) -> WeightsSource | None`` (None: no published
            files; every ``weights`` value is then a path).
    """

    constructor: Callable[[str, Any], nn.Module]
    names: tuple[str, ...]
    Options: type = NoOptions
    hierarchical: bool = False
    weights: Callable[[str, str, Any], WeightsSource | None] | None = None

    def build(self, name: str, options: Any) -> nn.Module:
        return self.constructor(name, options)

    def declared_pyramid(self, name: str, options: Any) -> dict[int, int]:
        return pyramid_on_meta(self.build, name, options)

    def published_weights(self, name: str, key: str, options: Any) -> WeightsSource | None:
        return self.weights(name, key, options) if self.weights is not None else None


def state_dict_mismatch(expected: Mapping[str, Tensor], given: Mapping[str, object]) -> str:
    """One-line description of how ``given`` differs from ``expected`` ("" if it fits)."""

    def first(keys: set[str]) -> str:
        shown = sorted(keys)[:3]
        more = f" and {len(keys) - 3} more" if len(keys) > 3 else ""
        return ", ".join(shown) + more

    parts = []
    missing = set(expected) - set(given)
    unexpected = set(given) - set(expected)
    if missing:
        parts.append(f"{len(missing)} missing keys ({first(missing)})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected keys ({first(unexpected)})")
    for key in sorted(set(expected) & set(given)):
        value = given[key]
        if not isinstance(value, Tensor):
            parts.append(f"{key} is not a tensor")
            break
        if value.shape != expected[key].shape:
            parts.append(
                f"{key} has shape {list(value.shape)}, expected {list(expected[key].shape)}"
            )
            break
    return "; ".join(parts)


def load_strict(module: nn.Module, state: Mapping[str, Tensor], source: str) -> None:
    """``module.load_state_dict(state, strict=True)`` with one :class:`UserError` line
    naming ``source`` when ``state`` is not a state dict or does not fit."""
    if not isinstance(state, Mapping) or not all(isinstance(k, str) for k in state):
        raise UserError(f"{source} does not hold a state dict (a mapping of names to tensors)")
    problem = state_dict_mismatch(module.state_dict(), state)
    if problem:
        name = getattr(module, "name", type(module).__name__)
        raise UserError(f"{source} does not fit {name}: {problem}")
    module.load_state_dict(state, strict=True)
