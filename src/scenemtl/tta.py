"""Test-time augmentation: run a model on rescaled and mirrored copies of an image.

:func:`tta_outputs` evaluates ``forward`` on one *view* per (scale, flip) pair, maps every
view's outputs back onto the input's pixel grid and merges them. How a task's views are
averaged is the task's own rule (:meth:`~scenemtl.tasks.base.Task.to_merge_space` and
:meth:`~scenemtl.tasks.base.Task.from_merge_space`):

* segmentation: the **softmax probabilities** are averaged and returned as their log
  (a valid logit vector), so one over-confident view cannot outvote the others;
* depth: the views are averaged in **log-meters** (a geometric mean of the decoded
  depths) and encoded back into the model's normalized space; the log domain is where
  SI-logRMSE measures error and keeps the far range from dominating;
* normals: the views' **unit vectors** are averaged and renormalized.

A mirrored view is mapped back by its task (:meth:`~scenemtl.tasks.base.Task.unmirror`):
the pixels are mirrored back, and normals also negate their x component (mirroring the
image mirrors the camera's x axis).

A single plain view (``scales=(1.0,)``, no flip) returns what
:meth:`~scenemtl.tasks.base.Task.single_view` makes of the model's output (the depth
output bit for bit, segmentation logits as log-softmax: same argmax and probabilities).

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

from scenemtl.errors import UserError
from scenemtl.tasks.base import Task

MAX_SCALE = 4.0
"""Largest TTA scale: a view costs scale^2 of the image's compute and memory, and scales
beyond a few times the training resolution are typos (``100`` for ``1.00``)."""

Forward = Callable[[Tensor], Mapping[str, Any]]


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
        if s > MAX_SCALE:
            raise UserError(f"TTA scale {s} is above {MAX_SCALE:g} (a view costs scale^2 memory)")
    return values


def is_identity(scales: Sequence[float] | None, flip: bool) -> bool:
    """True when the TTA setting is a single plain forward pass (``None``: no scales)."""
    return (scales is None or tuple(float(s) for s in scales) == (1.0,)) and not flip


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
    forward: Forward,
    image: Tensor,
    tasks: Mapping[str, Task],
    scales: Sequence[float],
    flip: bool,
) -> Iterator[dict[str, Tensor]]:
    """Each view's final outputs, already mapped back to the input grid ([B,C,H,W]);
    a mirrored view is mirrored back by its task (:meth:`Task.unmirror`)."""
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
                    y = tasks[name].unmirror(y) if name in tasks else torch.flip(y, dims=[-1])
                view[name] = _resize(y, size)
            yield view


def tta_outputs(
    forward: Forward,
    image: Tensor,
    tasks: Sequence[Task],
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
) -> dict[str, Tensor]:
    """Merge a model's predictions over rescaled and horizontally mirrored inputs.

    Args:
        forward: ``forward(x)`` with x float [B,3,h,w] returns the model's raw outputs,
            task name -> list of tensors (the last is the prediction) or one tensor.
            Called once per view; the caller decides grad/no-grad and eval mode.
        image: float [B,3,H,W], ImageNet-normalized.
        tasks: the model's tasks; each merges its own views.
        scales: resize factors; each view runs at ``round(H*s) x round(W*s)``.
        flip: also run every scale on the horizontally mirrored image (flipped back).

    Returns:
        task name -> merged output at input resolution [B,C,H,W], usable wherever the
        model's own final output is (losses, :meth:`Task.decode`).

    Raises:
        UserError: invalid scales.
    """
    scales = check_scales(scales)
    by_name = {t.name: t for t in tasks}
    n_views = len(scales) * (2 if flip else 1)
    if n_views == 1 and scales[0] == 1.0:
        outputs = forward(image)
        return {name: by_name[name].single_view(_last(outputs[name])) for name in by_name}

    sums: dict[str, Tensor] = {}
    # Running sums rather than a stack of views: memory stays at two outputs per task.
    for view in _views(forward, image, by_name, scales, flip):
        for name, task in by_name.items():
            term = task.to_merge_space(view[name])
            sums[name] = term if name not in sums else sums[name] + term
    return {name: by_name[name].from_merge_space(total / n_views) for name, total in sums.items()}
