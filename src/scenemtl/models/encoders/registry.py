"""The encoder families, and building an encoder from its name, options and weights.

A new family is one module with an :class:`~scenemtl.models.encoders.base.Encoder`
subclass plus one line in :data:`ENCODER_FAMILIES`. Nothing here imports an
architecture or the model configuration, so both can use this module.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from torch import nn

from scenemtl.errors import UserError
from scenemtl.models.encoders import convnext, mobilenetv3, swin, vit
from scenemtl.models.encoders.base import Encoder, Family, load_strict
from scenemtl.models.encoders.resnet import ResNetEncoder
from scenemtl.models.encoders.weights import (
    encoder_state_from_checkpoint,
    is_checkpoint,
    load_weights_file,
)
from scenemtl.models.options import OptionError, parse_options

ENCODER_FAMILIES: dict[str, type[Encoder] | Family] = {
    "resnet": ResNetEncoder,
    "convnext": convnext.FAMILY,
    "swin": swin.FAMILY,
    "vit": vit.FAMILY,
    "mobilenetv3": mobilenetv3.FAMILY,
}
"""Family name -> its :class:`Encoder` subclass, or a :class:`Family` entry for a module
class that only follows the protocol's module part; either lists the encoder names it
builds (``names``)."""


def encoder_names() -> list[str]:
    """Every encoder name (``model.net.encoder``), family by family."""
    return [name for family in ENCODER_FAMILIES.values() for name in family.names]


def family_name(encoder: str) -> str:
    """The family that builds encoder ``encoder``; :class:`UserError` if none does."""
    for key, family in ENCODER_FAMILIES.items():
        if encoder in family.names:
            return key
    raise UserError(f"unknown encoder {encoder!r}; known: {', '.join(encoder_names())}")


def encoder_family(encoder: str) -> type[Encoder] | Family:
    """The class of the family that builds encoder ``encoder``."""
    return ENCODER_FAMILIES[family_name(encoder)]


def encoder_options(
    encoder: str,
    values: Mapping[str, Any] | None = None,
    path: Any = None,
    decoders: Iterable[str] = (),
) -> Any:
    """The family's ``Options`` for ``encoder`` from plain ``values`` (one UserError line
    otherwise; ``path`` names an option as the user wrote it, default
    ``model.net.encoder_options.<key>``), with what depends on the network's ``decoders``
    (its tasks' decoder kinds) chosen by the options' ``for_decoders`` when they have one
    (the ViT's adapter)."""
    family = encoder_family(encoder)
    where = path or (lambda key: f"model.net.encoder_options.{key}")
    owner = f"the {family_name(encoder)} encoder family"
    options = parse_options(family.Options, dict(values or {}), owner, where)
    resolve = getattr(options, "for_decoders", None)
    if resolve is None:
        return options
    try:
        return resolve(frozenset(filter(_is_str, decoders)))
    except OptionError as e:  # an option that does not fit what the decoders chose
        raise UserError(f"{where(e.key)}: {e.problem}") from None


def _is_str(value: object) -> bool:
    return isinstance(value, str)


def build_encoder(
    name: str,
    weights: str | None = None,
    options: Any = None,
    task: str | None = None,
) -> nn.Module:
    """Encoder ``name`` with ``options`` (its family's ``Options``, or a mapping of them;
    None: the defaults) and random weights (``weights=None``), a published file
    (a key the family publishes, e.g. ``"imagenet"``) or a file: a state dict in the
    family's layout, or a scenemtl checkpoint whose encoder (that of ``task`` if it has
    one per task) is loaded strictly."""
    family = encoder_family(name)
    if options is None or isinstance(options, Mapping):
        options = encoder_options(name, options)
    encoder = family.build(name, options)
    if weights is None:
        return encoder
    published = family.published_weights(name, weights, options)
    if published is not None:
        state = published.load()
        source = f"{published.what} {published.file_name}"
    else:
        state = load_weights_file(weights)
        source = f"weights file {weights}"
        if is_checkpoint(state):
            state = encoder_state_from_checkpoint(state, task, f"checkpoint {weights}")
            source = f"the encoder of checkpoint {weights}"
    load = getattr(encoder, "load_pretrained", None)
    if load is not None:
        load(state, source)
    else:
        load_strict(encoder, state, source)
    return encoder
