"""Dynamic Weight Averaging (Liu, Johns & Davison, CVPR 2019).

``lambda_k(t) = K exp(r_k / T) / sum_i exp(r_i / T)`` with ``r_k = Lbar_k(t-1) / Lbar_k(t-2)``
the ratio of the task's average training loss over the last two epochs; all weights are 1
during the first two epochs.

Partial labels: a task's epoch average is over the steps in which it had a labelled
sample; an epoch in which it had none leaves its two averages as they were. A step with
absent tasks weights the present ones by ``K' softmax(r / T)`` over the ``K'`` present
tasks (DWA run on them: the same ratios, renormalised to mean 1).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist
from torch import Tensor

from scenemtl.balancing.base import LossBalancer, _as_weight
from scenemtl.errors import UserError

if TYPE_CHECKING:
    from scenemtl.tasks.base import Task


class DynamicWeightAveraging(LossBalancer):
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
    task_count: Tensor
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
        # steps of the epoch in which each task had a label (partial labels)
        self.register_buffer("task_count", torch.zeros(k, dtype=torch.float64))
        self.register_buffer("dwa_weights", torch.ones(k, dtype=torch.float32))
        self.register_buffer("accumulating_epoch", torch.tensor(-1, dtype=torch.long))

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}"

    def combine(self, losses: Tensor, present: Tensor | None = None) -> tuple[Tensor, Tensor]:
        lam = self.dwa_weights.to(losses.dtype)
        if present is not None:
            # lam is K softmax(r / T); restricted to the present tasks and renormalised
            # it is K' softmax(r_present / T)
            keep = _as_weight(present, losses)
            kept = (lam * keep).sum()
            lam = lam * keep * (keep.sum() / kept.clamp(min=torch.finfo(lam.dtype).tiny))
        eff = self.base_weights.to(losses.dtype) * lam
        return (eff * losses).sum(), eff

    def observe(self, losses: Tensor, present: Tensor | None = None) -> None:
        # A non-finite step is the run's problem to report; it must not poison the
        # epoch averages that set the weights of all later epochs.
        keep = torch.ones_like(self.task_count) if present is None else present.to(self.task_count)
        if torch.isfinite(losses[keep > 0]).all():
            self.epoch_sum += torch.where(keep > 0, losses.to(self.epoch_sum), 0.0)
            self.task_count += keep
            self.epoch_count += 1

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, *args) -> None:  # type: ignore[no-untyped-def]
        # checkpoints from before partial labels: every step counted for every task
        key = prefix + "task_count"
        if key not in state_dict and prefix + "epoch_count" in state_dict:
            state_dict[key] = state_dict[prefix + "epoch_count"].expand(self.num_tasks).clone()
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, *args)

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
            seen = torch.ones_like(means, dtype=torch.bool)
        else:
            k = self.num_tasks
            acc = torch.cat([self.epoch_sum, self.task_count, self.epoch_count.reshape(1)])
            if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
                dist.all_reduce(acc, op=dist.ReduceOp.SUM)
            if acc[-1] <= 0:
                return
            seen = acc[k : 2 * k] > 0
            means = acc[:k] / acc[k : 2 * k].clamp(min=1)
        self.epoch_sum.zero_()
        self.epoch_count.zero_()
        self.task_count.zero_()
        # a task without a labelled step this epoch keeps both of its averages
        self.history[0] = torch.where(seen, self.history[1], self.history[0])
        self.history[1] = torch.where(seen, means, self.history[1])
        self.epochs_done += 1
        self.dwa_weights.copy_(self._weights_from_history())

    def _weights_from_history(self) -> Tensor:
        if int(self.epochs_done) < 2:
            return torch.ones_like(self.dwa_weights)
        ratio = self.history[1] / self.history[0].clamp(min=1e-12)
        lam = self.num_tasks * torch.softmax(ratio / self.temperature, dim=0)
        return lam.to(self.dwa_weights.dtype)
