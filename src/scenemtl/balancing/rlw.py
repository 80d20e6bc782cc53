"""Random loss weighting (Lin et al., "Reasonable effectiveness of random weighting", TMLR
2022): every step draws ``lambda = K softmax(z)``, ``z ~ N(0, I)``, and minimizes
``sum_k lambda_k w_k L_k``. The factor K makes the mean weight 1, as with fixed weights.

The draw of step t comes from a generator seeded with ``(seed, t)``: every process of a
DDP run draws the same weights, and a resumed run draws what the uninterrupted one would.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from scenemtl.balancing.base import LossBalancer, _as_weight

if TYPE_CHECKING:
    from scenemtl.tasks.base import Task


class RandomLossWeighting(LossBalancer):
    """Args: weights, tasks; ``seed``: seed of the weight draws."""

    draws: Tensor

    def __init__(
        self,
        weights: Mapping[str, float] | None = None,
        tasks: Sequence[Task] = (),
        seed: int = 0,
    ) -> None:
        super().__init__(weights, tasks)
        self.seed = int(seed)
        self.register_buffer("draws", torch.zeros((), dtype=torch.long))
        self.register_buffer("lam", torch.ones(self.num_tasks))

    def observe(self, losses: Tensor, present: Tensor | None = None) -> None:
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + int(self.draws))
        z = torch.randn(self.num_tasks, generator=gen)
        # The draw of a step with absent tasks: the same z (the stream does not depend on
        # the labels), the softmax over the present tasks only, times their number, so
        # the present tasks' mean weight stays 1 (the method run on the present tasks).
        if present is not None:
            present = present.cpu()
            z = torch.where(present, z, torch.full_like(z, -math.inf))
        count = self.num_tasks if present is None else int(present.sum())
        self.lam.copy_(count * torch.softmax(z, dim=0) if count else torch.zeros_like(z))
        self.draws += 1

    def combine(self, losses: Tensor, present: Tensor | None = None) -> tuple[Tensor, Tensor]:
        eff = (self.base_weights * self.lam).to(losses.dtype) * _as_weight(present, losses)
        return (eff * losses).sum(), eff
