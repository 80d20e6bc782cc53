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

Partial labels: a step with absent tasks minimizes FAMO's objective over the present
tasks (weights ``softmax`` of their logits alone); the logit update uses the tasks
present in both consecutive steps (the softmax over those), and the other logits and
their Adam moments are left as they were. Under DDP a task's synced loss is the mean
over the processes that have it.
"""

from __future__ import annotations

import math
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

    def observe(self, losses: Tensor, present: Tensor | None = None) -> None:
        # the mean over the processes that have the task (NaN where none has it); every
        # process takes part in the same all-reduce whatever its labels
        if present is None:
            present = torch.ones_like(losses, dtype=torch.bool)
        keep = present.to(losses.dtype)
        acc = all_reduce_mean(torch.cat([torch.where(present, losses.detach(), 0.0), keep]))
        k = self.num_tasks
        synced = torch.where(acc[k:] > 0, acc[:k] / acc[k:].clamp(min=1e-30), math.nan)
        previous = self.famo._prev_losses
        if previous is not None:
            both = torch.isfinite(synced) & torch.isfinite(previous.to(synced))
            if bool(both.all()):
                self.famo.update(synced.to(self.famo._w.device))
            elif bool(both.any()):
                self._update_subset(synced, both)
        self._synced = synced

    def _update_subset(self, losses: Tensor, both: Tensor) -> None:
        """FAMO's logit step on the tasks present in both steps (softmax over them); the
        other logits and their Adam moments keep their values."""
        famo, idx = self.famo, torch.nonzero(both.cpu()).flatten()
        before = famo._prev_losses.to(famo._w)[idx] - famo.min_losses[idx] + _EPSILON
        after = losses.to(famo._w)[idx] - famo.min_losses[idx] + _EPSILON
        delta = torch.log(before) - torch.log(after)
        with torch.enable_grad():
            z = torch.softmax(famo._w[idx], dim=0)
            grad = torch.autograd.grad(z, famo._w, grad_outputs=delta)[0]
        if famo._optimizer is None:
            famo._optimizer = torch.optim.Adam(
                [famo._w], lr=famo.lr, weight_decay=famo.weight_decay
            )
        out = ~both.to(famo._w.device)
        state = famo._optimizer.state.get(famo._w, {})
        kept = {k: v[out].clone() for k, v in state.items() if k in ("exp_avg", "exp_avg_sq")}
        logits = famo._w.detach()[out].clone()
        famo._w.grad = grad
        famo._optimizer.step()
        famo._w.grad = None
        with torch.no_grad():
            famo._w[out] = logits
            for k, v in kept.items():
                famo._optimizer.state[famo._w][k][out] = v

    def combine(self, losses: Tensor, present: Tensor | None = None) -> tuple[Tensor, Tensor]:
        previous = self.famo._prev_losses
        if present is None:
            total = self.famo(losses)
            z = torch.softmax(self.famo._w.detach(), dim=0).to(losses.dtype)
        else:
            # torchjd's FAMO objective over the present tasks only
            logits = self.famo._w.detach().to(losses.dtype)
            z = torch.softmax(torch.where(present, logits, -math.inf), dim=0)
            safe = torch.where(present, losses, torch.ones_like(losses))
            shifted = safe - self.famo.min_losses.to(losses) + _EPSILON
            normalizer = (z / shifted).sum().detach()
            total = ((z / normalizer) * torch.log(shifted)).sum()
        # Only training steps (observed, synced over processes) set what the next step's
        # decrease is measured from; validation losses must not.
        self.famo._prev_losses = self._synced if self._synced is not None else previous
        self._synced = None
        shift = (losses.detach() - self.famo.min_losses.to(losses) + _EPSILON).clamp(min=_EPSILON)
        inv = z / shift
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
