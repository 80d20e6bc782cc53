"""Task weighting: how the per-task losses become the one scalar that is optimized.

Methods (``build_weighting(method, ...)``):

* ``"fixed"``: ``total = sum_k w_k L_k`` with configured weights (default 1).
* ``"uncertainty"``: Kendall, Gal & Cipolla, CVPR 2018. A learned log-variance
  ``s_k = log sigma_k^2`` per task; a regression task contributes
  ``0.5 exp(-s_k) L_k + 0.5 s_k`` (``L/(2 sigma^2) + log sigma``), a classification task
  ``exp(-s_k) L_k + 0.5 s_k`` (``L/sigma^2 + log sigma``). The ``s_k`` are
  ``nn.Parameter`` s, so the optimizer of the owning module updates them. The total can
  be negative; that is expected.
* ``"dwa"``: Dynamic Weight Averaging, Liu, Johns & Davison, CVPR 2019.
  ``lambda_k(t) = K exp(r_k / T) / sum_i exp(r_i / T)`` with
  ``r_k = Lbar_k(t-1) / Lbar_k(t-2)`` the ratio of the task's average training loss over
  the last two epochs; all weights are 1 during the first two epochs. The owner calls
  :meth:`TaskWeighting.on_epoch_start` (with the epoch index) at the start and
  :meth:`TaskWeighting.on_epoch_end` at the end of every training epoch.

The configured fixed weights also act as constant multipliers for the automatic methods,
so ``weights`` means the same thing whatever the method. All state lives in parameters
and buffers, so it is saved in and restored from checkpoints.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from scenemtl.errors import UserError

if TYPE_CHECKING:
    from scenemtl.tasks.base import Task

WEIGHTING_METHODS: tuple[str, ...] = ("fixed", "uncertainty", "dwa")


class TaskWeighting(nn.Module):
    """Base class: fixed weights; subclasses override :meth:`combine`.

    Args:
        weights: task name -> non-negative weight; missing tasks get 1.0.
        tasks: the tasks to weight (at least one).
    """

    base_weights: Tensor

    def __init__(
        self, weights: Mapping[str, float] | None = None, tasks: Sequence[Task] = ()
    ) -> None:
        super().__init__()
        self.tasks: tuple[Task, ...] = tuple(tasks)
        if not self.tasks:
            raise ValueError("a task weighting needs at least one task")
        self.task_names: tuple[str, ...] = tuple(t.name for t in self.tasks)
        self.register_buffer("base_weights", _check_weights(weights, self.task_names))

    @property
    def num_tasks(self) -> int:
        return len(self.tasks)

    def forward(self, losses: Mapping[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        """Combine per-task losses.

        Args:
            losses: task name -> scalar loss, one entry per task of this weighting.

        Returns:
            (total scalar, task name -> detached scalar effective weight of that loss).
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
        """[K] losses -> (total scalar, [K] effective weights)."""
        w = self.base_weights.to(losses.dtype)
        return (w * losses).sum(), w

    def observe(self, losses: Tensor) -> None:
        """Called with the detached [K] losses of every training forward; no-op here."""

    def on_epoch_start(self, epoch: int) -> None:
        """Start-of-training-epoch hook (needed by DWA; a no-op for the other methods)."""

    def on_epoch_end(self, mean_losses: Mapping[str, float] | None = None) -> None:
        """End-of-training-epoch hook (needed by DWA; a no-op for the other methods)."""

    def current_weights(self) -> dict[str, float]:
        """The effective weights a forward pass would use now, as floats."""
        with torch.no_grad():
            _, eff = self.combine(torch.ones(self.num_tasks, device=self.base_weights.device))
        return {n: float(eff[i]) for i, n in enumerate(self.task_names)}


class FixedWeighting(TaskWeighting):
    """``total = sum_k w_k L_k``."""


class UncertaintyWeighting(TaskWeighting):
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


class DynamicWeightAveraging(TaskWeighting):
    """Dynamic Weight Averaging (Liu et al. 2019).

    Average training losses per epoch are accumulated from :meth:`forward` calls in
    training mode (or passed explicitly to :meth:`on_epoch_end`). Under DDP,
    ``on_epoch_end()`` without arguments all-reduces the accumulators, so every process
    uses the same weights; it must then be called on every process.

    Args:
        weights: constant multipliers (default 1).
        tasks: tasks to weight.
        temperature: ``T`` > 0; larger is closer to equal weights (paper: 2).
    """

    history: Tensor
    epochs_done: Tensor
    epoch_sum: Tensor
    epoch_count: Tensor
    dwa_weights: Tensor
    accumulating_epoch: Tensor

    def __init__(
        self,
        weights: Mapping[str, float] | None = None,
        tasks: Sequence[Task] = (),
        temperature: float = 2.0,
    ) -> None:
        super().__init__(weights, tasks)
        if not (math.isfinite(temperature) and temperature > 0):
            raise UserError(f"DWA temperature must be > 0, got {temperature}")
        self.temperature = float(temperature)
        k = self.num_tasks
        # history[0] = mean losses of epoch t-2, history[1] = of epoch t-1
        self.register_buffer("history", torch.zeros(2, k, dtype=torch.float64))
        self.register_buffer("epochs_done", torch.zeros((), dtype=torch.long))
        self.register_buffer("epoch_sum", torch.zeros(k, dtype=torch.float64))
        self.register_buffer("epoch_count", torch.zeros((), dtype=torch.float64))
        self.register_buffer("dwa_weights", torch.ones(k, dtype=torch.float32))
        self.register_buffer("accumulating_epoch", torch.tensor(-1, dtype=torch.long))

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}"

    def combine(self, losses: Tensor) -> tuple[Tensor, Tensor]:
        eff = (self.base_weights * self.dwa_weights).to(losses.dtype)
        return (eff * losses).sum(), eff

    def observe(self, losses: Tensor) -> None:
        # A non-finite step is the run's problem to report; it must not poison the
        # epoch averages that set the weights of all later epochs.
        if torch.isfinite(losses).all():
            self.epoch_sum += losses.to(self.epoch_sum)
            self.epoch_count += 1

    def on_epoch_start(self, epoch: int) -> None:
        """Tell which epoch the coming training steps belong to.

        If the accumulated steps belong to an earlier epoch that was never closed, it is
        closed now. This makes resume exact whichever way the checkpoint was taken: a
        mid-epoch checkpoint continues the same epoch's averages, and one written after
        the last step of an epoch but before :meth:`on_epoch_end` ran (Lightning saves at
        validation end, before ``on_train_epoch_end``) closes that epoch here. Under DDP
        it must be called on every process (it may all-reduce).
        """
        if int(self.accumulating_epoch) not in (-1, epoch) and self.epoch_count > 0:
            self.on_epoch_end()
        self.accumulating_epoch.fill_(epoch)

    def on_epoch_end(self, mean_losses: Mapping[str, float] | None = None) -> None:
        """Close an epoch: record its mean losses and update the weights.

        Args:
            mean_losses: task name -> mean training loss of the epoch. If None, the
                means accumulated by :meth:`forward` are used (synced over DDP); an
                epoch without any accumulated step is ignored.
        """
        if mean_losses is not None:
            missing = [n for n in self.task_names if n not in mean_losses]
            if missing:
                raise KeyError(f"mean_losses lack task(s) {missing}")
            means = torch.tensor(
                [float(mean_losses[n]) for n in self.task_names],
                dtype=torch.float64,
                device=self.history.device,
            )
        else:
            acc = torch.cat([self.epoch_sum, self.epoch_count.reshape(1)])
            if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
                dist.all_reduce(acc, op=dist.ReduceOp.SUM)
            if acc[-1] <= 0:
                return
            means = acc[:-1] / acc[-1]
        self.epoch_sum.zero_()
        self.epoch_count.zero_()
        self.history[0] = self.history[1]
        self.history[1] = means
        self.epochs_done += 1
        self.dwa_weights.copy_(self._weights_from_history())

    def _weights_from_history(self) -> Tensor:
        if int(self.epochs_done) < 2:
            return torch.ones_like(self.dwa_weights)
        ratio = self.history[1] / self.history[0].clamp(min=1e-12)
        lam = self.num_tasks * torch.softmax(ratio / self.temperature, dim=0)
        return lam.to(self.dwa_weights.dtype)


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


_OPTIONS: dict[str, tuple[type[TaskWeighting], tuple[str, ...]]] = {
    "fixed": (FixedWeighting, ()),
    "uncertainty": (UncertaintyWeighting, ("init_log_var",)),
    "dwa": (DynamicWeightAveraging, ("temperature",)),
}


def build_weighting(
    method: str,
    weights: Mapping[str, float] | None = None,
    tasks: Sequence[Task] = (),
    **kw: Any,
) -> TaskWeighting:
    """Make a task weighting by name.

    Args:
        method: one of :data:`WEIGHTING_METHODS`.
        weights: task name -> constant weight (missing = 1.0).
        tasks: tasks to weight.
        **kw: method options: ``init_log_var`` (uncertainty), ``temperature`` (dwa).

    Raises:
        UserError: unknown method, option not accepted by the method, bad value.
    """
    if method not in _OPTIONS:
        raise UserError(
            f"unknown loss weighting {method!r}; choose one of {', '.join(WEIGHTING_METHODS)}"
        )
    cls, accepted = _OPTIONS[method]
    extra = sorted(set(kw) - set(accepted))
    if extra:
        allowed = ", ".join(accepted) or "none"
        raise UserError(
            f"loss weighting {method!r} does not take option(s) {extra} (accepted: {allowed})"
        )
    return cls(weights, tasks, **kw)
