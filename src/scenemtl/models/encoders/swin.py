"""Swin-T/S/B (Liu et al. 2021, shifted windows, patch 4, window 7) as a feature-pyramid
encoder.

Module and parameter names are timm's (``patch_embed.proj``, ``patch_embed.norm``,
``layers.N.downsample.norm``/``.reduction`` at the start of stages 1-3,
``layers.N.blocks.M.norm1``, ``.attn.relative_position_bias_table``, ``.attn.qkv``,
``.attn.proj``, ``.norm2``, ``.mlp.fc1``, ``.mlp.fc2``, final ``norm``), so timm's files on
the Hugging Face Hub (``timm/swin_tiny_patch4_window7_224.ms_in1k``, ``model.safetensors``)
load with every key and shape checked; the classifier ``head.fc`` is dropped. The relative
position index and the shifted-window attention mask are computed, not stored: timm keeps
them as non-persistent buffers and its files do not hold them.

Computation as timm's ``SwinTransformer``: LayerNorms eps 1e-5; blocks alternate regular and
cyclically shifted windows (shift 3); attention logits get the relative position bias and,
in shifted blocks, -100 between tokens from different regions; patch merging concatenates
the 2x2 neighbours in the order (0,0), (1,0), (0,1), (1,1) (row, column) before its norm and
linear reduction; a side not larger than the window is not shifted (per side, as timm).

For inputs other than timm's fixed training size, the dense-prediction rules of the Swin
authors' segmentation backbone (Swin-Transformer-Semantic-Segmentation) are used: the input
is zero-padded to a multiple of 4, each block zero-pads its map (after ``norm1``) to whole
windows *before* the cyclic shift, the mask is built for the padded size, padded tokens are
not masked out, and an odd side is padded before patch merging. timm rolls before padding;
both agree whenever the sides are multiples of the window (224 and 448 inputs, say). A map
smaller than the window is padded to one window (timm would shrink the window and resample
the bias table).

The stride-32 output goes through the published final ``norm`` (so the file's last
parameters are used and trained); the others are the raw stage outputs, as timm's features.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from scenemtl.errors import UserError
from scenemtl.models.encoders.base import HierarchicalEncoder
from scenemtl.models.encoders.parts import DropPath, Mlp, drop_path_rates, pad_to_multiple
from scenemtl.models.encoders.timm_family import PublishedLayout, WidthOptions, timm_family

WINDOW = 7
MASK_VALUE = -100.0
"""Added to attention logits between tokens of different regions of a shifted window
(timm's and the authors' value; exp(-100) is 0 in float32)."""


@dataclass(frozen=True)
class SwinVariant:
    """One published Swin: embedding width, blocks and heads per stage, timm's Hub file."""

    embed_dim: int
    depths: tuple[int, int, int, int]
    heads: tuple[int, int, int, int]
    hub_repo: str


VARIANTS: dict[str, SwinVariant] = {
    "swin_tiny_patch4_window7_224": SwinVariant(
        96, (2, 2, 6, 2), (3, 6, 12, 24), "timm/swin_tiny_patch4_window7_224.ms_in1k"
    ),
    "swin_small_patch4_window7_224": SwinVariant(
        96, (2, 2, 18, 2), (3, 6, 12, 24), "timm/swin_small_patch4_window7_224.ms_in22k_ft_in1k"
    ),
    "swin_base_patch4_window7_224": SwinVariant(
        128, (2, 2, 18, 2), (4, 8, 16, 32), "timm/swin_base_patch4_window7_224.ms_in22k_ft_in1k"
    ),
}
"""timm model name -> variant (timm's default tag of each model)."""

HEAD_DIM = 32
"""Channels per attention head in every published Swin (96 / 3, 128 / 4)."""


def relative_position_index(window: int) -> Tensor:
    """[w*w, w*w] long: for tokens i = (yi, xi) and j = (yj, xj) of a window (row-major),
    the row of the bias table for their offset, (yi-yj+w-1) * (2w-1) + (xi-xj+w-1)."""
    ys, xs = torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")
    ys, xs = ys.flatten(), xs.flatten()
    dy = ys[:, None] - ys[None, :] + window - 1
    dx = xs[:, None] - xs[None, :] + window - 1
    return dy * (2 * window - 1) + dx


def window_partition(x: Tensor, window: int) -> Tensor:
    """[B, H, W, C] (H, W multiples of ``window``) -> [B, H/w * W/w, w*w, C], windows in
    row-major order per image. The batch stays its own axis, so that no size is ever a
    quotient of two symbolic sizes when exported with dynamic shapes."""
    b, h, w, c = x.shape
    x = x.reshape(b, h // window, window, w // window, window, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(b, (h // window) * (w // window), window * window, c)


def window_merge(windows: Tensor, window: int, h: int, w: int) -> Tensor:
    """Inverse of :func:`window_partition`: [B, h/w * w/w, w*w, C] -> [B, h, w, C]."""
    b, c = windows.shape[0], windows.shape[-1]
    x = windows.reshape(b, h // window, w // window, window, window, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(b, h, w, c)


def shifted_window_mask(h: int, w: int, window: int, shift: tuple[int, int]) -> Tensor:
    """Attention mask [nW, w*w, w*w] of the shifted windows of a padded h x w map (multiples
    of ``window``) rolled by ``-shift``: 0 between tokens of the same region, -100 else.

    After the roll, the last ``window`` rows hold rows from two places of the map (those
    before ``h - shift`` and the ones wrapped around from the top); rows are labelled 0
    (not in the last window), 1 (last window, not wrapped), 2 (wrapped), likewise columns,
    and a region is a (row label, column label) pair. A side with shift 0 has labels 0/1
    only, whose border is a window border, so it masks nothing.
    """

    def labels(n: int, s: int) -> Tensor:
        i = torch.arange(n)
        return (i >= n - window).long() + ((i >= n - s).long() if s else 0)

    region = labels(h, shift[0])[:, None] * 3 + labels(w, shift[1])[None, :]
    regions = window_partition(region[None, :, :, None].float(), window)[0, :, :, 0]
    same = regions[:, :, None] == regions[:, None, :]
    return torch.zeros(same.shape).masked_fill(~same, MASK_VALUE)


class WindowAttention(nn.Module):
    """Multi-head self-attention inside windows with a learned relative position bias.
    [..., nW, w*w, C] (+ mask [nW, w*w, w*w], broadcast over the leading axes) ->
    [..., nW, w*w, C]."""

    def __init__(self, dim: int, heads: int, window: int = WINDOW) -> None:
        super().__init__()
        self.heads = heads
        self.window = window
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window - 1) ** 2, heads))
        # not in timm's files (non-persistent there too): computed from the window size
        self.register_buffer(
            "relative_position_index", relative_position_index(window), persistent=False
        )
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def bias(self) -> Tensor:
        """Relative position bias [heads, w*w, w*w]."""
        n = self.window * self.window
        table = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        return table.view(n, n, self.heads).permute(2, 0, 1)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        *lead, n, c = x.shape
        # one batch axis of all windows (4D attention, as ONNX's exporter needs): a
        # product of the leading sizes, never a quotient (exact under dynamic shapes)
        windows = math.prod(lead)
        qkv = self.qkv(x).reshape(windows, n, 3, self.heads, c // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # [windows, heads, n, d]
        logits_bias = self.bias().to(x.dtype)  # [heads, n, n]
        if mask is not None:
            # [nW, heads, n, n] over the windows of each image (the last leading axis)
            logits_bias = logits_bias + mask[:, None].to(x.dtype)
            logits_bias = logits_bias.expand(*lead, self.heads, n, n)
            logits_bias = logits_bias.reshape(windows, self.heads, n, n)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=logits_bias)  # [w, h, n, d]
        return self._project(y).reshape(*lead, n, c)

    def _project(self, y: Tensor) -> Tensor:
        """The output projection of the heads' outputs [windows, heads, n, d] -> [windows,
        n, C]. A plain ``nn.Linear`` contracts heads and head width in one einsum: under
        export at some sizes (256x512) torch 2.13's reshape decomposition takes the
        transposed [windows, n, heads, d] tensor for a view and fails (also with
        ``contiguous()``). Any other module there (LoRA's wrapper) gets the merged heads."""
        windows, heads, n, d = y.shape
        if type(self.proj) is nn.Linear:
            weight = self.proj.weight.view(heads * d, heads, d)
            return torch.einsum("whnd,ohd->wno", y, weight.to(y.dtype)) + self.proj.bias.to(y.dtype)
        return self.proj(y.transpose(1, 2).reshape(windows, n, heads * d))


class SwinBlock(nn.Module):
    """x + attn(norm1 x) in (shifted) windows, then x + mlp(norm2 x). [B, H, W, C] in/out."""

    def __init__(self, dim: int, heads: int, shifted: bool, drop_path: float) -> None:
        super().__init__()
        self.shifted = shifted
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, 4 * dim)
        self.drop_path = DropPath(drop_path)

    def _window_attention(self, x: Tensor) -> Tensor:
        h, w = x.shape[1:3]
        win = self.attn.window
        ph, pw = -h % win, -w % win
        x = F.pad(x, (0, 0, 0, pw, 0, ph))  # pad before the shift (authors' dense backbone)
        hp, wp = h + ph, w + pw
        # per side as timm: a side that fits in one window is not shifted
        shift = (win // 2 if h > win else 0, win // 2 if w > win else 0) if self.shifted else (0, 0)
        mask = None
        if any(shift):
            x = torch.roll(x, shifts=(-shift[0], -shift[1]), dims=(1, 2))
            mask = shifted_window_mask(hp, wp, win, shift).to(x.device)
        y = window_merge(self.attn(window_partition(x, win), mask), win, hp, wp)
        if any(shift):
            y = torch.roll(y, shifts=shift, dims=(1, 2))
        return y[:, :h, :w]

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.drop_path(self._window_attention(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchMerging(nn.Module):
    """2x2 neighbours concatenated ((0,0), (1,0), (0,1), (1,1) as (row, column) offsets),
    LayerNorm(4C), linear 4C -> 2C without bias. [B, H, W, C] -> [B, ceil(H/2), ceil(W/2), 2C]
    (an odd side zero-padded first)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        b, h, w, c = x.shape
        x = F.pad(x, (0, 0, 0, w % 2, 0, h % 2))
        h, w = x.shape[1:3]
        # [B, h/2, row offset, w/2, column offset, C] -> [B, h/2, w/2, column, row, C]:
        # flattening the last three gives the order (0,0), (1,0), (0,1), (1,1)
        x = (
            x.reshape(b, h // 2, 2, w // 2, 2, c)
            .permute(0, 1, 3, 4, 2, 5)
            .reshape(b, h // 2, w // 2, 4 * c)
        )
        return self.reduction(self.norm(x))


class SwinStage(nn.Module):
    """Patch merging (stages 1-3) then blocks alternating regular / shifted windows."""

    def __init__(self, dim: int, depth: int, heads: int, merge: bool, rates: list[float]):
        super().__init__()
        self.downsample: nn.Module = PatchMerging(dim // 2) if merge else nn.Identity()
        self.blocks = nn.Sequential(
            *[SwinBlock(dim, heads, i % 2 == 1, rates[i]) for i in range(depth)]
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.blocks(self.downsample(x))


class PatchEmbed(nn.Module):
    """``proj`` conv 4x4/4 then ``norm``: [B, 3, H, W] -> [B, ceil(H/4), ceil(W/4), C]
    (channels last; the input zero-padded to a multiple of 4)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, dim, 4, stride=4)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(self.proj(pad_to_multiple(x, 4)).permute(0, 2, 3, 1))


class _ChannelsFirst(nn.Module):
    """Part of a stage seen from outside: [B, C, H, W] -> ``inner`` (channels last) ->
    [B, C', H', W']. Built on the fly by :attr:`SwinEncoder.stage_blocks` (holds no weights of
    its own)."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: Tensor) -> Tensor:
        return self.inner(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class SwinEncoder(PublishedLayout, HierarchicalEncoder):
    """Swin trunk without classifier, returning ``{4: C, 8: 2C, 16: 4C, 32: 8C}`` maps.

    Args:
        name: a key of :data:`VARIANTS`.
        drop_path_rate: stochastic depth of the last block (linear from 0 over all blocks).
        embed_dim: ``C``, the first stage's channels (None: the variant's, 96 or 128), a
            multiple of the heads' width 32 (every published Swin has 32 channels per
            head, so stage i has ``C * 2**i / 32`` heads). Another width trains from
            scratch only.

    Forward: x [B, 3, H, W] -> ``{s: [B, channels[s], ceil(H/s), ceil(W/s)]}``, s = 4..32.

    As a :class:`~scenemtl.models.encoders.base.HierarchicalEncoder`: :meth:`stem` is the
    patch embedding (stride 4), stage ``i`` of :attr:`stage_blocks` is ``layers.i`` on
    channels-first maps, as two modules: its patch merging and all blocks but the last,
    then the last block (followed by the final ``norm`` in the last stage).
    """

    def __init__(
        self,
        name: str = "swin_tiny_patch4_window7_224",
        drop_path_rate: float = 0.0,
        embed_dim: int | None = None,
    ) -> None:
        super().__init__()
        if name not in VARIANTS:
            raise UserError(f"unknown encoder {name!r}; known Swins: {', '.join(VARIANTS)}")
        self.name = name
        v = VARIANTS[name]
        if embed_dim is not None and embed_dim % HEAD_DIM:
            raise UserError(
                f"Swin encoder_options.embed_dim must be a multiple of {HEAD_DIM} (the width of "
                f"one attention head), got {embed_dim}"
            )
        c = v.embed_dim if embed_dim is None else embed_dim
        dims = tuple(c * 2**i for i in range(4))
        heads = v.heads if embed_dim is None else tuple(d // HEAD_DIM for d in dims)
        self.patch_embed = PatchEmbed(dims[0])
        rates = drop_path_rates(drop_path_rate, v.depths)
        self.layers = nn.Sequential(
            *[SwinStage(dims[i], v.depths[i], heads[i], i > 0, rates[i]) for i in range(len(dims))]
        )
        self.norm = nn.LayerNorm(dims[-1])
        self.stage_scales: list[int] = [4, 8, 16, 32]
        self.stage_out_channels: tuple[int, ...] = dims
        self.channels: dict[int, int] = dict(zip(self.stage_scales, dims, strict=True))
        self.output_stride = max(self.channels)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """timm's initialization: truncated normal std 0.02 for linears and bias tables,
        zero biases, LayerNorms 1/0; PyTorch's default for the patch conv."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, WindowAttention):
                nn.init.trunc_normal_(m.relative_position_bias_table, std=0.02)

    def stem(self, x: Tensor) -> Tensor:
        """Patch embedding: [B, 3, H, W] -> [B, C, ceil(H/4), ceil(W/4)]."""
        return self.patch_embed(x).permute(0, 3, 1, 2)

    @property
    def stage_blocks(self) -> list[nn.Sequential]:
        """``layers.0`` .. ``layers.3`` on channels-first maps, each a Sequential of (patch
        merging + all blocks but the last) and (the last block, + ``norm`` in the last
        stage), so that running :meth:`stem` and these in turn gives :meth:`forward` and
        MTAN reads the features before and after the last block."""
        last = len(self.layers) - 1
        stages = []
        for i, layer in enumerate(self.layers):
            *body, final = layer.blocks
            tail = [final, self.norm] if i == last else [final]
            stages.append(
                nn.Sequential(
                    _ChannelsFirst(nn.Sequential(layer.downsample, *body)),
                    _ChannelsFirst(nn.Sequential(*tail)),
                )
            )
        return stages

    def forward(self, x: Tensor) -> dict[int, Tensor]:
        # channels last from stage to stage (the stage view permutes at every border)
        pyramid: dict[int, Tensor] = {}
        x = self.patch_embed(x)
        last = len(self.layers) - 1
        for i, (scale, layer) in enumerate(zip(self.stage_scales, self.layers, strict=True)):
            x = layer(x)
            out = self.norm(x) if i == last else x
            pyramid[scale] = out.permute(0, 3, 1, 2)
        return pyramid

    def load_published_state_dict(self, state: Mapping[str, Tensor], source: str) -> None:
        """Load timm's Swin state dict (every key and shape checked; ``head.*`` dropped;
        stored ``relative_position_index``/``attn_mask`` of old files are dropped too, as
        timm does, being recomputed here)."""
        if isinstance(state, Mapping):
            stale = ("relative_position_index", "attn_mask")
            state = {k: v for k, v in state.items() if not str(k).endswith(stale)}
        super().load_published_state_dict(state, source)


FAMILY = timm_family(
    SwinEncoder,
    {name: v.hub_repo for name, v in VARIANTS.items()},
    options=WidthOptions,
    published_width=lambda name: VARIANTS[name].embed_dim,
)
"""The registry entry (``ENCODER_FAMILIES``); ``weights: imagenet`` (or ``published``) is
timm's file on the Hugging Face Hub."""
