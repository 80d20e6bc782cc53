"""What every balancing method shares: the task list, the constant weights, the hooks.

A method turns the per-task losses ``L_k`` of a training step into one update. Loss-level
methods do it with a scalar ``total`` that is backpropagated as usual; gradient-level
methods (:mod:`scenemtl.balancing.gradient`) combine the per-task gradients of the shared
part of the network instead. The configured constant weights ``w_k`` (``loss_weights``)
multiply each task's loss before any method sees it, so they mean the same thing whatever
the method (the log-based methods weight each task's log term by ``w_k``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, ClassVar

import torch
import torch.distributed as dist
from torch import Tensor, nn

from scenemtl.errors import UserError

if TYPE_CHECKING:
    from scenemtl.tasks.base import Task

LOSS_LEVEL = "loss"
GRADIENT_LEVEL = "gradient"


class LossBalancer(nn.Module):
    """Base class of all methods: ``total = sum_k w_k L_k`` unless :meth:`combine` says else.

    Args:
        weights: task name -> non-negative constant weight; missing tasks get 1.0.
        tasks: the tasks to balance (at least one).
    """

    level: ClassVar[str] = LOSS_LEVEL
    """``"loss"``: :meth:`forward`'s total is backpropagated; ``"gradient"``: see
    :class:`~scenemtl.balancing.gradient.GradientBalancer`."""
    base_weights: Tensor

    def __init__(
        self, weights: Mapping[str, float] | None = None, tasks: Sequence[Task] = ()
    ) -> None:
        super().__init__()
        self.tasks: tuple[Task, ...] = tuple(tasks)
        if not self.tasks:
            raise ValueError("a balancing method needs at least one task")
        self.task_names: tuple[str, ...] = tuple(t.name for t in self.tasks)
        self.register_buffer("base_weights", _check_weights(weights, self.task_names))

    @property
    def num_tasks(self) -> int:
        return len(self.tasks)

    def forward(self, losses: Mapping[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        """Combine per-task losses.

        Args:
            losses: task name -> scalar loss, one entry per task.

        Returns:
            (total scalar, task name -> detached effective weight ``d total / d L_k``).
        """
        missing = [n for n in self.task_names if n not in losses]
        if missing:
            raise KeyError(f"losses lack task(s) {missing}")
        stacked = torch.stack([losses[n].float().reshape(()) for n in self.task_names])
        if self.training:
            self.observe(stacked.detach())
        total, eff = self.combine(stacked)
        eff = eff.detach()
        return total, {n: eff[i] for i, n in enumerate(self.task_names)}

    def combine(self, losses: Tensor) -> tuple[Tensor, Tensor]:
        """[K] losses -> (total scalar, [K] effective weights ``d total / d L_k``)."""
        w = self.base_weights.to(losses.dtype)
        return (w * losses).sum(), w

    def observe(self, losses: Tensor) -> None:
        """Called with the detached [K] losses of every training forward; no-op here."""

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Parameters the run's optimizer trains with the network (learned weights);
        parameters a method updates itself are not listed."""
        return []

    def on_epoch_start(self, epoch: int) -> None:
        """Start-of-training-epoch hook."""

    def on_epoch_end(self, mean_losses: Mapping[str, float] | None = None) -> None:
        """End-of-training-epoch hook."""

    def current_weights(self) -> dict[str, float]:
        """The effective weights at unit losses, as floats."""
        with torch.no_grad():
            _, eff = self.combine(torch.ones(self.num_tasks, device=self.base_weights.device))
        return {n: float(eff[i]) for i, n in enumerate(self.task_names)}


def distributed_world() -> int:
    """Number of processes of the default group (1 without torch.distributed)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


def all_reduce_mean(t: Tensor) -> Tensor:
    """``t`` averaged over the processes (in place, returned); identity in one process."""
    world = distributed_world()
    if world > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        t.div_(world)
    return t


def _check_weights(weights: Mapping[str, float] | None, names: Sequence[str]) -> Tensor:
    weights = dict(weights or {})
    unknown = set(weights) - set(names)
    if unknown:
        raise UserError(
            f"loss weights name unknown task(s) {sorted(unknown)}; tasks: {', '.join(names)}"
        )
    values = []
    for n in names:
        try:
            v = float(weights.get(n, 1.0))
        except (TypeError, ValueError):
            raise UserError(f"loss weight of {n!r} is not a number: {weights[n]!r}") from None
        if not (math.isfinite(v) and v >= 0):
            raise UserError(f"loss weight of {n!r} must be finite and >= 0, got {v}")
        values.append(v)
    if not any(v > 0 for v in values):
        raise UserError("all loss weights are zero: nothing would be trained")
    return torch.tensor(values, dtype=torch.float32)
