"""Homoscedastic uncertainty weighting (Kendall, Gal & Cipolla, CVPR 2018).

A learned log-scale ``s_k`` per task; the task contributes its loss's negative
log-likelihood ``w_k (c_k exp(-s_k) L_k + r_k s_k)``, with the factor ``c_k`` and the
regulariser ``r_k`` of the likelihood its configured loss is the negative log of
(:attr:`~scenemtl.tasks.base.Task.likelihood`, :mod:`scenemtl.tasks.likelihood`):
Gaussian for a squared error (``L/(2 sigma^2) + log sigma``), Laplace for an absolute
error (``L/b + log b``), Kendall's softmax for cross-entropy (``L/sigma^2 + log sigma``).
At the optimum of ``s_k`` the weight ``c_k exp(-s_k)`` is ``r_k / L_k``. The ``s_k`` are
trained by the run's optimizer (without weight decay). The total can be negative; that is
expected.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from scenemtl.balancing.base import LossBalancer, _as_weight
from scenemtl.errors import UserError

if TYPE_CHECKING:
    from scenemtl.tasks.base import Task


class UncertaintyWeighting(LossBalancer):
    """Homoscedastic uncertainty weighting (Kendall et al. 2018).

    Args:
        weights: constant multipliers of each task's term (default 1).
        tasks: tasks to weight.
        init_log_var: initial log-scale ``s_k`` (one float for all, or per task): the log
            of the likelihood's scale (``sigma^2`` for Gaussian and softmax, ``b`` for
            Laplace, see :mod:`scenemtl.tasks.likelihood`).
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
        # each task's loss says which likelihood it is the negative log of
        factor = [float(t.likelihood.factor) for t in self.tasks]
        regulariser = [float(t.likelihood.regulariser) for t in self.tasks]
        self.register_buffer("likelihood_factor", torch.tensor(factor), persistent=False)
        self.register_buffer("regulariser", torch.tensor(regulariser), persistent=False)

    def combine(self, losses: Tensor, present: Tensor | None = None) -> tuple[Tensor, Tensor]:
        s = self.log_vars.to(losses.dtype)
        # an absent task's term (its loss and its regulariser) is left out: its s_k gets
        # no gradient from this step
        base = self.base_weights.to(losses.dtype) * _as_weight(present, losses)
        eff = base * self.likelihood_factor.to(losses.dtype) * torch.exp(-s)
        total = (eff * losses + base * self.regulariser.to(losses.dtype) * s).sum()
        return total, eff

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [self.log_vars]
