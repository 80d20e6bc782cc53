"""Homoscedastic uncertainty weighting (Kendall, Gal & Cipolla, CVPR 2018).

A learned log-variance ``s_k = log sigma_k^2`` per task: a regression task contributes
``0.5 exp(-s_k) L_k + 0.5 s_k`` (``L/(2 sigma^2) + log sigma``), a classification task
``exp(-s_k) L_k + 0.5 s_k`` (``L/sigma^2 + log sigma``); each task says which
(:attr:`~scenemtl.tasks.base.Task.likelihood_scale`). The ``s_k`` are trained by the run's
optimizer (without weight decay). The total can be negative; that is expected.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from scenemtl.balancing.base import LossBalancer
from scenemtl.errors import UserError

if TYPE_CHECKING:
    from scenemtl.tasks.base import Task


class UncertaintyWeighting(LossBalancer):
    """Homoscedastic uncertainty weighting (Kendall et al. 2018).

    Args:
        weights: constant multipliers of each task's term (default 1).
        tasks: tasks to weight.
        init_log_var: initial ``s_k = log sigma_k^2`` (one float for all, or per task).
    """

    def __init__(
        self,
        weights: Mapping[str, float] | None = None,
        tasks: Sequence[Task] = (),
        init_log_var: float | Mapping[str, float] = 0.0,
    ) -> None:
        super().__init__(weights, tasks)
        if isinstance(init_log_var, Mapping):
            unknown = set(init_log_var) - set(self.task_names)
            if unknown:
                raise UserError(f"init_log_var names unknown task(s) {sorted(unknown)}")
            init = [float(init_log_var.get(n, 0.0)) for n in self.task_names]
        else:
            init = [float(init_log_var)] * self.num_tasks
        if not all(math.isfinite(v) for v in init):
            raise UserError(f"init_log_var must be finite, got {init}")
        self.log_vars = nn.Parameter(torch.tensor(init, dtype=torch.float32))
        # L/sigma^2 for a softmax likelihood, L/(2 sigma^2) for a Gaussian one: each task
        # says which (Task.likelihood_scale).
        scale = [float(t.likelihood_scale) for t in self.tasks]
        self.register_buffer("likelihood_scale", torch.tensor(scale), persistent=False)

    def combine(self, losses: Tensor) -> tuple[Tensor, Tensor]:
        s = self.log_vars.to(losses.dtype)
        base = self.base_weights.to(losses.dtype)
        eff = base * self.likelihood_scale.to(losses.dtype) * torch.exp(-s)
        total = (eff * losses + base * 0.5 * s).sum()
        return total, eff

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [self.log_vars]
