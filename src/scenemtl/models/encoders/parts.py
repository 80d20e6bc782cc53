"""Pieces shared by the transformer and ConvNeXt encoder families.

Their parameter names follow timm's (``fc1``/``fc2`` in an MLP, ``gamma`` in a layer scale)
so that the modules built from them load timm's and DINOv2's published files with
``strict=True``. Nothing here has buffers that a published file holds.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from scenemtl.errors import UserError
from scenemtl.models.encoders.base import state_dict_mismatch


def drop_path_rates(rate: float, depths: Sequence[int]) -> list[list[float]]:
    """Stochastic-depth rate of every block, growing linearly from 0 at the first block
    to ``rate`` at the last one over all stages (the rule of the ConvNeXt, Swin and ViT
    papers and timm), split per stage: ``depths=(2, 2)`` -> ``[[0, r/3], [2r/3, r]]``."""
    if not 0.0 <= rate < 1.0:
        raise UserError(f"drop_path_rate must be in [0, 1), got {rate!r}")
    total = sum(depths)
    # on the CPU explicitly: the module may be built under torch.device("meta")
    # (declared_pyramid), where a tensor has no values to read back
    flat = torch.linspace(0.0, rate, total, device="cpu").tolist() if total > 1 else [0.0] * total
    out, start = [], 0
    for d in depths:
        out.append(flat[start : start + d])
        start += d
    return out


class DropPath(nn.Module):
    """Stochastic depth (Huang et al. 2016) on a residual branch: in training, each sample's
    branch is zeroed with probability ``p`` and the kept ones are scaled by ``1 / (1 - p)``
    so that the expectation is unchanged; identity in evaluation. Any shape [B, ...]."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"p={self.p}"


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of a [B, C, H, W] map (timm's ``LayerNorm2d``: the same
    parameters ``weight``/``bias`` [C] as ``nn.LayerNorm(C)``, eps 1e-6 by default)."""

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__(channels, eps=eps)

    def forward(self, x: Tensor) -> Tensor:
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class Mlp(nn.Module):
    """Linear -> GELU (exact, erf) -> Linear on the last dimension: [..., C] -> [..., C]."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class LayerScale(nn.Module):
    """Per-channel learned scale of a residual branch (CaiT; DINOv2's ``ls1``/``ls2``):
    x [..., C] -> x * gamma."""

    def __init__(self, dim: int, init: float = 1e-5) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), init))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gamma


def pad_to_multiple(x: Tensor, multiple: int) -> Tensor:
    """Zero-pad a [B, C, H, W] map at the bottom and right to sizes divisible by
    ``multiple`` (unchanged when they already are)."""
    h, w = x.shape[-2:]
    ph, pw = -h % multiple, -w % multiple
    if is_symbolic(h, w) or ph or pw:
        x = F.pad(x, (0, pw, 0, ph))
    return x


def is_symbolic(*sizes: object) -> bool:
    """Whether any of ``sizes`` is symbolic (torch.export / ONNX export with dynamic
    sizes). Then a size-dependent branch must not be taken in Python: it would be
    recorded as an assumption about every input size (a graph that drops the padding
    for sizes that need it); the padding is emitted always, with amounts possibly 0."""
    return any(isinstance(s, torch.SymInt) for s in sizes)


def ceil_div(a: int, b: int) -> int:
    """ceil(a / b) for a >= 0, b > 0, as ``(a + b - 1) // b``: the floor division of a
    non-negative number, which ONNX's integer Div (truncating) computes alike; the
    ``-(-a // b)`` spelling is exported as truncation of a negative number, i.e. floor."""
    return (a + b - 1) // b


def max_pool_2x2_ceil(x: Tensor) -> Tensor:
    """2x2/2 max pooling that keeps an odd last row/column, [B, C, H, W] -> [B, C,
    ceil(H/2), ceil(W/2)]: ``max_pool2d(..., ceil_mode=True)`` written as -inf padding
    then a plain pool (the same values; ONNX export of ceil mode with dynamic sizes gives
    wrong maps in onnxruntime)."""
    h, w = x.shape[-2:]
    if is_symbolic(h, w) or h % 2 or w % 2:
        x = F.pad(x, (0, w % 2, 0, h % 2), value=float("-inf"))
    return F.max_pool2d(x, 2, 2)


class MaxPool2x2Ceil(nn.Module):
    """:func:`max_pool_2x2_ceil` as a module (no parameters)."""

    def forward(self, x: Tensor) -> Tensor:
        return max_pool_2x2_ceil(x)


def load_published_state_dict(
    module: nn.Module,
    state: Mapping[str, Tensor],
    source: str,
    classifier_prefixes: tuple[str, ...] = (),
    own_prefixes: tuple[str, ...] = (),
) -> None:
    """Load a published state dict into ``module``, every key and shape checked.

    Keys starting with one of ``classifier_prefixes`` (the published classifier, which an
    encoder has no use for) are dropped, whatever their shapes (1000 or 21841 classes).
    The module's own parameters under ``own_prefixes`` (layers the published network has
    not, e.g. a ViT's multi-scale adapter) keep their values. Everything else must match
    exactly; any difference raises :class:`UserError` naming ``source``.
    """
    if not isinstance(state, Mapping) or not all(isinstance(k, str) for k in state):
        raise UserError(f"{source} does not hold a state dict (a mapping of names to tensors)")
    given = {k: v for k, v in state.items() if not k.startswith(classifier_prefixes or ("\0",))}
    own = module.state_dict()
    expected = {k: v for k, v in own.items() if not k.startswith(own_prefixes or ("\0",))}
    problem = state_dict_mismatch(expected, given)
    if problem:
        raise UserError(f"{source} does not fit {type(module).__name__}: {problem}")
    # strict load of the full dict: the published tensors plus the module's own layers
    module.load_state_dict({**{k: own[k] for k in own if k not in expected}, **given}, strict=True)
