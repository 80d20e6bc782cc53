"""Geometric loss strategy (Chennupati et al., CVPRW 2019): the weighted geometric mean
``exp(sum_k w_k log L_k / sum_k w_k)`` of the losses. Its gradient weighs each task by
``total w_k / (L_k sum w)``: a task whose loss is small relative to the others weighs more.
Losses must be positive (every built-in task's loss is)."""

from __future__ import annotations

import torch
from torch import Tensor

from scenemtl.balancing.base import LossBalancer, _as_weight

_EPS = 1e-12


class GeometricLossStrategy(LossBalancer):
    """Weighted geometric mean of the losses."""

    def combine(self, losses: Tensor, present: Tensor | None = None) -> tuple[Tensor, Tensor]:
        # the geometric mean of the present tasks' losses; an absent task's loss (0) is
        # replaced by 1 before the log, so neither it nor its gradient reaches the total
        w = self.base_weights.to(losses.dtype) * _as_weight(present, losses)
        if not bool(w.sum() > 0):  # no present task of positive weight: nothing to learn
            return (losses * 0).sum(), torch.zeros_like(losses)
        safe = losses if present is None else torch.where(present, losses, torch.ones_like(losses))
        share = w / w.sum()
        total = (share * safe.clamp(min=_EPS).log()).sum().exp()
        return total, (total * share / safe.clamp(min=_EPS)).detach()
