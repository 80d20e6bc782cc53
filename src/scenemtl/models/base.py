"""What every multi-task architecture shares: the encoder, the output contract, its
options, and the factories that turn a :class:`~scenemtl.models.config.ModelConfig` into
blocks."""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from scenemtl.errors import UserError
from scenemtl.models.blocks import (
    ASPP,
    DeepLabV3PlusDecoder,
    Projection,
    VortexPooling,
    resize,
)
from scenemtl.models.config import option_path
from scenemtl.models.dpt import DPTHead
from scenemtl.models.encoders.base import Encoder
from scenemtl.models.encoders.registry import build_encoder, encoder_family, family_name
from scenemtl.models.options import NoOptions, parse_options

if TYPE_CHECKING:
    from scenemtl.models.config import ModelConfig


class MultiTaskNet(nn.Module):
    """Base class of the architectures.

    Output contract of ``forward(x)``, x float [B, 3, H, W] ImageNet-normalized:
    ``{task name: [Tensor, ...]}`` with one tensor per entry of :attr:`output_stages`, in
    that order, each at the input size [B, heads[task], H, W] (what the task's
    :meth:`~scenemtl.tasks.base.Task.decode` reads). The LAST tensor is the prediction;
    earlier ones are deep-supervision outputs that only feed the loss.

    The network is split in two, so that the balancing methods can tell what the tasks
    share: ``forward(x) == resize(decode(shared_forward(x)))``.

    * :meth:`shared_forward` computes the **shared representation**: a dict of tensors
      that every task's branch reads (default: the encoder's pyramid). Only the modules of
      :meth:`shared_modules` take part in it.
    * :meth:`decode` turns the shared representation into per-task outputs using only
      parameters outside :meth:`shared_modules` (the task-specific ones). Where tasks
      exchange features after the shared representation (distillation, padnet, mtinet),
      one task's parameters also reach the other tasks' outputs; they still belong to
      that task's branch, and the representation is still all the tasks read.

    A network whose tasks exchange information along the way (cross-stitch units, ...),
    or share weights applied after task-specific ones (MTAN's shared refinement blocks),
    has no shared representation: it sets :attr:`has_shared_representation` to False and
    lists in :meth:`shared_modules` every module whose parameters several tasks' losses
    depend on, and every module that runs before the cut (MTAN's early masks). Its
    :meth:`shared_forward` still runs everything up to the point after which the tasks
    no longer interact (cross-stitch, NDDR: the mixed per-task trunks; MTAN: each task's
    chain up to the last shared refinement; keyed ``"task/scale"``), so that
    :meth:`decode` keeps using task-specific parameters only; but task t reads only its
    own entries (and those shared by all), so the dict is not *one* representation
    (representation-level methods such as MGDA-UB do not apply).

    A network whose tasks share **no parameter at all** (``task_specific``: one encoder,
    ASPP and decoder per task) also sets :attr:`has_shared_representation` to False;
    :meth:`shared_modules` is empty (so :meth:`shared_parameters` is ``[]``) and
    :meth:`shared_forward` returns the input unchanged as ``{"image": x}``. Per-task
    gradients then touch disjoint parameters: gradient-level balancing has nothing to
    combine and reduces to the loss-weighted sum; loss-level methods apply as usual.

    Architectures with one encoder per task set :attr:`single_encoder` to False; the base
    class then builds no ``self.encoder``. Architectures that run the encoder stage by
    stage set :attr:`needs_hierarchical_encoder`.

    An architecture with options of its own declares them as a dataclass ``Options`` in
    its class (see :mod:`scenemtl.models.options`); users give them as
    ``model.net.options``, and the instance reads them as ``self.options``.

    Subclasses build their heads in ``__init__`` (after ``super().__init__(cfg, heads)``)
    and implement :meth:`decode` (and :meth:`shared_forward` / :meth:`shared_modules`
    when more than the encoder is shared).

    Args:
        cfg: the architecture's configuration.
        heads: task name -> output channels, in output order (the run's tasks; a
            checkpoint from before tasks were data has ``tasks.legacy_heads()``).
    """

    output_stages: ClassVar[tuple[str, ...]] = ("final",)
    """Names of the per-task outputs, in list order; the last one is the prediction."""
    min_tasks: ClassVar[int] = 1
    """Fewest tasks the architecture makes sense for."""
    has_shared_representation: ClassVar[bool] = True
    """Whether :meth:`shared_forward` is a representation all tasks read and nothing else."""
    supports_depth_bins: ClassVar[bool] = False
    """Whether each task's prediction comes from a :func:`make_decoder` decoder, which
    ``depth_bins`` (adaptive bins) replaces the prediction conv of."""
    single_encoder: ClassVar[bool] = True
    """Whether the base class builds ``self.encoder``, the one trunk every task reads."""
    needs_hierarchical_encoder: ClassVar[bool] = False
    """Whether the architecture runs the encoder stage by stage (a
    :class:`~scenemtl.models.encoders.base.HierarchicalEncoder` family)."""
    supports_dpt: ClassVar[bool] = False
    """Whether ``model.net.decoder: dpt`` can replace the DeepLabV3+ decoder of a task
    (the architecture builds its decoders through :func:`make_task_decoder`)."""
    Options: ClassVar[type] = NoOptions
    """The architecture's own options (a dataclass with a default for every field)."""

    @classmethod
    def parse_options(cls, cfg: ModelConfig) -> Any:
        """``cfg.options`` as this architecture's :attr:`Options` (one UserError line)."""
        return parse_options(cls.Options, cfg.options, cfg.architecture, option_path("options"))

    @classmethod
    def check_config(cls, cfg: ModelConfig) -> None:
        """What this architecture refuses in ``cfg`` before anything is built: a bad
        option, an encoder family it cannot run on. One UserError line."""
        cls.parse_options(cfg)
        if cfg.uses_dpt and not cls.supports_dpt:
            raise UserError(
                f"model.net.decoder: {cfg.architecture} has no per-task decoder the DPT head "
                "can replace; dpt works with joint, branched, distillation and task_specific"
            )
        family = family_name(cfg.encoder)
        if cls.needs_hierarchical_encoder and not encoder_family(cfg.encoder).hierarchical:
            raise UserError(
                f"model.net.encoder: {cfg.architecture} runs the encoder stage by stage and "
                f"needs a hierarchical encoder family; {cfg.encoder} ({family}) is not one"
            )

    def __init__(self, cfg: ModelConfig, heads: Mapping[str, int]) -> None:
        super().__init__()
        type(self).check_config(cfg)
        self.cfg = cfg
        self.options = type(self).parse_options(cfg)
        self.heads: dict[str, int] = dict(heads)
        self.always_resized: set[str] = set()
        """Tasks whose outputs :meth:`resize_outputs` resamples unconditionally (those
        that can come out at the input size, as a DPT head's)."""
        if len(self.heads) < self.min_tasks:
            raise UserError(
                f"model.net.architecture {cfg.architecture!r} needs at least {self.min_tasks} "
                f"tasks; this run learns {len(self.heads)} ({', '.join(self.heads)})"
            )
        if isinstance(cfg.pooling, Mapping):
            self._warn_other_tasks("pooling", cfg.pooling)
        if isinstance(cfg.decoder, Mapping):
            self._warn_other_tasks("decoder", cfg.decoder)
        self._warn_other_tasks("depth_bins", cfg.depth_bins)
        if cfg.depth_bins and not self.supports_depth_bins:
            raise UserError(
                f"model.net.depth_bins: {cfg.architecture} does not predict through the "
                "DeepLabV3+ decoder; adaptive bins work with branched, task_specific, mtan, "
                "cross_stitch, nddr and padnet"
            )
        if self.single_encoder:
            self.encoder = build_encoder(cfg.encoder, cfg.weights_for(None), cfg.encoder_config())
        elif isinstance(cfg.weights, Mapping):
            self._warn_other_tasks("weights", cfg.weights)

    def _warn_other_tasks(self, field: str, per_task: Mapping[str, Any]) -> None:
        """Warn about entries of a per-task ``model.net`` field for tasks this run does not
        learn: a warning, not an error (a single-task run of a per-task config is
        legitimate, and a typo still shows)."""
        for name in sorted(set(per_task) - set(self.heads)):
            warnings.warn(
                f"model.net.{field}: this run has no task {name!r} (tasks: "
                f"{', '.join(self.heads)}); its entry is ignored",
                stacklevel=3,
            )

    def shared_forward(self, x: Tensor) -> dict[Any, Tensor]:
        """The shared representation of ``x`` [B, 3, H, W]; default: the encoder's pyramid
        ``{scale: [B, C_s, H/s, W/s]}``."""
        return self.encoder(x)

    def shared_modules(self) -> list[nn.Module]:
        """The modules every task shares (default: the encoder); may be empty."""
        return [self.encoder]

    def shared_parameters(self) -> list[nn.Parameter]:
        """Trainable parameters of :meth:`shared_modules`, each once, in module order."""
        seen: set[int] = set()
        params = []
        for module in self.shared_modules():
            for p in module.parameters():
                if p.requires_grad and id(p) not in seen:
                    seen.add(id(p))
                    params.append(p)
        return params

    def task_parameters(self) -> list[nn.Parameter]:
        """Trainable parameters outside :meth:`shared_modules` (the tasks' own)."""
        shared = {id(p) for p in self.shared_parameters()}
        return [p for p in self.parameters() if p.requires_grad and id(p) not in shared]

    def mixing_parameters(self) -> list[nn.Parameter]:
        """Trainable parameters that mix the tasks' features (cross-stitch units, NDDR
        layers), which the optimizer gives :attr:`mixing_lr_multiplier` times the base
        learning rate; none by default."""
        return []

    @property
    def mixing_lr_multiplier(self) -> float:
        """Learning-rate multiplier of :meth:`mixing_parameters` (1 here; architectures
        with mixing units take it from their options)."""
        return 1.0

    def decode(self, shared: dict[Any, Tensor]) -> dict[str, list[Tensor]]:
        """Per-task outputs at any resolution from the shared representation."""
        raise NotImplementedError

    def resize_outputs(
        self, outputs: dict[str, list[Tensor]], size: tuple[int, int] | torch.Size
    ) -> dict[str, list[Tensor]]:
        """Every output bilinearly resized to ``size`` (the input's [H, W]).

        The outputs of the tasks in :attr:`always_resized` are resampled even when they
        already have that size (an exact identity): a DPT head predicts at
        4*ceil(H/4) x 4*ceil(W/4), the input size for some inputs only, and a graph traced
        at such a size (ONNX export) must still resize at every other."""
        return {
            task: [
                F.interpolate(o, size=tuple(size), mode="bilinear", align_corners=False)
                if task in self.always_resized
                else resize(o, size)
                for o in outs
            ]
            for task, outs in outputs.items()
        }

    def forward(self, x: Tensor) -> dict[str, list[Tensor]]:
        return self.resize_outputs(self.decode(self.shared_forward(x)), x.shape[-2:])


def task_key(name: str, scale: int | str) -> str:
    """Key of task ``name``'s features at ``scale`` in a :meth:`MultiTaskNet.shared_forward`
    that holds per-task entries (cross-stitch, NDDR, MTAN with shared refinement)."""
    return f"{name}/{scale}"


def make_bottleneck(cfg: ModelConfig, cin: int, task: str | None = None) -> nn.Module:
    """The context module on the bottleneck: ASPP or vortex pooling (``cfg.pooling``, for
    ``task`` when it is a per-task mapping; ``task=None`` for a module all tasks share),
    or the 1x1 projection when ``cfg.aspp`` is false. [B, cin, h, w] -> [B, C, h, w]."""
    if cfg.aspp:
        vortex = cfg.pooling_for(task) == "vortex"
        return (VortexPooling if vortex else ASPP)(
            cin,
            cfg.channels,
            cfg.vortex_rates if vortex else cfg.aspp_rates,
            squeeze_excitation=cfg.squeeze_excitation,
            se_reduction=cfg.se_reduction,
        )
    return Projection(
        cin, cfg.channels, squeeze_excitation=cfg.squeeze_excitation, se_reduction=cfg.se_reduction
    )


def make_encoder(cfg: ModelConfig, task: str) -> Encoder:
    """Task ``task``'s encoder as ``cfg`` describes it (for architectures with one per
    task), initialized from ``cfg.weights_for(task)``."""
    return build_encoder(cfg.encoder, cfg.weights_for(task), cfg.encoder_config(), task)


def make_dpt_head(
    cfg: ModelConfig,
    pyramid_channels: Mapping[int, int],
    out_channels: int,
    task: str | None = None,
) -> DPTHead:
    """The DPT head (``model.net.decoder: dpt``) for ``task`` (None: one head all tasks
    share) on an encoder pyramid ``pyramid_channels`` (stride -> channels), with
    ``cfg.decoder_options``. Its forward takes the pyramid and predicts at stride 1 of the
    stride-4 grid."""
    if task is not None and task in cfg.depth_bins:
        raise UserError(
            f"model.net.depth_bins: task {task!r} uses the dpt decoder; adaptive bins replace "
            "the prediction conv of the DeepLabV3+ decoder"
        )
    if task is None and cfg.depth_bins:
        raise UserError(
            "model.net.depth_bins: adaptive bins need a DeepLabV3+ decoder per task; this "
            "network has one DPT head for all tasks"
        )
    options = cfg.decoder_config()
    return DPTHead.for_pyramid(pyramid_channels, out_channels, **options.head_kwargs(task))


def make_decoder(
    cfg: ModelConfig,
    pyramid_channels: Mapping[int, int],
    out_channels: int,
    task: str | None = None,
) -> DeepLabV3PlusDecoder:
    """The DeepLabV3+ decoder configured by ``cfg``, reading a ``cfg.channels`` bottleneck;
    for ``task`` (None: a decoder all tasks share) with adaptive bins when
    ``cfg.depth_bins`` names it."""
    n_bins = cfg.depth_bins.get(task, 0) if task is not None else 0
    if task is None and cfg.depth_bins:
        raise UserError(
            f"model.net.depth_bins: {cfg.architecture} has one decoder for all tasks; "
            "adaptive bins need a decoder per task"
        )
    if n_bins and out_channels != 1:
        raise UserError(
            f"model.net.depth_bins: task {task!r} has {out_channels} output channels; "
            "adaptive bins predict one value per pixel (a depth task)"
        )
    return DeepLabV3PlusDecoder(
        cfg.channels,
        pyramid_channels,
        out_channels,
        channels=cfg.channels,
        skip_channels=cfg.skip_channels,
        skip=cfg.skip,
        extra_skips=cfg.extra_skips,
        attention_skips=cfg.attention_skips,
        adaptive_bins=n_bins,
        squeeze_excitation=cfg.squeeze_excitation,
        se_reduction=cfg.se_reduction,
    )
