"""Test-time augmentation: run a model on rescaled and mirrored copies of an image.

:func:`tta_outputs` evaluates ``forward`` on one *view* per (scale, flip) pair, maps every
view's outputs back onto the input's pixel grid and merges them:

* Classification (semseg): the **softmax probabilities** are averaged, and the result is
  returned as their logarithm. Averaging probabilities rather than raw logits keeps one
  over-confident view (logit magnitudes differ a lot between scales) from outvoting the
  others: each view contributes at most ``1 / n_views`` to any class. The log of a
  probability is a valid logit vector (``softmax(log p) == p``), so argmax, softmax and
  cross-entropy downstream work unchanged.
* Regression (depth): with a :class:`~scenemtl.depth_space.DepthSpace`, the views are
  averaged in **log-meters** (a geometric mean of the decoded depths) and the result is
  encoded back into the model's normalized space. The log domain is where the course
  metric (SI-logRMSE) measures error, and it keeps the far range, where views disagree by
  tens of meters, from dominating the mean; decoding the merged output gives the geometric
  mean whatever space the model regresses in. Without a depth space the views are averaged
  in the model's output space as they are.

A single view (``scales=(1.0,)``, no flip) returns the model's depth output bit for bit and
its semseg logits as log-softmax (same argmax, same probabilities).

Rescaling uses bilinear interpolation without anti-aliasing, the same resampling the
training augmentation's scale jitter uses, so downscaled views look like what the network
saw in training.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from scenemtl.depth_space import DepthSpace
from scenemtl.errors import UserError
from scenemtl.tasks import TASK_NAMES, get_task

Forward = Callable[[Tensor], Mapping[str, Any]]

# Smallest probability kept before the log: a class no view gives any mass to gets a
# large negative but finite logit, so a cross-entropy on the merged output stays finite.
_MIN_PROB = 1e-30


def check_scales(scales: Sequence[float]) -> tuple[float, ...]:
    """Validate a list of TTA scales.

    Args:
        scales: resize factors of the input, each finite and > 0.

    Returns:
        the scales as a tuple of floats.

    Raises:
        UserError: empty list, or a scale that is not a positive finite number.
    """
    try:
        values = tuple(float(s) for s in scales)
    except (TypeError, ValueError):
        raise UserError(f"TTA scales must be numbers, got {scales!r}") from None
    if not values:
        raise UserError("TTA needs at least one scale (1.0 = the image as it is)")
    for s in values:
        if not (math.isfinite(s) and s > 0):
            raise UserError(f"TTA scale {s} is not a positive number")
    return values


def is_identity(scales: Sequence[float], flip: bool) -> bool:
    """True when the TTA setting is a single plain forward pass."""
    return tuple(float(s) for s in scales) == (1.0,) and not flip


def scaled_size(size: tuple[int, int], scale: float) -> tuple[int, int]:
    """``(H, W)`` of the view at ``scale``: rounded, at least one pixel."""
    return max(1, round(size[0] * scale)), max(1, round(size[1] * scale))


def _last(out: Any) -> Tensor:
    return out[-1] if isinstance(out, (list, tuple)) else out


def _resize(x: Tensor, size: tuple[int, int]) -> Tensor:
    if tuple(x.shape[-2:]) == size:
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def _views(
    forward: Forward, image: Tensor, scales: Sequence[float], flip: bool
) -> Iterator[dict[str, Tensor]]:
    """Each view's final outputs, already mapped back to the input grid ([B,C,H,W])."""
    size = (int(image.shape[-2]), int(image.shape[-1]))
    for scale in scales:
        scaled = _resize(image, scaled_size(size, scale))
        for mirrored in (False, True) if flip else (False,):
            x = torch.flip(scaled, dims=[-1]) if mirrored else scaled
            outputs = forward(x)
            view = {}
            for name, out in outputs.items():
                y = _last(out)
                if y.dim() == 3:  # a task emitting [B,h,w]: give it a channel axis
                    y = y.unsqueeze(1)
                if mirrored:
                    y = torch.flip(y, dims=[-1])
                view[name] = _resize(y, size)
            yield view


def _is_classification(name: str) -> bool:
    return name in TASK_NAMES and get_task(name).kind == "classification"


def tta_outputs(
    forward: Forward,
    image: Tensor,
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
    depth_space: DepthSpace | None = None,
) -> dict[str, Tensor]:
    """Merge a model's predictions over rescaled and horizontally mirrored inputs.

    Args:
        forward: ``forward(x)`` with x float [B,3,h,w] returns the model's raw outputs,
            task name -> list of tensors (the last is the prediction) or one tensor.
            Called once per view; the caller decides grad/no-grad and eval mode.
        image: float [B,3,H,W], ImageNet-normalized.
        scales: resize factors; each view runs at ``round(H*s) x round(W*s)``.
        flip: also run every scale on the horizontally mirrored image (flipped back).
        depth_space: the model's depth space; when given, regression outputs are merged
            as the geometric mean of the decoded meters (see the module docstring).

    Returns:
        task name -> merged output at input resolution: classification [B,C,H,W]
        log-probabilities (usable as logits), regression [B,1,H,W] in the model's
        normalized output space.

    Raises:
        UserError: invalid scales.
    """
    scales = check_scales(scales)
    n_views = len(scales) * (2 if flip else 1)
    if n_views == 1 and scales[0] == 1.0:
        outputs = forward(image)
        merged = {}
        for name, out in outputs.items():
            y = _last(out)
            merged[name] = torch.log_softmax(y.float(), dim=1) if _is_classification(name) else y
        return merged

    sums: dict[str, Tensor] = {}
    # Running sums rather than a stack of views: memory stays at two outputs per task.
    for view in _views(forward, image, scales, flip):
        for name, y in view.items():
            if _is_classification(name):
                term = torch.softmax(y.float(), dim=1)
            elif depth_space is not None:
                term = depth_space.log_meters(y)
            else:
                term = y.float()
            sums[name] = term if name not in sums else sums[name] + term

    merged = {}
    for name, total in sums.items():
        mean = total / n_views
        if _is_classification(name):
            merged[name] = torch.log(mean.clamp_min(_MIN_PROB))
        elif depth_space is not None:
            merged[name] = depth_space.encode(torch.exp(mean))
        else:
            merged[name] = mean
    return merged
