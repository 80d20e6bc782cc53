"""Geometric loss strategy (Chennupati et al., CVPRW 2019): the weighted geometric mean
``exp(sum_k w_k log L_k / sum_k w_k)`` of the losses. Its gradient weighs each task by
``total w_k / (L_k sum w)``: a task whose loss is small relative to the others weighs more.
Losses must be positive (every built-in task's loss is)."""

from __future__ import annotations

from torch import Tensor

from scenemtl.balancing.base import LossBalancer

_EPS = 1e-12


class GeometricLossStrategy(LossBalancer):
    """Weighted geometric mean of the losses."""

    def combine(self, losses: Tensor) -> tuple[Tensor, Tensor]:
        w = self.base_weights.to(losses.dtype)
        share = w / w.sum()
        total = (share * losses.clamp(min=_EPS).log()).sum().exp()
        return total, (total * share / losses.clamp(min=_EPS)).detach()
