"""FAMO, fast adaptive multitask optimization (Liu et al., NeurIPS 2023), from torchjd.

Task logits ``xi`` give weights ``z = softmax(xi)``; the step minimizes
``c sum_k z_k log(L_k + eps)`` with ``c`` making the update a convex combination of the
tasks' gradients scaled by ``1 / L_k``. The logits follow the observed decrease of the log
losses: FAMO takes an Adam step on them at every step. As in LibMTL, the decrease is
measured between consecutive training steps (consecutive batches), which costs nothing;
the paper's variant re-runs the forward pass on the same batch after the update.

Under DDP the losses that drive the logits are averaged over the processes, so all keep the
same weights. The logits, their Adam state and the last losses are in the checkpoint, so a
resumed run continues exactly. FAMO balances the tasks itself: constant ``loss_weights``
other than 1 are refused.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor
from torchjd.scalarization import FAMO

from scenemtl.balancing.base import LossBalancer, all_reduce_mean
from scenemtl.errors import UserError

if TYPE_CHECKING:
    from scenemtl.tasks.base import Task

_EPSILON = 1e-8  # torchjd's FAMO shift, for the effective weights


class FAMOWeighting(LossBalancer):
    """Args: weights (must be 1), tasks; ``lr``: Adam step of the logits (paper: 0.025);
    ``weight_decay``: their regularization (paper: 1e-3)."""

    def __init__(
        self,
        weights: Mapping[str, float] | None = None,
        tasks: Sequence[Task] = (),
        lr: float = 0.025,
        weight_decay: float = 1e-3,
    ) -> None:
        super().__init__(weights, tasks)
        if not torch.all(self.base_weights == 1):
            raise UserError("loss weighting 'famo' balances the tasks itself: drop loss_weights")
        for name, value in (("lr", lr), ("weight_decay", weight_decay)):
            if not (isinstance(value, (int, float)) and value >= 0):
                raise UserError(f"famo option {name} must be a number >= 0, got {value!r}")
        self.famo = FAMO(self.num_tasks, lr=float(lr), weight_decay=float(weight_decay))
        self._synced: Tensor | None = None

    def observe(self, losses: Tensor) -> None:
        synced = all_reduce_mean(losses.detach().clone())
        if self.famo._prev_losses is not None and torch.isfinite(synced).all():
            self.famo.update(synced.to(self.famo._w.device))
        self._synced = synced

    def combine(self, losses: Tensor) -> tuple[Tensor, Tensor]:
        previous = self.famo._prev_losses
        total = self.famo(losses)
        # Only training steps (observed, synced over processes) set what the next step's
        # decrease is measured from; validation losses must not.
        self.famo._prev_losses = self._synced if self._synced is not None else previous
        self._synced = None
        z = torch.softmax(self.famo._w.detach(), dim=0).to(losses.dtype)
        inv = z / (losses.detach() - self.famo.min_losses + _EPSILON)
        return total, inv / inv.sum()

    def get_extra_state(self) -> dict[str, Any]:
        opt = self.famo._optimizer
        return {
            "prev_losses": self.famo._prev_losses,
            "adam": opt.state_dict() if opt is not None else None,
        }

    def set_extra_state(self, state: Any) -> None:
        if not isinstance(state, dict):
            return
        self.famo._prev_losses = state.get("prev_losses")
        if state.get("adam") is not None:
            self.famo._optimizer = torch.optim.Adam(
                [self.famo._w], lr=self.famo.lr, weight_decay=self.famo.weight_decay
            )
            self.famo._optimizer.load_state_dict(state["adam"])
