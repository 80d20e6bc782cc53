"""Building blocks between the encoder and the predictions.

ASPP (and its 1x1 stand-in), vortex pooling (an ASPP alternative), the DeepLabV3+ decoder
(optionally with extra skips at 2x and 8x, or an attention fusion of the 4x, 8x and 16x
levels as its skip), squeeze-and-excitation, the cross-task self-attention of task
distillation, and the skip-less head used as the final decoder of distillation.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def resize(x: Tensor, size: Sequence[int]) -> Tensor:
    """Bilinear resize of [B, C, h, w] to [B, C, *size] (no-op when already that size)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


class ConvBnReLU(nn.Sequential):
    """Conv (no bias, BN follows) -> BatchNorm -> ReLU. [B, cin, H, W] -> [B, cout, H, W]."""

    def __init__(self, cin: int, cout: int, kernel_size: int = 1, dilation: int = 1) -> None:
        padding = dilation * (kernel_size // 2)
        super().__init__(
            nn.Conv2d(cin, cout, kernel_size, padding=padding, dilation=dilation, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
        )


class SqueezeExcitation(nn.Module):
    """Channel re-weighting of Hu et al. (2018): x * sigmoid(MLP(global average of x)).

    No normalization inside, so it works at batch size 1. [B, C, H, W] -> [B, C, H, W].
    """

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        hidden = max(channels // reduction, 1)
        self.fc1 = nn.Conv2d(channels, hidden, 1)
        self.fc2 = nn.Conv2d(hidden, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        s = F.adaptive_avg_pool2d(x, 1)
        s = torch.sigmoid(self.fc2(F.relu(self.fc1(s), inplace=True)))
        return x * s


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling (DeepLabV3).

    Five parallel branches on the bottleneck: a 1x1 Conv-BN-ReLU, three 3x3 atrous
    Conv-BN-ReLU with ``rates``, and image pooling (global average -> 1x1 conv -> ReLU,
    broadcast back to the map size); concatenated and projected by a 1x1 Conv-BN-ReLU.

    The pooling branch has a conv bias instead of BatchNorm: BN over a 1x1 map normalizes
    over the batch only, which raises at batch size 1 in training and is pure noise at
    batch sizes 2-4, the sizes this project trains with on small machines.

    Shapes: [B, cin, H, W] -> [B, cout, H, W].
    """

    def __init__(
        self,
        cin: int,
        cout: int = 256,
        rates: Sequence[int] = (6, 12, 18),
        squeeze_excitation: bool = False,
        se_reduction: int = 16,
    ) -> None:
        super().__init__()
        self.branches = nn.ModuleList(
            [ConvBnReLU(cin, cout, 1)] + [ConvBnReLU(cin, cout, 3, dilation=r) for r in rates]
        )
        self.pooling = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Conv2d(cin, cout, 1), nn.ReLU(inplace=True)
        )
        self.project = ConvBnReLU(cout * (len(rates) + 2), cout, 1)
        self.se = SqueezeExcitation(cout, se_reduction) if squeeze_excitation else None

    def atrous_inputs(self, x: Tensor) -> list[Tensor]:
        """What each 3x3 atrous branch reads: ``x`` itself (vortex pooling pools it first)."""
        return [x] * (len(self.branches) - 1)

    def forward(self, x: Tensor) -> Tensor:
        outs = [self.branches[0](x)]
        outs += [b(i) for b, i in zip(self.branches[1:], self.atrous_inputs(x), strict=True)]
        # a 1x1 map upsampled bilinearly is a constant map: expand avoids the copy
        outs.append(self.pooling(x).expand(-1, -1, x.shape[-2], x.shape[-1]))
        y = self.project(torch.cat(outs, dim=1))
        return y if self.se is None else self.se(y)


class DilatedAvgPool(nn.Module):
    """3x3 average pooling with dilation ``d`` (PyTorch's pooling has no dilation), stride 1.

    Implemented as a fixed depthwise convolution. Border pixels average over the taps
    that fall inside the map only (``count_include_pad=False``): zero padding would dim
    the borders by up to 5/9 per pooling, and vortex pooling cascades three of them.

    Shapes: [B, C, H, W] -> [B, C, H, W].
    """

    def __init__(self, dilation: int) -> None:
        super().__init__()
        self.dilation = dilation
        self.register_buffer("kernel", torch.ones(1, 1, 3, 3), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        c = x.shape[1]
        d = self.dilation
        total = F.conv2d(x, self.kernel.expand(c, 1, 3, 3), padding=d, dilation=d, groups=c)
        ones = torch.ones(1, 1, *x.shape[-2:], dtype=x.dtype, device=x.device)
        count = F.conv2d(ones, self.kernel, padding=d, dilation=d)
        return total / count


class VortexPooling(ASPP):
    """Vortex pooling (Xie, Zhou, Wu 2018; report 003 §5.2.1), an alternative to ASPP.

    Like ASPP five parallel branches are concatenated and projected by a 1x1
    Conv-BN-ReLU: a 1x1 Conv-BN-ReLU on x, image pooling (as in :class:`ASPP`) and three
    3x3 atrous Conv-BN-ReLU at ``rates`` (3, 9, 27). Unlike ASPP each atrous conv reads
    x average-pooled over a window matching its rate, so its sparse taps summarize their
    whole neighbourhood instead of sampling single pixels. The pooled maps are a cascade
    (the paper's module B/C): 3x3 pools of dilation 1, 3, 9 applied one after the other
    cover 3x3, 9x9 and 27x27 windows, reusing the previous pooling.

    Shapes: [B, cin, H, W] -> [B, cout, H, W].
    """

    def __init__(
        self,
        cin: int,
        cout: int = 256,
        rates: Sequence[int] = (3, 9, 27),
        squeeze_excitation: bool = False,
        se_reduction: int = 16,
    ) -> None:
        super().__init__(cin, cout, rates, squeeze_excitation, se_reduction)
        self.pools = nn.ModuleList(DilatedAvgPool(d) for d in (1, 3, 9)[: len(rates)])

    def atrous_inputs(self, x: Tensor) -> list[Tensor]:
        inputs, pooled = [], x
        for pool in self.pools:
            pooled = pool(pooled)
            inputs.append(pooled)
        return inputs


class MultiScaleSkip(nn.Module):
    """Attention fusion of several encoder levels into one skip (report 002 §5.2).

    Each level (4x, 8x, 16x by default, those the pyramid has) is reduced by a 1x1
    Conv-BN-ReLU to ``reduced`` channels and resized to the finest level; a 1x1 conv per
    level scores every pixel, a softmax over the levels turns the scores into weights and
    the skip is the weighted sum. The softmax (the report used independent sigmoid gates)
    makes the levels compete per pixel and keeps the skip's scale independent of how
    many levels there are. Scores start at zero: equal weights.

    Forward: pyramid ``{scale: [B, C_s, H/s, W/s]}`` -> [B, reduced, H/f, W/f] with f the
    finest of ``levels``; :attr:`last_weights` keeps the [B, L, H/f, W/f] weights of the
    last call (for inspection).
    """

    def __init__(
        self, pyramid_channels: Mapping[int, int], reduced: int, levels: Sequence[int] = (4, 8, 16)
    ) -> None:
        super().__init__()
        self.levels = [s for s in levels if s in pyramid_channels]
        if not self.levels:
            raise ValueError(f"none of the levels {list(levels)} is in the pyramid")
        self.reduce = nn.ModuleDict(
            {str(s): ConvBnReLU(pyramid_channels[s], reduced, 1) for s in self.levels}
        )
        self.score = nn.ModuleDict({str(s): nn.Conv2d(reduced, 1, 1) for s in self.levels})
        for conv in self.score.values():
            nn.init.zeros_(conv.weight)
            nn.init.zeros_(conv.bias)
        self.last_weights: Tensor | None = None

    def forward(self, pyramid: Mapping[int, Tensor]) -> Tensor:
        size = pyramid[self.levels[0]].shape[-2:]
        feats = [resize(self.reduce[str(s)](pyramid[s]), size) for s in self.levels]
        scores = [self.score[str(s)](f) for s, f in zip(self.levels, feats, strict=True)]
        weights = torch.softmax(torch.cat(scores, dim=1), dim=1)  # [B, L, h, w]
        self.last_weights = weights.detach()
        # [B, L, C, h, w] weighted by [B, L, 1, h, w], summed over the levels
        return (torch.stack(feats, dim=1) * weights.unsqueeze(2)).sum(dim=1)


class Projection(nn.Module):
    """The course template's stand-in for ASPP (``aspp: false``): one 1x1 Conv-BN-ReLU.

    Shapes: [B, cin, H, W] -> [B, cout, H, W].
    """

    def __init__(
        self, cin: int, cout: int = 256, squeeze_excitation: bool = False, se_reduction: int = 16
    ) -> None:
        super().__init__()
        self.conv = ConvBnReLU(cin, cout, 1)
        self.se = SqueezeExcitation(cout, se_reduction) if squeeze_excitation else None

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv(x)
        return y if self.se is None else self.se(y)


class _SkipFusion(nn.Module):
    """Upsample ``x`` to a skip's size, concat the skip reduced by a 1x1 Conv-BN-ReLU, and
    mix with ``n_convs`` 3x3 Conv-BN-ReLU. [B, cin, h, w] + [B, cskip, H, W] -> [B, cout, H, W].
    """

    def __init__(
        self, cin: int, cskip: int, reduced: int, cout: int, n_convs: int, reduce: bool = True
    ) -> None:
        super().__init__()
        # reduce=False: the skip arrives already reduced (multi-scale attention fusion)
        self.reduce: nn.Module = ConvBnReLU(cskip, reduced, 1) if reduce else nn.Identity()
        reduced = reduced if reduce else cskip
        convs = [ConvBnReLU(cin + reduced, cout, 3)]
        convs += [ConvBnReLU(cout, cout, 3) for _ in range(n_convs - 1)]
        self.fuse = nn.Sequential(*convs)

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        x = resize(x, skip.shape[-2:])
        return self.fuse(torch.cat([x, self.reduce(skip)], dim=1))


class DeepLabV3PlusDecoder(nn.Module):
    """DeepLabV3+ decoder with the course's switches and the Problem 4 extra skips.

    ``skip=True`` (DeepLabV3+): the 4x encoder features are reduced to ``skip_channels``
    (48) by a 1x1 Conv-BN-ReLU, the bottleneck is upsampled to 4x, both are concatenated and
    mixed by two 3x3 Conv-BN-ReLU at ``channels`` (256), then a 1x1 conv gives the
    predictions.

    ``skip=False`` (the course template's stub decoder): no skip and no 3x3 convs, the
    1x1 prediction conv runs on the bottleneck. (The template upsampled to 4x first; a 1x1
    conv commutes with bilinear upsampling, so the predictions are the same, 16x cheaper.)

    ``extra_skips=True``: before the 4x stage, when the pyramid has an 8x level finer than
    the bottleneck, fuse it (one 3x3 conv at ``channels``); after the 4x stage, fuse the
    stem's 2x features (reduced to ``skip_channels // 2``) with one 3x3 conv at
    ``channels // 2``. Width is halved at 2x because that map has 4x the pixels.

    ``attention_skips=True``: the 4x skip is a :class:`MultiScaleSkip` fusion of the 4x,
    8x and 16x encoder levels (those the pyramid has), each reduced to ``skip_channels``,
    instead of the 4x level alone.

    ``adaptive_bins=N`` (one output channel only): the 1x1 prediction conv is replaced by
    :class:`AdaptiveBins` with N bins, reading the features and the bottleneck input.

    Forward: ``(bottleneck [B, cin, H/os, W/os], pyramid {scale: [B, C_s, H/s, W/s]})`` ->
    ``(predictions [B, out_channels, H/s_f, W/s_f], features [B, feature_channels, H/s_f,
    W/s_f])`` where ``s_f`` is 4 (2 with extra skips, os without skip) and ``features`` are
    the input of the final 1x1 conv.
    """

    def __init__(
        self,
        cin: int,
        pyramid_channels: Mapping[int, int],
        out_channels: int,
        *,
        channels: int = 256,
        skip_channels: int = 48,
        skip: bool = True,
        extra_skips: bool = False,
        attention_skips: bool = False,
        squeeze_excitation: bool = False,
        se_reduction: int = 16,
        adaptive_bins: int = 0,
    ) -> None:
        super().__init__()
        if adaptive_bins and out_channels != 1:
            raise ValueError("adaptive_bins predicts one channel")
        if (extra_skips or attention_skips) and not skip:
            raise ValueError("extra_skips and attention_skips need skip=True")
        self.multi_skip = (
            MultiScaleSkip(pyramid_channels, skip_channels) if attention_skips else None
        )
        output_stride = max(pyramid_channels)
        self.stages = nn.ModuleDict()
        width = cin
        if skip:
            if extra_skips and 8 in pyramid_channels and output_stride > 8:
                self.stages["s8"] = _SkipFusion(
                    width, pyramid_channels[8], skip_channels, channels, 1
                )
                width = channels
            self.stages["s4"] = _SkipFusion(
                width,
                skip_channels if attention_skips else pyramid_channels[4],
                skip_channels,
                channels,
                2,
                reduce=not attention_skips,
            )
            width = channels
            if extra_skips:
                half = max(channels // 2, 1)
                self.stages["s2"] = _SkipFusion(
                    width, pyramid_channels[2], max(skip_channels // 2, 1), half, 1
                )
                width = half
        self.feature_channels = width
        self.se = SqueezeExcitation(width, se_reduction) if squeeze_excitation else None
        self.bins = AdaptiveBins(width, cin, adaptive_bins) if adaptive_bins else None
        # exactly one of the two predicts, so that every parameter is used
        self.predict = None if adaptive_bins else nn.Conv2d(width, out_channels, 1)

    def feature_modules(self) -> list[nn.Module]:
        """Every submodule :meth:`features` uses (all but the prediction conv)."""
        return [m for m in (self.multi_skip, self.stages, self.se) if m is not None]

    def features(self, bottleneck: Tensor, pyramid: Mapping[int, Tensor]) -> Tensor:
        """Everything but the final 1x1 conv: [B, feature_channels, H/s_f, W/s_f]."""
        x = bottleneck
        for key, stage in self.stages.items():
            if key == "s4" and self.multi_skip is not None:
                x = stage(x, self.multi_skip(pyramid))
            else:
                x = stage(x, pyramid[int(key[1:])])
        if self.se is not None:
            x = self.se(x)
        return x

    def forward(self, bottleneck: Tensor, pyramid: Mapping[int, Tensor]) -> tuple[Tensor, Tensor]:
        x = self.features(bottleneck, pyramid)
        if self.bins is not None:
            return self.bins(x, bottleneck), x
        return self.predict(x), x


class HeadDecoder(nn.Module):
    """Skip-less decoder (distillation's final decoders): ``n_convs`` 3x3 Conv-BN-ReLU,
    optional SE, 1x1 conv to the predictions. It mirrors the DeepLabV3+ decoder after its
    concatenation, the input already carries the skip information.

    Forward: [B, cin, H, W] -> (predictions [B, out_channels, H, W],
    features [B, channels, H, W]).
    """

    def __init__(
        self,
        cin: int,
        out_channels: int,
        *,
        channels: int = 256,
        n_convs: int = 2,
        squeeze_excitation: bool = False,
        se_reduction: int = 16,
    ) -> None:
        super().__init__()
        convs = [ConvBnReLU(cin if i == 0 else channels, channels, 3) for i in range(n_convs)]
        self.convs = nn.Sequential(*convs)
        width = channels if n_convs else cin
        self.feature_channels = width
        self.se = SqueezeExcitation(width, se_reduction) if squeeze_excitation else None
        self.predict = nn.Conv2d(width, out_channels, 1)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x = self.convs(x)
        if self.se is not None:
            x = self.se(x)
        return self.predict(x), x


class SelfAttention(nn.Module):
    """Gated feature transfer of task distillation (PAD-Net style).

    ``conv(x) * sigmoid(attention(x))`` with two bias-free 3x3 convs. The attention conv
    starts at zero, so the gate opens at 0.5 everywhere and learns where to pass the
    other task's features.

    Shapes: [B, cin, H, W] -> [B, cout, H, W].
    """

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
        self.attention = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
        nn.init.zeros_(self.attention.weight)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x) * torch.sigmoid(self.attention(x))


def _sincos_2d(h: int, w: int, dim: int, device: torch.device) -> Tensor:
    """Fixed 2D sine/cosine position code [h * w, dim] (row-major): a quarter of the
    channels per (axis, sin/cos), frequencies geometric from 1 to 1/100 cycles per token.
    Any grid size works, which a learned table would not."""
    quarter = max(dim // 4, 1)
    freqs = 100.0 ** (-torch.arange(quarter, device=device) / quarter)
    ys = torch.arange(h, device=device, dtype=torch.float32)[:, None] * freqs  # [h, q]
    xs = torch.arange(w, device=device, dtype=torch.float32)[:, None] * freqs  # [w, q]
    code = torch.cat(
        [
            ys.sin()[:, None].expand(h, w, quarter),
            ys.cos()[:, None].expand(h, w, quarter),
            xs.sin()[None].expand(h, w, quarter),
            xs.cos()[None].expand(h, w, quarter),
        ],
        dim=-1,
    ).reshape(h * w, 4 * quarter)
    return F.pad(code, (0, dim - 4 * quarter))


class AdaptiveBins(nn.Module):
    """Adaptive depth bins (AdaBins, Bhat et al. 2021; report 002 §4) as a prediction head.

    Latents: the bottleneck [B, cin_bottleneck, h, w] is projected to ``embed`` channels
    and average-pooled to at most ``max_tokens`` (16x32) tokens, plus a fixed 2D sine
    position code. ``n_bins`` learned bin tokens and one range token are appended, and
    ``layers`` pre-LayerNorm transformer layers (multi-head self-attention + MLP) run over
    the sequence. Per image, the range token gives the bins' range (``lo`` and a positive
    ``span``) and the bin tokens' first output channel their widths (softmax); centers
    ``c_k = lo + span * (cumsum(w)_k - w_k / 2)``. Per pixel, a 1x1 conv of the decoder
    features is the query; its dot products with the bin tokens' outputs, softmaxed over
    the bins, are the bin probabilities; the prediction is the expectation ``sum_k p_k
    c_k``.

    The value is an expectation over centers on a learned per-image range, not a
    positive quantity, so it works in every depth space (meters, log, inverse, all
    normalized): the range starts at [-3, 3] (standardized values) and moves freely.
    Memory: attention over at most 512 + n_bins + 1 tokens whatever the input size, and a
    [B, n_bins, H/4, W/4] probability map (64 bins at 256x512: 2 MiB per image).

    Forward: ``(features [B, cin, H', W'], bottleneck [B, cin_bottleneck, h, w])`` ->
    ``[B, 1, H', W']``; :attr:`last_centers` keeps the [B, n_bins] centers of the last call.
    """

    def __init__(
        self,
        cin: int,
        cin_bottleneck: int,
        n_bins: int = 64,
        embed: int = 128,
        heads: int = 4,
        layers: int = 2,
        max_tokens: tuple[int, int] = (16, 32),
    ) -> None:
        super().__init__()
        self.n_bins = n_bins
        self.max_tokens = max_tokens
        self.latents = nn.Conv2d(cin_bottleneck, embed, 1)
        self.bin_tokens = nn.Parameter(0.02 * torch.randn(n_bins, embed))
        self.range_token = nn.Parameter(0.02 * torch.randn(1, embed))
        layer = nn.TransformerEncoderLayer(
            embed, heads, 2 * embed, dropout=0.0, batch_first=True, norm_first=True
        )
        self.transformer = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(embed)
        self.width_logit = nn.Linear(embed, 1)
        self.range = nn.Linear(embed, 2)
        with torch.no_grad():
            # lo = -3, span = softplus(b) = 6: the standardized range +-3 sigma
            self.range.weight.zero_()
            self.range.bias.copy_(torch.tensor([-3.0, math.log(math.expm1(6.0))]))
        self.query = nn.Conv2d(cin, embed, 1)
        self.last_centers: Tensor | None = None

    def forward(self, features: Tensor, bottleneck: Tensor) -> Tensor:
        b = bottleneck.shape[0]
        lat = self.latents(bottleneck)
        h, w = lat.shape[-2:]
        th, tw = min(h, self.max_tokens[0]), min(w, self.max_tokens[1])
        if (th, tw) != (h, w):
            lat = F.adaptive_avg_pool2d(lat, (th, tw))
        tokens = lat.flatten(2).transpose(1, 2)  # [B, th*tw, E]
        tokens = tokens + _sincos_2d(th, tw, tokens.shape[-1], tokens.device).to(tokens.dtype)
        seq = torch.cat(
            [
                self.range_token.expand(b, -1, -1).to(tokens.dtype),
                self.bin_tokens.expand(b, -1, -1).to(tokens.dtype),
                tokens,
            ],
            dim=1,
        )
        out = self.norm(self.transformer(seq))
        lo, span_raw = self.range(out[:, 0]).unbind(-1)  # [B], [B]
        span = F.softplus(span_raw) + 1e-3
        bins = out[:, 1 : 1 + self.n_bins]  # [B, N, E]
        widths = torch.softmax(self.width_logit(bins).squeeze(-1), dim=-1)  # [B, N]
        centers = lo[:, None] + span[:, None] * (torch.cumsum(widths, dim=-1) - widths / 2)
        self.last_centers = centers.detach()
        q = self.query(features)  # [B, E, H', W']
        logits = torch.einsum("behw,bne->bnhw", q, bins) / math.sqrt(q.shape[1])
        probs = torch.softmax(logits, dim=1)
        return torch.einsum("bnhw,bn->bhw", probs, centers).unsqueeze(1)
