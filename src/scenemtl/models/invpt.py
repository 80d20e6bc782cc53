"""InvPT decoder (Ye and Xu, ECCV 2022, "Inverted Pyramid Multi-task Transformer for Dense
Scene Understanding"), after the authors' code (prismformore/Multi-Task-Transformer, folder
InvPT: ``models/transformers/transformer_decoder.py`` and ``invpt.py``).

::

    pyramid[coarsest] -> resize to the stride-32 grid -> per task: preliminary decoder
        (2x 3x3 Conv-BN-ReLU) -> 1x1 intermediate head (auxiliary prediction, stride 32)
        concat(features, intermediate prediction) -> 1x1 mix -> T token maps, width D
    stage 0 (stride 32, width D):    joint attention over all tasks' tokens + MLP
    stage 1 (stride 16, width D/2):  per task up-embed (2x up, 2 dilated 3x3) + 3x3(pyramid[16])
                                     joint attention (+ stage 0's attention scores) + MLP
    stage 2 (stride 8,  width D/4):  per task up-embed + 3x3(pyramid[8]), attention + MLP
    per task: sum over stages of (LayerNorm over all tasks' channels, 1x1 back to D for
        stages 1-2, bilinear to stride 4) -> 3x3 Conv-BN-ReLU -> 1x1 head (stride 4)

D = ``embed_dim + pred_channels`` (authors: 512 + 64 = 576). The joint attention of stage i
takes queries from a per-task depthwise 3x3 stride-2 conv + BN (half the stage grid) and
keys/values from per-task average pooling with kernel = stride ``kv_strides[i]`` (2, 4, 8):
every stage then has the same number of keys (the stride-64 grid), so the attention scores
of a stage, upsampled 2x along the query grid, are fused with the next stage's scores by a
1x1 conv over the heads ("attention message passing"). The attention output is upsampled
back to the stage grid before the residual. See docs/models.md ("InvPT") for every
difference to the authors' code and the parameter counts.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from scenemtl.errors import UserError
from scenemtl.models.base import MultiTaskNet, task_key
from scenemtl.models.blocks import ConvBnReLU
from scenemtl.models.encoders.parts import DropPath, Mlp
from scenemtl.models.options import OptionError, check_bool, check_int

if TYPE_CHECKING:
    from scenemtl.models.config import ModelConfig

STAGE_STRIDES = (32, 16, 8)
"""Strides of the three UP-Transformer stages; the decoder's output is at stride 4."""
OUTPUT_STRIDE = 4
AUX_STRIDE = STAGE_STRIDES[0]

AUTHORS_DIMS: dict[str, object] = {
    "embed_dim": 512,
    "pred_channels": 64,
    "num_heads": 2,
    "mlp_ratio": 4.0,
    "drop_path": 0.15,
    "kv_strides": (2, 4, 8),
}
"""The authors' configuration (configs/{nyud,pascal}/*_vitLp16.yml and the decoder's spec)."""
SMALL_DIMS: dict[str, object] = {"embed_dim": 16, "pred_channels": 8, "num_heads": 2}
"""A tiny configuration for tests (widths 24, 12, 6)."""


class InvPTOutput(NamedTuple):
    """What :class:`InvPTDecoder` returns.

    ``final``: task -> [B, channels, ceil(H/4), ceil(W/4)] (stride 4).
    ``auxiliary``: task -> [B, channels, ceil(H/32), ceil(W/32)], the preliminary decoders'
    intermediate predictions (stride 32), supervised with the same loss and weight as the
    final ones in the authors' code (``intermediate_supervision: True``).
    """

    final: dict[str, Tensor]
    auxiliary: dict[str, Tensor]


def grid_at(pyramid: Mapping[int, Tensor], stride: int) -> tuple[int, int]:
    """The map size at ``stride`` implied by the pyramid's finest level: a map at stride s
    of an H x W image is ceil(H/s) x ceil(W/s), and ceil(ceil(H/s)/k) = ceil(H/(s*k));
    below the finest stride the size is scaled up."""
    finest = min(pyramid)
    h, w = pyramid[finest].shape[-2:]
    if stride >= finest:
        k = stride // finest
        return -(-h // k), -(-w // k)
    k = finest // stride
    return h * k, w * k


def resample(x: Tensor, size: Sequence[int]) -> Tensor:
    """Bilinear (align_corners False) to ``size``, also when ``x`` has it already (an
    exact identity). Every resampling of the decoder is unconditional, as the authors'
    ``F.interpolate`` calls are: whether two grids coincide depends on the input size, and
    a graph traced at one size (ONNX export) must resample at every other.
    [B, C, h, w] -> [B, C, *size]."""
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


def fused_level(channels: Mapping[int, int], stride: int) -> int:
    """The pyramid level fused into the stage at ``stride``: the level at ``stride``, or
    when the pyramid has none (a ResNet dilated to output stride 8 has no 16) its coarsest
    level finer than ``stride``, which the stage resizes after its 3x3 conv."""
    if stride in channels:
        return stride
    finer = [s for s in channels if s < stride]
    if not finer:
        raise UserError(
            f"InvPT fuses the encoder's strides 16 and 8; this encoder's finest level is "
            f"at {min(channels)}"
        )
    return max(finer)


class Scores(NamedTuple):
    """A stage's attention scores passed on to the next stage: ``values`` [B, heads,
    T*qh*qw, T*kh*kw] (pre-softmax), with the query grid (qh, qw) and key grid (kh, kw)
    they were computed on."""

    values: Tensor
    query_grid: tuple[int, int]
    key_grid: tuple[int, int]


class JointAttention(nn.Module):
    """Multi-head self-attention over the tokens of all tasks at once (the authors'
    ``SelfAttention``).

    Per task t: queries from ``conv_proj_q[t]`` (depthwise 3x3, stride ``q_stride``, BN),
    keys and values from average pooling (kernel = stride = ``kv_stride``, ceil mode); then
    shared linear ``proj_q``/``proj_k``/``proj_v``. Queries of every task attend to the keys
    of every task. Scores are scaled by ``dim ** -0.5`` with ``dim`` the full width (the
    authors' scale, not the usual per-head ``head_dim ** -0.5``). With ``fuse_previous``,
    the previous stage's scores [B, heads, T*Nq', Nk], upsampled bilinearly along the query
    grid to this stage's query grid, are concatenated with this stage's over the heads and
    mixed by ``fuse_attn`` (1x1 conv, 2*heads -> heads); the fused scores are returned for
    the next stage.

    Shapes: ``maps``: T x [B, dim, h, w] -> T x [B, dim, ceil(h/q), ceil(w/q)] and
    scores [B, heads, T*Nq, T*Nk] (pre-softmax) with Nq = ceil(h/q)*ceil(w/q),
    Nk = ceil(h/kv)*ceil(w/kv).
    """

    def __init__(
        self,
        tasks: Sequence[str],
        dim: int,
        num_heads: int,
        kv_stride: int,
        q_stride: int = 2,
        qkv_bias: bool = True,
        fuse_previous: bool = False,
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise UserError(f"InvPT: width {dim} is not divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.scale = dim**-0.5
        self.conv_proj_q = nn.ModuleDict(
            {
                t: nn.Sequential(
                    nn.Conv2d(dim, dim, 3, stride=q_stride, padding=1, groups=dim, bias=False),
                    nn.BatchNorm2d(dim),
                )
                for t in tasks
            }
        )
        # parameter-free: one pooling serves every task (the authors keep one per task)
        self.pool_kv = nn.AvgPool2d(kv_stride, kv_stride, ceil_mode=True)
        self.proj_q = nn.Linear(dim, dim, bias=qkv_bias)
        self.proj_k = nn.Linear(dim, dim, bias=qkv_bias)
        self.proj_v = nn.Linear(dim, dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.fuse_attn = nn.Conv2d(2 * num_heads, num_heads, 1) if fuse_previous else None

    def _heads(self, x: Tensor) -> Tensor:
        b, n, c = x.shape
        return x.reshape(b, n, self.num_heads, c // self.num_heads).transpose(1, 2)

    def forward(
        self, maps: Sequence[Tensor], previous: Scores | None = None
    ) -> tuple[list[Tensor], Scores]:
        queries = [q(x) for q, x in zip(self.conv_proj_q.values(), maps, strict=True)]
        keys = [self.pool_kv(x) for x in maps]
        qh, qw = queries[0].shape[-2:]
        kh, kw = keys[0].shape[-2:]
        q = torch.cat([m.flatten(2) for m in queries], 2).transpose(1, 2)  # [B, T*Nq, C]
        kv = torch.cat([m.flatten(2) for m in keys], 2).transpose(1, 2)  # [B, T*Nk, C]
        q, k, v = self._heads(self.proj_q(q)), self._heads(self.proj_k(kv)), self.proj_v(kv)
        scores = q @ k.transpose(-2, -1) * self.scale  # [B, heads, T*Nq, T*Nk]
        if self.fuse_attn is not None:
            if previous is None:
                raise ValueError("this attention fuses the previous stage's scores")
            up = self._upsample(previous, (qh, qw), (kh, kw))
            scores = self.fuse_attn(torch.cat([scores, up], 1))
        out = scores.softmax(-1) @ self._heads(v)  # [B, heads, T*Nq, C/heads]
        b, _, n, _ = out.shape
        out = self.proj(out.transpose(1, 2).reshape(b, n, -1))  # [B, T*Nq, C]
        tasks = len(maps)
        out = out.transpose(1, 2).reshape(b, -1, tasks, qh, qw)
        return list(out.unbind(2)), Scores(scores, (qh, qw), (kh, kw))

    def _upsample(
        self, previous: Scores, query_grid: Sequence[int], key_grid: Sequence[int]
    ) -> Tensor:
        """The previous stage's scores [B, heads, T*ph*pw, T*Nk] -> [B, heads,
        T*qh*qw, T*kh*kw]: each task's query grid resized bilinearly (align_corners False)
        to ``query_grid`` (the authors' 2x upsampling where the grid doubles).

        The key grids of consecutive stages are the same (stride x kv_stride is one value
        for every stage); the keys are still resampled to ``key_grid``, an exact identity,
        so that a traced graph (ONNX export with dynamic sizes) does not have to prove the
        two grids equal: each is a ceiling of the input size computed another way."""
        scores, (ph, pw), (pkh, pkw) = previous
        (qh, qw), (kh, kw) = query_grid, key_grid
        b, heads = scores.shape[:2]
        tasks = len(self.conv_proj_q)
        nk = tasks * pkh * pkw
        x = scores.reshape(b * heads, tasks, ph, pw, nk).permute(0, 1, 4, 2, 3)
        x = F.interpolate(
            x.reshape(b * heads, tasks * nk, ph, pw),
            size=(qh, qw),
            mode="bilinear",
            align_corners=False,
        )  # [B*heads, T*T*Nk', qh, qw]
        x = x.reshape(b * heads, tasks, nk, qh * qw).permute(0, 1, 3, 2)
        x = x.reshape(b * heads * tasks * qh * qw, tasks, pkh, pkw)
        x = F.interpolate(x, size=(kh, kw), mode="bilinear", align_corners=False)
        return x.reshape(b, heads, tasks * qh * qw, tasks * kh * kw)


class InvPTBlock(nn.Module):
    """One UP-Transformer block on T task maps of width ``dim``: pre-norm joint attention
    (output upsampled bilinearly back to the map size) and pre-norm MLP, each a residual
    with drop path; LayerNorms and MLP are shared by the tasks.

    Shapes: T x [B, dim, h, w] -> T x [B, dim, h, w] and the attention scores."""

    def __init__(
        self,
        tasks: Sequence[str],
        dim: int,
        num_heads: int,
        kv_stride: int,
        mlp_ratio: float = 4.0,
        drop_path: float = 0.0,
        qkv_bias: bool = True,
        q_stride: int = 2,
        fuse_previous: bool = False,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = JointAttention(
            tasks, dim, num_heads, kv_stride, q_stride, qkv_bias, fuse_previous
        )
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.drop_path = DropPath(drop_path)

    @staticmethod
    def _channels_last(f: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
        """Apply ``f`` over the channels of [B, C, h, w] (LayerNorm, MLP work on [..., C])."""
        return f(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)

    def forward(
        self, maps: Sequence[Tensor], previous: Scores | None = None
    ) -> tuple[list[Tensor], Scores]:
        h, w = maps[0].shape[-2:]
        normed = [self._channels_last(self.norm1, x) for x in maps]
        attended, scores = self.attn(normed, previous)
        out = []
        for x, a in zip(maps, attended, strict=True):
            x = x + self.drop_path(resample(a, (h, w)))
            x = x + self.drop_path(self._channels_last(lambda t: self.mlp(self.norm2(t)), x))
            out.append(x)
        return out, scores


class UpEmbed(nn.Module):
    """Per-task upsampling into a stage: bilinear to the stage grid (2x), then two 3x3
    convs with dilation 2 (no bias) each followed by BN and ReLU.
    [B, cin, h, w] -> [B, cout, *size]."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.proj = nn.Sequential(
            nn.Conv2d(cin, cout, 3, padding=2, dilation=2, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
            nn.Conv2d(cout, cout, 3, padding=2, dilation=2, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: Tensor, size: Sequence[int]) -> Tensor:
        # always resampled (the authors' nn.Upsample): the stage grid is twice the previous
        # one for some input sizes only, and a traced graph (ONNX) must resize at all
        return self.proj(resample(x, size))


class InvPTStage(nn.Module):
    """One stage of the inverted pyramid: (stages 1, 2) per-task :class:`UpEmbed` plus the
    encoder feature of the stage's stride through ``scale_embed`` (3x3 conv), then one
    :class:`InvPTBlock`. T x [B, cin, h, w] -> T x [B, dim, *size]."""

    def __init__(
        self,
        tasks: Sequence[str],
        cin: int,
        dim: int,
        encoder_channels: int | None,
        block: dict[str, object],
    ) -> None:
        super().__init__()
        upsample = encoder_channels is not None
        self.patch_embed = (
            nn.ModuleDict({t: UpEmbed(cin, dim) for t in tasks}) if upsample else None
        )
        self.scale_embed = nn.Conv2d(encoder_channels, dim, 3, padding=1) if upsample else None
        self.block = InvPTBlock(tasks, dim, fuse_previous=upsample, **block)  # type: ignore[arg-type]

    def forward(
        self,
        maps: Sequence[Tensor],
        size: Sequence[int],
        encoder_feature: Tensor | None,
        previous: Scores | None,
    ) -> tuple[list[Tensor], Scores]:
        if self.patch_embed is not None and self.scale_embed is not None:
            assert encoder_feature is not None
            skip = resample(self.scale_embed(encoder_feature), size)
            maps = [e(x, size) + skip for e, x in zip(self.patch_embed.values(), maps, strict=True)]
        return self.block(maps, previous)


class InvPTDecoder(nn.Module):
    """InvPT's multi-task decoder on an encoder pyramid.

    Args:
        channels: the encoder's ``channels`` (stride -> channels); its levels at strides
            16 and 8 are fused into stages 1 and 2 (:func:`fused_level`: a pyramid without
            one gives its coarsest finer level); its coarsest level feeds the preliminary
            decoders after a bilinear resize to the stride-32 grid (the authors' ViT-L:
            the last block's stride-16 map, ``mtt_resolution_downsample_rate: 2``).
        heads: task name -> output channels (order = token order in the joint attention).
        embed_dim: preliminary decoder width (authors: 512).
        pred_channels: added to ``embed_dim`` for the transformer width D (authors:
            ``PRED_OUT_NUM_CONSTANT`` 64); stage widths are D, D/2, D/4.
        num_heads, mlp_ratio, drop_path, kv_strides, q_stride, qkv_bias: per stage as the
            authors' spec (2 heads, 4.0, 0.15, (2, 4, 8), 2, True).

    Forward: ``pyramid`` {stride: [B, channels[stride], ceil(H/s), ceil(W/s)]} ->
    :class:`InvPTOutput` (final predictions at stride 4, intermediate ones at stride 32).
    """

    def __init__(
        self,
        channels: Mapping[int, int],
        heads: Mapping[str, int],
        embed_dim: int = 512,
        pred_channels: int = 64,
        num_heads: int = 2,
        mlp_ratio: float = 4.0,
        drop_path: float = 0.15,
        kv_strides: Sequence[int] = (2, 4, 8),
        q_stride: int = 2,
        qkv_bias: bool = True,
    ) -> None:
        super().__init__()
        if not heads:
            raise UserError("InvPT needs at least one task")
        self.fused_levels = [fused_level(channels, s) for s in STAGE_STRIDES[1:]]
        if len(kv_strides) != len(STAGE_STRIDES):
            raise UserError(f"InvPT: kv_strides needs {len(STAGE_STRIDES)} values")
        # the scores passed from stage to stage need the same keys: stride x kv_stride equal
        if len({s * k for s, k in zip(STAGE_STRIDES, kv_strides, strict=True)}) != 1:
            raise UserError(
                f"InvPT: kv_strides {tuple(kv_strides)} must pool the stages' strides "
                f"{STAGE_STRIDES} to one key grid (the authors': 2, 4, 8)"
            )
        dim = embed_dim + pred_channels
        if dim % 4:
            raise UserError(f"InvPT: embed_dim + pred_channels = {dim} must be divisible by 4")
        self.tasks = list(heads)
        self.input_stride = max(channels)
        cin = channels[self.input_stride]
        self.widths = [dim, dim // 2, dim // 4]
        self.preliminary_decoder = nn.ModuleDict(
            {
                t: nn.Sequential(ConvBnReLU(cin, cin, 3), ConvBnReLU(cin, embed_dim, 3))
                for t in heads
            }
        )
        self.intermediate_head = nn.ModuleDict(
            {t: nn.Conv2d(embed_dim, c, 1) for t, c in heads.items()}
        )
        self.mix_proj = nn.ModuleDict(
            {t: nn.Conv2d(embed_dim + c, dim, 1) for t, c in heads.items()}
        )
        block = {
            "num_heads": num_heads,
            "mlp_ratio": mlp_ratio,
            "drop_path": drop_path,
            "qkv_bias": qkv_bias,
            "q_stride": q_stride,
        }
        self.stages = nn.ModuleList()
        prev = dim
        for i, width in enumerate(self.widths):
            enc = channels[self.fused_levels[i - 1]] if i > 0 else None
            stage_block = {**block, "kv_stride": kv_strides[i]}
            self.stages.append(InvPTStage(self.tasks, prev, width, enc, stage_block))
            prev = width
        # LayerNorm over the concatenated channels of all tasks, one per stage
        self.norm_mts = nn.ModuleList(nn.LayerNorm(len(heads) * w) for w in self.widths)
        self.redu_chan = nn.ModuleList(
            nn.ModuleDict({t: nn.Conv2d(w, dim, 1) for t in heads}) for w in self.widths[1:]
        )
        self.mt_proj = nn.ModuleDict(
            {
                t: nn.Sequential(
                    nn.Conv2d(dim, dim, 3, padding=1), nn.BatchNorm2d(dim), nn.ReLU(inplace=True)
                )
                for t in heads
            }
        )
        self.heads = nn.ModuleDict({t: nn.Conv2d(dim, c, 1) for t, c in heads.items()})
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The authors' initialization: inside the stages, linear layers truncated normal
        (std 0.02, bias 0) and norms weight 1, bias 0; the final 3x3 convs' weights truncated
        normal (std 0.02); everything else PyTorch's default."""
        for m in self.stages.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02, a=-2.0, b=2.0)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm | nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        for seq in self.mt_proj.values():
            nn.init.trunc_normal_(seq[0].weight, std=0.02, a=-2.0, b=2.0)

    def shared_modules(self) -> list[nn.Module]:
        """The modules several tasks' outputs depend on: everything up to the per-stage
        LayerNorm over all tasks' channels (the preliminary decoders and intermediate heads
        feed the joint attention, so they reach every task too)."""
        return [
            self.preliminary_decoder,
            self.intermediate_head,
            self.mix_proj,
            self.stages,
            self.norm_mts,
        ]

    @staticmethod
    def stage_grids(pyramid: Mapping[int, Tensor]) -> list[tuple[int, int]]:
        """The map size of each stage: the pyramid's level at its stride, or
        :func:`grid_at` where the pyramid has none."""
        return [
            tuple(pyramid[s].shape[-2:]) if s in pyramid else grid_at(pyramid, s)  # type: ignore[misc]
            for s in STAGE_STRIDES
        ]

    def joint_features(
        self, pyramid: Mapping[int, Tensor]
    ) -> tuple[list[list[Tensor]], dict[str, Tensor]]:
        """Everything where the tasks interact: per stage i and task (in ``heads`` order)
        the stage's output after the LayerNorm over all tasks' channels,
        [B, widths[i], ceil(H/s_i), ceil(W/s_i)] for s_i = 32, 16, 8, and the intermediate
        predictions {task: [B, C_t, ceil(H/32), ceil(W/32)]}."""
        grids = self.stage_grids(pyramid)
        x = pyramid[self.input_stride]
        if self.input_stride != STAGE_STRIDES[0]:
            x = resample(x, grids[0])
        maps, auxiliary = [], {}
        for t in self.tasks:
            f = self.preliminary_decoder[t](x)
            auxiliary[t] = self.intermediate_head[t](f)
            maps.append(self.mix_proj[t](torch.cat([f, auxiliary[t]], 1)))
        stages = []
        scores = None
        for i, (stage, grid) in enumerate(zip(self.stages, grids, strict=True)):
            encoder_feature = pyramid[self.fused_levels[i - 1]] if i > 0 else None
            maps, scores = stage(maps, grid, encoder_feature, scores)
            joint = torch.cat(maps, 1).permute(0, 2, 3, 1)
            stages.append(list(self.norm_mts[i](joint).permute(0, 3, 1, 2).chunk(len(maps), 1)))
        return stages, auxiliary

    def task_output(
        self, task: str, stage_features: Sequence[Tensor], size: Sequence[int] | None = None
    ) -> Tensor:
        """Task ``task``'s final prediction from its three normalized stage maps (see
        :meth:`joint_features`): stages 1-2 back to width D (1x1), all three resized to
        ``size`` (default: twice the stride-8 grid) and summed, 3x3 Conv-BN-ReLU, 1x1 head
        -> [B, C_t, *size]. Only ``task``'s own parameters."""
        if size is None:
            size = [2 * n for n in stage_features[-1].shape[-2:]]
        summed: Tensor | float = 0.0
        for i, f in enumerate(stage_features):
            f = f if i == 0 else self.redu_chan[i - 1][task](f)
            summed = summed + resample(f, size)
        return self.heads[task](self.mt_proj[task](summed))  # type: ignore[arg-type]

    def forward(self, pyramid: Mapping[int, Tensor]) -> InvPTOutput:
        stages, auxiliary = self.joint_features(pyramid)
        out_grid = grid_at(pyramid, OUTPUT_STRIDE)
        final = {
            t: self.task_output(t, [s[j] for s in stages], out_grid)
            for j, t in enumerate(self.tasks)
        }
        return InvPTOutput(final, auxiliary)


# --------------------------------------------------------------------------------------
# the architecture


def _check_number(options: object, key: str, low: float, high: float) -> None:
    value = getattr(options, key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise OptionError(key, f"expected a number {low:g}..{high:g}, got {value!r}")


@dataclass
class InvPTOptions:
    """Options of ``invpt`` (``model.net.options``); the defaults are the authors'
    (:data:`AUTHORS_DIMS`, configs ``*_vitLp16.yml`` and the decoder's spec).

    Attributes:
        embed_dim: preliminary decoder width (512).
        pred_channels: added to ``embed_dim`` for the transformer width D
            (``PRED_OUT_NUM_CONSTANT``, 64); the stages have widths D, D/2, D/4.
        num_heads: attention heads per stage (2).
        mlp_ratio: MLP hidden width / stage width (4).
        drop_path: stochastic depth of each UP-Transformer block (0.15).
        kv_strides: average-pooling stride of the keys and values per stage ((2, 4, 8):
            every stage's keys on the stride-64 grid, which the score fusion needs).
        q_stride: stride of the query convolution (2).
        qkv_bias: bias in the query, key and value projections (true).
    """

    embed_dim: int = 512
    pred_channels: int = 64
    num_heads: int = 2
    mlp_ratio: float = 4.0
    drop_path: float = 0.15
    kv_strides: Any = (2, 4, 8)
    q_stride: int = 2
    qkv_bias: bool = True

    def __post_init__(self) -> None:
        check_int(self, "embed_dim", 1, 4096)
        check_int(self, "pred_channels", 0, 4096)
        check_int(self, "num_heads", 1, 64)
        _check_number(self, "mlp_ratio", 0.25, 16)
        _check_number(self, "drop_path", 0, 0.99)
        check_int(self, "q_stride", 1, 4)
        check_bool(self, "qkv_bias")
        kv = self.kv_strides
        if isinstance(kv, list):
            kv = self.kv_strides = tuple(kv)
        n = len(STAGE_STRIDES)
        if not (
            isinstance(kv, tuple)
            and len(kv) == n
            and all(isinstance(k, int) and not isinstance(k, bool) and k >= 1 for k in kv)
        ):
            raise OptionError("kv_strides", f"expected {n} positive integers, got {kv!r}")
        if len({s * k for s, k in zip(STAGE_STRIDES, kv, strict=True)}) != 1:
            raise OptionError(
                "kv_strides",
                f"{list(kv)} must pool the stages' strides {list(STAGE_STRIDES)} to one key "
                "grid (the authors': 2, 4, 8)",
            )
        dim = self.embed_dim + self.pred_channels
        if dim % 4 or (dim // 4) % self.num_heads:
            raise OptionError(
                "num_heads",
                f"the stage widths {dim}, {dim // 2}, {dim // 4} (embed_dim + pred_channels, "
                f"halved twice) must be divisible by num_heads={self.num_heads}",
            )


class InvPTNet(MultiTaskNet):
    """InvPT (Ye and Xu, ECCV 2022): the shared encoder, then :class:`InvPTDecoder` on its
    pyramid (task-specific preliminary decoders, three UP-Transformer stages with joint
    attention over all tasks' tokens, fusion of the encoder's strides 16 and 8).

    Outputs per task: ``[intermediate, final]`` (:attr:`output_stages`), the preliminary
    decoders' stride-32 predictions, supervised like the final ones as the authors do
    (``intermediate_supervision: True``), then the stride-4 prediction.

    Sharing contract: the tasks interact up to each stage's LayerNorm over all their
    channels, so there is no one shared representation (as MTAN with shared refinement):
    :meth:`shared_modules` is the encoder and every decoder module before that cut
    (:meth:`InvPTDecoder.shared_modules`); :meth:`shared_forward` returns per task its
    normalized stage maps and its intermediate prediction, keyed ``"task/0"``, ``"task/1"``,
    ``"task/2"``, ``"task/intermediate"``; :meth:`decode` runs only each task's own
    ``redu_chan``, ``mt_proj`` and head. Parameter-level gradient methods combine the task
    gradients on everything shared; ``wrt: representation`` is refused in one line.
    """

    output_stages: ClassVar[tuple[str, ...]] = ("intermediate", "final")
    has_shared_representation: ClassVar[bool] = False
    Options: ClassVar[type] = InvPTOptions
    options: InvPTOptions

    def __init__(self, cfg: ModelConfig, heads: Mapping[str, int]) -> None:
        super().__init__(cfg, heads)
        self.decoder = InvPTDecoder(self.encoder.channels, self.heads, **vars(self.options))

    def shared_modules(self) -> list[nn.Module]:
        return [self.encoder, *self.decoder.shared_modules()]

    def shared_forward(self, x: Tensor) -> dict[str, Tensor]:
        """Per task t: ``"t/0"``, ``"t/1"``, ``"t/2"`` its normalized stage maps at strides
        32, 16, 8 and ``"t/intermediate"`` [B, C_t, ceil(H/32), ceil(W/32)]."""
        stages, auxiliary = self.decoder.joint_features(self.encoder(x))
        shared = {}
        for j, t in enumerate(self.heads):
            for i, stage in enumerate(stages):
                shared[task_key(t, i)] = stage[j]
            shared[task_key(t, "intermediate")] = auxiliary[t]
        return shared

    def decode(self, shared: dict[str, Tensor]) -> dict[str, list[Tensor]]:
        """{task: [intermediate (stride 32), final (twice the stride-8 grid)]}."""
        n = len(STAGE_STRIDES)
        return {
            t: [
                shared[task_key(t, "intermediate")],
                self.decoder.task_output(t, [shared[task_key(t, i)] for i in range(n)]),
            ]
            for t in self.heads
        }
