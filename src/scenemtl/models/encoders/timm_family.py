"""One registry entry for the families that reproduce a timm model (ConvNeXt, Swin,
MobileNetV3): their options, their published files on the Hugging Face Hub, and loading
those files with the classifier dropped.

A family module then only writes its trunk and one line::

    FAMILY = timm_family(ConvNeXtEncoder, {n: v.hub_repo for n, v in VARIANTS.items()},
                         published_width=lambda n: VARIANTS[n].dims[0])
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from torch import Tensor, nn

from scenemtl.errors import UserError
from scenemtl.models.encoders.base import Family
from scenemtl.models.encoders.parts import load_published_state_dict
from scenemtl.models.encoders.weights import PublishedFile, hub_safetensors
from scenemtl.models.options import OptionError

PUBLISHED_KEYS = ("imagenet", "published")
"""``model.net.weights`` values that name a timm family's published file."""
MAX_WIDTH = 1024


@dataclass(frozen=True)
class DropPathOptions:
    """``model.net.encoder_options`` of a timm family without a width option."""

    drop_path_rate: float = 0.0
    """Stochastic depth: the largest rate, reached linearly at the last block."""


@dataclass(frozen=True)
class WidthOptions(DropPathOptions):
    """``model.net.encoder_options`` of a timm family whose first-stage width can change
    (the later stages keep their published multiples of it)."""

    embed_dim: int | None = None
    """Channels of the patch embedding and first stage (timm's ``embed_dim``, ConvNeXt's
    ``dims[0]``); None: the variant's published width. Any other width trains from
    scratch only (the tests' and the CPU studies' small networks). Not the ResNet's
    ``width``, whose flat key ``encoder_width`` defaults to 64."""

    def __post_init__(self) -> None:
        w = self.embed_dim
        if w is not None and (
            isinstance(w, bool) or not isinstance(w, int) or not 1 <= w <= MAX_WIDTH
        ):
            raise OptionError("embed_dim", f"an integer in 1..{MAX_WIDTH} or null, got {w!r}")


class PublishedLayout:
    """Mixin of an encoder module in a published file's layout: ``load_pretrained`` loads
    such a file with every key and shape checked, dropping the keys under
    :attr:`classifier_prefixes` and keeping the module's own layers under
    :attr:`own_prefixes` (see :func:`~scenemtl.models.encoders.parts.load_published_state_dict`)."""

    classifier_prefixes: ClassVar[tuple[str, ...]] = ("head.",)
    own_prefixes: ClassVar[tuple[str, ...]] = ()

    def load_pretrained(self, state: Mapping[str, Tensor], source: str) -> None:
        """Load a published file (see :meth:`load_published_state_dict`)."""
        self.load_published_state_dict(state, source)

    def load_published_state_dict(self, state: Mapping[str, Tensor], source: str) -> None:
        """Load the published state dict (one :class:`UserError` line naming ``source``
        when a key or shape differs)."""
        assert isinstance(self, nn.Module)
        load_published_state_dict(self, state, source, self.classifier_prefixes, self.own_prefixes)


def timm_family(
    encoder: Callable[..., nn.Module],
    hub_repos: Mapping[str, str],
    *,
    options: type = DropPathOptions,
    published_width: Callable[[str], int] | None = None,
    hierarchical: bool = True,
) -> Family:
    """The registry entry of a family of timm models.

    Args:
        encoder: ``encoder(name, **fields of options)`` builds one (e.g.
            ``ConvNeXtEncoder(name, drop_path_rate=..., embed_dim=...)``).
        hub_repos: encoder name -> Hugging Face Hub repository of timm's default weights
            (file ``model.safetensors``); also the family's names, in order.
        options: the options dataclass (:class:`DropPathOptions` or
            :class:`WidthOptions`).
        published_width: encoder name -> the width of its published file, for
            :class:`WidthOptions` (weights at another width stop with one line).
        hierarchical: whether its modules are stem + stages (mtan, cross_stitch, nddr).
    """

    def build(name: str, opts: Any) -> nn.Module:
        return encoder(name, **dataclasses.asdict(opts))

    def published(name: str, key: str, opts: Any) -> PublishedFile | None:
        if key not in PUBLISHED_KEYS:
            return None
        width = getattr(opts, "embed_dim", None)
        if width is not None and published_width is not None and width != published_width(name):
            raise UserError(
                f"{name}'s published weights have embed_dim {published_width(name)}; "
                f"encoder_options.embed_dim {width} trains from scratch (weights: null)"
            )
        return hub_safetensors(hub_repos[name], "timm's ImageNet weights")

    return Family(build, tuple(hub_repos), options, hierarchical=hierarchical, weights=published)
