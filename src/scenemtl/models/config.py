"""The ``model.net`` section of a config: :class:`ModelConfig`.

This module imports no architecture and not the registry: every architecture reads its
configuration from here, and :mod:`scenemtl.models.registry` (which imports the
architectures) checks what depends on the chosen architecture
(:func:`~scenemtl.models.registry.check_config`). The encoder part is checked here,
through the encoder registry, which imports no architecture either.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from scenemtl.errors import UserError
from scenemtl.models.dpt import DPTOptions
from scenemtl.models.encoders.registry import encoder_family, encoder_options
from scenemtl.models.options import NoOptions, parse_options

_BOOL_FIELDS = ("aspp", "skip", "extra_skips", "attention_skips", "squeeze_excitation")
POOLINGS = ("aspp", "vortex")
"""Context modules on the bottleneck (``pooling``)."""
DECODERS: dict[str, type] = {"deeplabv3plus": NoOptions, "dpt": DPTOptions}
"""Per-task decoder kinds (``decoder``) -> the options class of ``decoder_options``:
the DeepLabV3+ decoder (configured by the flat fields ``aspp``, ``skip``, ...) and the DPT
head (:mod:`scenemtl.models.dpt`)."""
_POSITIVE_INT_FIELDS = ("channels", "skip_channels", "se_reduction")
MAX_CHANNELS = 4096
"""Largest decoder width (``channels``, ``skip_channels``; and ``se_reduction``): twice
the widest layer of a ResNet-50. Checked before a layer is built (10^9 channels asked
for terabytes)."""

FLAT_OPTIONS: dict[str, tuple[str, str, Any]] = {
    "dilation": ("encoder_options", "dilation", (False, False, False)),
    "encoder_width": ("encoder_options", "width", 64),
    "final_decoder_convs": ("options", "final_decoder_convs", 2),
    "distill_alpha": ("options", "distill_alpha", False),
    "mtan_refinement": ("options", "mtan_refinement", "shared"),
    "mixing_lr_multiplier": ("options", "mixing_lr_multiplier", None),
}
"""Flat ``model.net`` keys kept for configs, command lines and checkpoints written before
the options moved to their architecture or encoder family: flat key -> (section, option,
the value the flat field had by default). The one place they are translated: a flat
value equal to that default is dropped (checkpoints list every field, whatever the
architecture), any other moves into its section. The owners' defaults are these values
(tests/models/test_options.py checks it)."""


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def option_path(section: str) -> Callable[[str], str]:
    """Option name -> its place in a config as error lines name it: the flat key where
    one is kept (``model.net.dilation``), else ``model.net.<section>.<option>``."""
    flat = {option: key for key, (sec, option, _) in FLAT_OPTIONS.items() if sec == section}
    return lambda option: f"model.net.{flat.get(option, f'{section}.{option}')}"


@dataclass
class ModelConfig:
    """Everything that defines a network (the ``model.net`` section of a config).

    Attributes:
        architecture: a key of :data:`scenemtl.models.registry.ARCHITECTURES` ("joint",
            "branched", "distillation", "task_specific", "mtan", "cross_stitch", "nddr",
            "padnet", "mtinet").
        encoder: an encoder name of a family in
            :data:`scenemtl.models.encoders.registry.ENCODER_FAMILIES`: "resnet18",
            "resnet34" (BasicBlock) or "resnet50", "resnet101" (Bottleneck, 4x wider
            stages; every architecture reads the widths from the encoder's ``channels``).
        weights: encoder initialization: None (random), a file the encoder's family
            publishes ("imagenet": torchvision's file via the torch hub cache for the
            ResNets), a path to a ``.pth`` state dict (the family's layout) or to a
            scenemtl checkpoint (its encoder is taken, e.g. a single-task run's); or, for
            architectures with one encoder per task (task_specific, cross_stitch, nddr),
            a mapping task -> one of those, naming every task: each trunk starts from its
            own file (the authors of cross-stitch and NDDR start each trunk from a
            trained single-task network).
        encoder_options: the encoder family's options (``ResNetOptions``: ``dilation``,
            ``width``); the flat ``dilation`` and ``encoder_width`` are accepted for them.
        options: the architecture's own options (its ``Options`` class: ``mtan``'s
            ``mtan_refinement``, ``distillation``'s ``final_decoder_convs`` and
            ``distill_alpha``, ``cross_stitch``/``nddr``'s ``mixing_lr_multiplier``);
            the flat keys of :data:`FLAT_OPTIONS` are accepted for them.
        aspp: ASPP on the bottleneck; False = the course template's 1x1 projection.
        aspp_rates: dilation rates of the three 3x3 ASPP branches.
        skip: DeepLabV3+ decoder with the 4x skip; False = the template's stub decoder (a
            1x1 prediction conv on the bottleneck).
        extra_skips: decoder also fuses the 8x (when finer than the bottleneck) and 2x levels.
        squeeze_excitation: SE blocks after ASPP and before every prediction conv.
        se_reduction: SE bottleneck ratio.
        channels: width of ASPP and decoders (256 in DeepLabV3+).
        skip_channels: width the 4x skip is reduced to (48 in DeepLabV3+).
        pooling: context module on the bottleneck when ``aspp`` is true: "aspp" or
            "vortex" (vortex pooling, report 003), or a mapping task -> kind for
            architectures with one per task (tasks left out get ASPP).
        vortex_rates: dilation rates of the three 3x3 vortex pooling branches.
        attention_skips: the decoder's skip fuses the 4x, 8x and 16x encoder levels with
            learned per-pixel attention (report 002) instead of the 4x level alone.
        depth_bins: task -> number of adaptive depth bins (AdaBins-style head, report 002
            §4) replacing that task's prediction conv; one-channel tasks of architectures
            with a DeepLabV3+ decoder per task.
        decoder: each task's decoder: "deeplabv3plus" (context module + DeepLabV3+, the
            fields above) or "dpt" (the DPT head on the encoder pyramid), or a mapping task
            -> kind (tasks left out get deeplabv3plus) for architectures with a decoder
            per task.
        decoder_options: the DPT head's options (:class:`~scenemtl.models.dpt.DPTOptions`:
            ``features``, ``head``, ``use_bn``) when a task's decoder is dpt.
        dilation, encoder_width, final_decoder_convs, distill_alpha, mtan_refinement,
            mixing_lr_multiplier: the flat keys of :data:`FLAT_OPTIONS`, accepted as
            input only; after construction they are None and their values are in
            ``encoder_options`` / ``options``.
    """

    architecture: str = "joint"
    encoder: str = "resnet34"
    weights: str | dict[str, str] | None = None
    encoder_options: dict[str, Any] = dataclasses.field(default_factory=dict)
    options: dict[str, Any] = dataclasses.field(default_factory=dict)
    aspp: bool = True
    aspp_rates: tuple[int, int, int] = (6, 12, 18)
    skip: bool = True
    extra_skips: bool = False
    squeeze_excitation: bool = False
    se_reduction: int = 16
    channels: int = 256
    skip_channels: int = 48
    pooling: str | dict[str, str] = "aspp"
    vortex_rates: tuple[int, int, int] = (3, 9, 27)
    attention_skips: bool = False
    depth_bins: dict[str, int] = dataclasses.field(default_factory=dict)
    decoder: str | dict[str, str] = "deeplabv3plus"
    decoder_options: dict[str, Any] = dataclasses.field(default_factory=dict)
    # flat keys kept for compatibility (FLAT_OPTIONS); None after construction
    dilation: tuple[bool, bool, bool] | None = None
    encoder_width: int | None = None
    final_decoder_convs: int | None = None
    distill_alpha: bool | None = None
    mtan_refinement: str | None = None
    mixing_lr_multiplier: float | None = None

    def __post_init__(self) -> None:
        # YAML and JSON give lists; the dataclass promises tuples
        if isinstance(self.aspp_rates, list):
            self.aspp_rates = tuple(self.aspp_rates)  # type: ignore[assignment]
        if isinstance(self.vortex_rates, list):
            self.vortex_rates = tuple(self.vortex_rates)  # type: ignore[assignment]
        for name in ("pooling", "depth_bins", "weights", "decoder"):
            if isinstance(getattr(self, name), Mapping):
                setattr(self, name, dict(getattr(self, name)))
        for name in ("encoder_options", "options", "decoder_options"):
            # plain data as YAML gives it (lists), so that equal configs compare equal
            if isinstance(getattr(self, name), Mapping):
                setattr(self, name, {k: _plain(v) for k, v in getattr(self, name).items()})
        self._take_flat_options()
        self.validate()

    def _take_flat_options(self) -> None:
        """Move the flat keys of :data:`FLAT_OPTIONS` into their sections."""
        for key, (section, option, default) in FLAT_OPTIONS.items():
            value = getattr(self, key)
            if value is None:
                continue
            setattr(self, key, None)
            target = getattr(self, section)
            if not isinstance(target, dict):
                continue  # validate() names the section
            plain = tuple(value) if isinstance(value, list) else value
            given = target.get(option)
            given = tuple(given) if isinstance(given, list) else given
            if option in target and given != plain:
                if plain == default:
                    continue  # a config's flat default under an explicit option
                raise UserError(
                    f"model.net.{key} ({value!r}) and model.net.{section}.{option} "
                    f"({target[option]!r}) disagree; give one of them"
                )
            if plain != default or isinstance(plain, bool) != isinstance(default, bool):
                target[option] = _plain(value)

    def encoder_config(self) -> Any:
        """The encoder family's ``Options`` instance for :attr:`encoder_options`."""
        path = option_path("encoder_options")
        return encoder_options(self.encoder, self.encoder_options, path, self.decoder_kinds)

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

    def decoder_for(self, task: str | None) -> str:
        """The decoder kind of ``task`` ("deeplabv3plus" or "dpt"); ``task=None`` asks for
        the one decoder every task shares, which a per-task mapping cannot give."""
        if isinstance(self.decoder, str):
            return self.decoder
        if task is None:
            raise UserError(
                f"model.net.decoder: {self.architecture} has one decoder for all tasks; give "
                "one kind (deeplabv3plus or dpt), not a per-task mapping"
            )
        return self.decoder.get(task, "deeplabv3plus")

    @property
    def decoder_kinds(self) -> list[Any]:
        """The decoder kinds the tasks use, as written (a mapping's values)."""
        return list(self.decoder.values()) if isinstance(self.decoder, dict) else [self.decoder]

    @property
    def uses_dpt(self) -> bool:
        """Whether any task's decoder is the DPT head."""
        return "dpt" in self.decoder_kinds

    def decoder_config(self) -> Any:
        """The DPT head's options (:class:`~scenemtl.models.dpt.DPTOptions`) when a task
        uses it, else :class:`~scenemtl.models.options.NoOptions`; one UserError line."""
        kind = "dpt" if self.uses_dpt else "deeplabv3plus"
        path = option_path("decoder_options")
        return parse_options(DECODERS[kind], self.decoder_options, f"the {kind} decoder", path)

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
        """Raise :class:`UserError` (one line naming the field) for any bad value of the
        fields every architecture shares and of the encoder's; what depends on the
        architecture (its name, its ``options``) is checked by
        :func:`scenemtl.models.registry.check_config`."""
        if not isinstance(self.architecture, str) or not self.architecture:
            raise UserError(
                f"model.net.architecture: expected an architecture name, got {self.architecture!r}"
            )
        if not isinstance(self.encoder, str):
            raise UserError(f"model.net.encoder: expected an encoder name, got {self.encoder!r}")
        try:
            encoder_family(self.encoder)
        except UserError as e:
            raise UserError(f"model.net.encoder: {e}") from None
        for section in ("encoder_options", "options", "decoder_options"):
            value = getattr(self, section)
            if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
                raise UserError(
                    f"model.net.{section}: expected a mapping of option names to values, "
                    f"got {value!r}"
                )
        self.encoder_config()
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
        for name in _BOOL_FIELDS:
            if not isinstance(getattr(self, name), bool):
                raise UserError(
                    f"model.net.{name}: expected true or false, got {getattr(self, name)!r}"
                )
        for name in _POSITIVE_INT_FIELDS:
            value = getattr(self, name)
            if (
                isinstance(value, bool)
                or not isinstance(value, int)
                or not 1 <= value <= MAX_CHANNELS
            ):
                raise UserError(
                    f"model.net.{name}: expected an integer in 1..{MAX_CHANNELS}, got {value!r}"
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
        decoders = self.decoder.values() if isinstance(self.decoder, dict) else [self.decoder]
        keys = list(self.decoder) if isinstance(self.decoder, dict) else []
        if (
            not isinstance(self.decoder, (str, dict))
            or not all(isinstance(k, str) for k in keys)
            or not all(isinstance(k, str) and k in DECODERS for k in decoders)
        ):
            raise UserError(
                f"model.net.decoder: expected one of {', '.join(DECODERS)} or a mapping task "
                f"-> kind, got {self.decoder!r}"
            )
        self.decoder_config()
        if "vortex" in kinds and not self.aspp:
            raise UserError("model.net.pooling: vortex pooling replaces ASPP; it needs aspp: true")

    def pyramid(self) -> dict[int, int]:
        """Stride -> channels of the encoder's pyramid, as its family declares it."""
        return encoder_family(self.encoder).declared_pyramid(self.encoder, self.encoder_config())

    @property
    def output_stride(self) -> int:
        """Downscale factor of the encoder's bottleneck (ResNet: 32 halved per dilated
        stage)."""
        return max(self.pyramid())

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
