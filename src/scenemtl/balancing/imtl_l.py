"""IMTL-L, the loss-balance half of Impartial Multi-Task Learning (Liu et al., ICLR 2021):
a learned scale ``s_k`` per task, ``total = sum_k (exp(s_k) w_k L_k - s_k)``. At the optimum
of ``s_k`` every scaled loss equals 1, so tasks are balanced by their loss values. The
``s_k`` start at 0 (plain sum) and are trained by the run's optimizer without weight decay.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from scenemtl.balancing.base import LossBalancer, _as_weight

if TYPE_CHECKING:
    from scenemtl.tasks.base import Task


class ImpartialLossScaling(LossBalancer):
    """Learned per-task loss scales."""

    def __init__(
        self, weights: Mapping[str, float] | None = None, tasks: Sequence[Task] = ()
    ) -> None:
        super().__init__(weights, tasks)
        self.log_scale = nn.Parameter(torch.zeros(self.num_tasks))

    def combine(self, losses: Tensor, present: Tensor | None = None) -> tuple[Tensor, Tensor]:
        s = self.log_scale.to(losses.dtype)
        keep = _as_weight(present, losses)  # an absent task's s_k gets no gradient
        eff = self.base_weights.to(losses.dtype) * s.exp() * keep
        return (eff * losses - keep * s).sum(), eff

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [self.log_scale]
