"""Model configuration and the architecture registry.

A new architecture is one file with a :class:`~scenemtl.models.base.MultiTaskNet`
subclass plus one line in :data:`ARCHITECTURES`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from torch import nn

from scenemtl.errors import UserError
from scenemtl.models.base import MultiTaskNet
from scenemtl.models.branched import BranchedNet
from scenemtl.models.cross_stitch import CrossStitchNet, MixedTrunksNet
from scenemtl.models.distillation import DistillationNet
from scenemtl.models.encoder import ENCODERS, check_width
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
}

_BOOL_FIELDS = (
    "aspp",
    "skip",
    "extra_skips",
    "attention_skips",
    "squeeze_excitation",
    "distill_alpha",
)
POOLINGS = ("aspp", "vortex")
"""Context modules on the bottleneck (``pooling``)."""
_POSITIVE_INT_FIELDS = ("channels", "skip_channels", "se_reduction")
MTAN_REFINEMENTS = ("shared", "per_task")
"""Whether MTAN's refinement blocks ``f_j`` are shared by the tasks (the authors') or
one per task (``mtan_refinement``)."""


@dataclass
class ModelConfig:
    """Everything that defines a network (the ``model.net`` section of a config).

    Attributes:
        architecture: a key of :data:`ARCHITECTURES` ("joint", "branched", "distillation",
            "task_specific", "mtan", "cross_stitch", "nddr", "padnet", "mtinet").
        encoder: "resnet18", "resnet34" (BasicBlock) or "resnet50", "resnet101" (Bottleneck,
            4x wider stages; every architecture reads the widths from the encoder's
            ``channels`` table).
        weights: encoder initialization: None (random, zero-init residuals), "imagenet"
            (torchvision's file via the torch hub cache), a path to a ``.pth`` state dict
            (torchvision's layout) or to a scenemtl checkpoint (its encoder is taken, e.g.
            a single-task run's); or, for architectures with one encoder per task
            (task_specific, cross_stitch, nddr), a mapping task -> one of those, naming
            every task: each trunk starts from its own file (the authors of cross-stitch
            and NDDR start each trunk from a trained single-task network).
        encoder_width: channels of the encoder's stem and first stage (64, the published
            ResNets; the stages are 1, 2, 4, 8 times it). Another width trains from scratch
            only; 16 makes a ResNet-18 16x smaller (the tests' networks).
        dilation: replace the stride of layer2, layer3, layer4 by dilation; at most two,
            so that the output stride is 8, 16 or 32 and the 4x skip stays a separate level.
        aspp: ASPP on the bottleneck; False = the course template's 1x1 projection.
        aspp_rates: dilation rates of the three 3x3 ASPP branches.
        skip: DeepLabV3+ decoder with the 4x skip; False = the template's stub decoder (a
            1x1 prediction conv on the bottleneck).
        extra_skips: decoder also fuses the 8x (when finer than the bottleneck) and 2x levels.
        squeeze_excitation: SE blocks after ASPP and before every prediction conv.
        se_reduction: SE bottleneck ratio.
        channels: width of ASPP and decoders (256 in DeepLabV3+).
        skip_channels: width the 4x skip is reduced to (48 in DeepLabV3+).
        final_decoder_convs: 3x3 convs in each final decoder of ``distillation``.
        pooling: context module on the bottleneck when ``aspp`` is true: "aspp" or
            "vortex" (vortex pooling, report 003), or a mapping task -> kind for
            architectures with one per task (tasks left out get ASPP).
        vortex_rates: dilation rates of the three 3x3 vortex pooling branches.
        attention_skips: the decoder's skip fuses the 4x, 8x and 16x encoder levels with
            learned per-pixel attention (report 002) instead of the 4x level alone.
        depth_bins: task -> number of adaptive depth bins (AdaBins-style head, report 002
            §4) replacing that task's prediction conv; one-channel tasks of architectures
            with a DeepLabV3+ decoder per task.
        distill_alpha: ``distillation`` scales each distilled feature map by a learned
            scalar initialized at zero (report 000, after the Dual Attention Network), so
            training starts from the branched network.
        mtan_refinement: ``mtan``'s refinement blocks ``f_j``: "shared" by the tasks (the
            authors') or "per_task" (then the encoder's features are the one shared
            representation, as representation-level balancing needs).
        mixing_lr_multiplier: learning rate of the architecture's mixing parameters
            (cross-stitch units, NDDR layers) as a multiple of the base rate; None = the
            authors' value (100 for cross_stitch and nddr, Vandenhende et al.'s code).
    """

    architecture: str = "joint"
    encoder: str = "resnet34"
    weights: str | dict[str, str] | None = None
    encoder_width: int = 64
    dilation: tuple[bool, bool, bool] = (False, False, False)
    aspp: bool = True
    aspp_rates: tuple[int, int, int] = (6, 12, 18)
    skip: bool = True
    extra_skips: bool = False
    squeeze_excitation: bool = False
    se_reduction: int = 16
    channels: int = 256
    skip_channels: int = 48
    final_decoder_convs: int = 2
    pooling: str | dict[str, str] = "aspp"
    vortex_rates: tuple[int, int, int] = (3, 9, 27)
    attention_skips: bool = False
    distill_alpha: bool = False
    depth_bins: dict[str, int] = dataclasses.field(default_factory=dict)
    mtan_refinement: str = "shared"
    mixing_lr_multiplier: float | None = None

    def __post_init__(self) -> None:
        # YAML and JSON give lists; the dataclass promises tuples
        if isinstance(self.dilation, list):
            self.dilation = tuple(self.dilation)  # type: ignore[assignment]
        if isinstance(self.aspp_rates, list):
            self.aspp_rates = tuple(self.aspp_rates)  # type: ignore[assignment]
        if isinstance(self.vortex_rates, list):
            self.vortex_rates = tuple(self.vortex_rates)  # type: ignore[assignment]
        if isinstance(self.pooling, Mapping):
            self.pooling = dict(self.pooling)
        if isinstance(self.depth_bins, Mapping):
            self.depth_bins = dict(self.depth_bins)
        if isinstance(self.weights, Mapping):
            self.weights = dict(self.weights)
        self.validate()

    def weights_for(self, task: str | None) -> str | None:
        """The initialization of ``task``'s encoder (``task=None``: the one encoder all
        tasks share, which a per-task mapping cannot give)."""
        if not isinstance(self.weights, dict):
            return self.weights
        if task is None:
            raise UserError(
                f"model.net.weights: {self.architecture} has one encoder for all tasks; a "
                "per-task mapping needs one encoder per task (task_specific, cross_stitch, "
                "nddr)"
            )
        if task not in self.weights:
            raise UserError(
                f"model.net.weights: no entry for task {task!r}; a per-task mapping names "
                "every task's initialization (imagenet or a file)"
            )
        return self.weights[task]

    def pooling_for(self, task: str | None) -> str:
        """The context module kind of ``task`` ("aspp" or "vortex"); ``task=None`` asks
        for one module shared by every task, which a per-task mapping cannot give."""
        if isinstance(self.pooling, str):
            return self.pooling
        if task is None:
            raise UserError(
                f"model.net.pooling: {self.architecture} has one context module for all "
                "tasks; give one kind (aspp or vortex), not a per-task mapping"
            )
        return self.pooling.get(task, "aspp")

    def validate(self) -> None:
        """Raise :class:`UserError` (one line naming the field) for any bad value."""
        if not isinstance(self.architecture, str) or self.architecture not in ARCHITECTURES:
            raise UserError(
                f"model.net.architecture: unknown architecture {self.architecture!r}; "
                f"known: {', '.join(ARCHITECTURES)}"
            )
        if not isinstance(self.encoder, str) or self.encoder not in ENCODERS:
            raise UserError(
                f"model.net.encoder: unknown encoder {self.encoder!r}; known: {', '.join(ENCODERS)}"
            )
        try:
            check_width(self.encoder_width)
        except UserError as e:
            raise UserError(f"model.net.{e}") from None
        w = self.weights
        if isinstance(w, dict):
            fits = bool(w) and all(
                isinstance(k, str) and isinstance(v, str) and v for k, v in w.items()
            )
        else:
            fits = w is None or (isinstance(w, str) and bool(w))
        if not fits:
            raise UserError(
                "model.net.weights: expected null, 'imagenet', a file path or a mapping task "
                f"-> one of those, got {w!r}"
            )
        if self.mtan_refinement not in MTAN_REFINEMENTS:
            raise UserError(
                f"model.net.mtan_refinement: expected one of {', '.join(MTAN_REFINEMENTS)}, "
                f"got {self.mtan_refinement!r}"
            )
        m = self.mixing_lr_multiplier
        if m is not None and (
            isinstance(m, bool) or not isinstance(m, (int, float)) or not 0 < m < float("inf")
        ):
            raise UserError(
                f"model.net.mixing_lr_multiplier: expected a positive number or null, got {m!r}"
            )
        if m is not None and not issubclass(ARCHITECTURES[self.architecture], MixedTrunksNet):
            raise UserError(
                "model.net.mixing_lr_multiplier: only cross_stitch and nddr have mixing units, "
                f"not {self.architecture!r}"
            )
        for name in _BOOL_FIELDS:
            if not isinstance(getattr(self, name), bool):
                raise UserError(
                    f"model.net.{name}: expected true or false, got {getattr(self, name)!r}"
                )
        for name in _POSITIVE_INT_FIELDS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise UserError(f"model.net.{name}: expected a positive integer, got {value!r}")
        d = self.final_decoder_convs
        if isinstance(d, bool) or not isinstance(d, int) or not 0 <= d <= 8:
            raise UserError(f"model.net.final_decoder_convs: expected an integer 0..8, got {d!r}")
        if (
            not isinstance(self.dilation, tuple)
            or len(self.dilation) != 3
            or not all(isinstance(v, bool) for v in self.dilation)
        ):
            raise UserError(
                "model.net.dilation: expected 3 true/false flags for layer2, layer3, layer4, "
                f"got {self.dilation!r}"
            )
        if all(self.dilation):
            raise UserError(
                "model.net.dilation: dilating all three stages gives output stride 4, where the "
                "bottleneck and the 4x skip coincide; dilate at most two stages"
            )
        rates = self.aspp_rates
        if (
            not isinstance(rates, tuple)
            or len(rates) != 3
            or not all(isinstance(r, int) and not isinstance(r, bool) and r >= 1 for r in rates)
        ):
            raise UserError(
                f"model.net.aspp_rates: expected 3 positive integers, got {self.aspp_rates!r}"
            )
        if self.extra_skips and not self.skip:
            raise UserError(
                "model.net.extra_skips: needs skip: true (extra skips extend the 4x skip)"
            )
        if self.distill_alpha and self.architecture != "distillation":
            raise UserError(
                "model.net.distill_alpha: only the distillation architecture distills "
                f"features, not {self.architecture!r}"
            )
        if self.attention_skips and not self.skip:
            raise UserError("model.net.attention_skips: needs skip: true (it replaces the 4x skip)")
        rates = self.vortex_rates
        if (
            not isinstance(rates, tuple)
            or len(rates) != 3
            or not all(isinstance(r, int) and not isinstance(r, bool) and r >= 1 for r in rates)
        ):
            raise UserError(
                f"model.net.vortex_rates: expected 3 positive integers, got {self.vortex_rates!r}"
            )
        kinds = list(self.pooling.values()) if isinstance(self.pooling, dict) else [self.pooling]
        if isinstance(self.pooling, dict) and not all(isinstance(k, str) for k in self.pooling):
            raise UserError(f"model.net.pooling: expected task names as keys, got {self.pooling!r}")
        bad = [k for k in kinds if not isinstance(k, str) or k not in POOLINGS]
        if bad or not isinstance(self.pooling, (str, dict)):
            raise UserError(
                "model.net.pooling: expected one of aspp, vortex or a mapping task -> kind, "
                f"got {self.pooling!r}"
            )
        bins = self.depth_bins
        if not isinstance(bins, dict) or not all(
            isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool) and 2 <= v <= 1024
            for k, v in bins.items()
        ):
            raise UserError(
                "model.net.depth_bins: expected a mapping task -> number of bins (2..1024), "
                f"got {bins!r}"
            )
        if "vortex" in kinds and not self.aspp:
            raise UserError("model.net.pooling: vortex pooling replaces ASPP; it needs aspp: true")

    @property
    def output_stride(self) -> int:
        """Downscale factor of the encoder's bottleneck: 32 halved per dilated stage."""
        return 32 // 2 ** sum(self.dilation)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | None) -> ModelConfig:
        """A config from a plain mapping (a YAML section); unknown keys -> UserError."""
        if values is None:
            return cls()
        if not isinstance(values, Mapping):
            raise UserError(
                f"model.net: expected a mapping of options, got {type(values).__name__}"
            )
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise UserError(
                f"model.net: unknown option {unknown[0]!r}; known: {', '.join(sorted(known))}"
            )
        return cls(**dict(values))


def build_model(cfg: ModelConfig, heads: Mapping[str, int] | None = None) -> nn.Module:
    """The network ``cfg`` describes (see :class:`~scenemtl.models.base.MultiTaskNet`).

    Args:
        cfg: the architecture.
        heads: task name -> output channels (default: 19-class semseg and depth).
    """
    cfg.validate()
    return ARCHITECTURES[cfg.architecture](cfg, heads)
