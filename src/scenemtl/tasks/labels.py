"""Which samples of a batch have a task's label (partial labels).

A sample without a label for a task lacks the task's key; collating such samples
(:func:`scenemtl.data.dataset.collate_samples`) fills the missing targets with the task's
fill value and records, under :data:`LABELLED`, task name -> bool [B] of the samples that
have it. Losses (:mod:`scenemtl.losses`) and metrics (:mod:`scenemtl.metrics`) read the
mask here, so the key has one home below both.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

LABELLED = "labelled"
"""Batch key of the per-task masks of labelled samples."""


def labelled_mask(batch: Mapping[str, Any], name: str) -> Tensor | None:
    """bool [B], the samples of ``batch`` labelled for task ``name`` (on the device of the
    task's target), or None when the batch says nothing (every sample is)."""
    labelled = batch.get(LABELLED)
    if not isinstance(labelled, Mapping) or name not in labelled:
        return None
    return labelled[name].to(device=batch[name].device, dtype=torch.bool)
