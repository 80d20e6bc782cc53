"""The architecture registry, and building a network from a :class:`ModelConfig`.

A new architecture is one file with a :class:`~scenemtl.models.base.MultiTaskNet`
subclass (its options in its own ``Options`` dataclass) plus one line in
:data:`ARCHITECTURES`. Only the layers above the models (engine, commands, studies)
import this module; no module of ``scenemtl.models`` does.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from torch import nn

from scenemtl.errors import UserError
from scenemtl.models.base import MultiTaskNet
from scenemtl.models.branched import BranchedNet
from scenemtl.models.config import FLAT_OPTIONS, ModelConfig
from scenemtl.models.cross_stitch import CrossStitchNet
from scenemtl.models.distillation import DistillationNet
from scenemtl.models.invpt import InvPTNet
from scenemtl.models.joint import JointNet
from scenemtl.models.mtan import MTANNet
from scenemtl.models.mtinet import MTINet
from scenemtl.models.nddr import NDDRNet
from scenemtl.models.padnet import PADNet
from scenemtl.models.task_specific import TaskSpecificNet

ARCHITECTURES: dict[str, type[MultiTaskNet]] = {
    "joint": JointNet,
    "branched": BranchedNet,
    "distillation": DistillationNet,
    "task_specific": TaskSpecificNet,
    "mtan": MTANNet,
    "cross_stitch": CrossStitchNet,
    "nddr": NDDRNet,
    "padnet": PADNet,
    "mtinet": MTINet,
    "invpt": InvPTNet,
}


def architecture_class(cfg: ModelConfig) -> type[MultiTaskNet]:
    """The class of ``cfg.architecture``; one UserError line for an unknown name."""
    if cfg.architecture not in ARCHITECTURES:
        raise UserError(
            f"model.net.architecture: unknown architecture {cfg.architecture!r}; "
            f"known: {', '.join(ARCHITECTURES)}"
        )
    return ARCHITECTURES[cfg.architecture]


def check_config(cfg: ModelConfig) -> None:
    """What :meth:`ModelConfig.validate` cannot check without the architectures: the
    architecture's name, its ``options`` and that it can run on the encoder's family.
    One :class:`UserError` line for the first problem."""
    cfg.validate()
    arch = architecture_class(cfg)
    arch.check_config(cfg)


def build_model(cfg: ModelConfig, heads: Mapping[str, int]) -> nn.Module:
    """The network ``cfg`` describes (see :class:`~scenemtl.models.base.MultiTaskNet`).

    Args:
        cfg: the architecture.
        heads: task name -> output channels, in output order.
    """
    check_config(cfg)
    return ARCHITECTURES[cfg.architecture](cfg, heads)


def net_fields(values: Mapping[str, Any]) -> dict[str, Any]:
    """A ``model.net`` mapping (a config section, a checkpoint's hyperparameters) as
    comparable plain values: every field of :class:`ModelConfig` with the flat keys
    moved into their sections and each section completed with the defaults of the
    chosen architecture, encoder family and decoder, keyed ``"options.<name>"``,
    ``"encoder_options.<name>"`` and ``"decoder_options.<name>"``; tuples as lists. Used
    to tell whether two configs describe the same network."""
    cfg = ModelConfig.from_dict(values)
    arch = architecture_class(cfg)
    skip = {"options", "encoder_options", "decoder_options", *FLAT_OPTIONS}
    fields = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg) if f.name not in skip}
    for section, parsed in (
        ("options", arch.parse_options(cfg)),
        ("encoder_options", cfg.encoder_config()),
        ("decoder_options", cfg.decoder_config()),
    ):
        for name, value in vars(parsed).items():
            fields[f"{section}.{name}"] = value
    return {k: list(v) if isinstance(v, tuple) else v for k, v in fields.items()}
