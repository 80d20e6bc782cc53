"""Counting integer values on any device: the histogram step of the task metrics."""

from __future__ import annotations

import torch
from torch import Tensor


def count_values(values: Tensor, size: int) -> Tensor:
    """``torch.bincount(values, minlength=size)`` that also works in deterministic mode.

    CUDA's bincount refuses to run under ``torch.use_deterministic_algorithms`` (which
    Lightning's ``deterministic=True`` turns on); the fallback counts via a sort, in
    O(N) memory, unlike a one-hot [N, size] comparison that would need gigabytes for a
    full-resolution Cityscapes batch.
    """
    if values.device.type == "cpu" or not torch.are_deterministic_algorithms_enabled():
        return torch.bincount(values, minlength=size)
    uniq, counts = torch.unique(values, return_counts=True)
    out = torch.zeros(size, dtype=torch.long, device=values.device)
    out[uniq] = counts
    return out
