"""Scale-invariant loss (the "SI" baseline of Navon et al., Nash-MTL, ICML 2022):
``sum_k w_k log L_k``. Multiplying a task's loss by a constant does not change the update,
so losses in different units need no hand-tuned weights; each task's gradient is divided by
its loss (effective weight ``w_k / L_k``). Losses must be positive."""

from __future__ import annotations

import torch
from torch import Tensor

from scenemtl.balancing.base import LossBalancer, _as_weight

_EPS = 1e-12


class ScaleInvariantLoss(LossBalancer):
    """Weighted sum of log-losses."""

    def combine(self, losses: Tensor, present: Tensor | None = None) -> tuple[Tensor, Tensor]:
        w = self.base_weights.to(losses.dtype) * _as_weight(present, losses)
        # an absent task's loss (0) becomes 1 before the log: log 1 = 0 adds nothing, and
        # the gradient of its term is 0 rather than 0 * 1/eps
        if present is not None:
            losses = torch.where(present, losses, torch.ones_like(losses))
        safe = losses.clamp(min=_EPS)
        return (w * safe.log()).sum(), (w / safe).detach()
