"""The training loss of a run: every task's loss on every output, combined by a weighting.

Each task computes its own loss (:meth:`scenemtl.tasks.base.Task.loss`); this module adds
deep supervision (a task's loss is summed over all its outputs, lower-resolution
auxiliary outputs upsampled to the target) and hands the per-task losses to a
:class:`~scenemtl.balancing.base.LossBalancer`.

**Partial labels.** A batch may carry ``batch["labelled"]``: task name -> bool [B], the
samples that have the task's label (:func:`scenemtl.data.dataset.collate_samples`; the
others hold the task's fill value). A task's loss is then computed on its labelled
samples only (the mean over their labelled pixels, as if the batch held only them); a
task without any labelled sample gets its loss on the all-fill target, which every
task's loss makes a zero attached to the graph (:meth:`Task.loss`), and is *absent* for
the balancing method (``present`` False).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from scenemtl.balancing import LossBalancer, build_balancer
from scenemtl.tasks.base import Task
from scenemtl.tasks.labels import labelled_mask


@dataclass
class LossOutput:
    """Result of :class:`MultiTaskLoss`.

    Attributes:
        total: scalar to backpropagate (weighted sum, plus any regularizer of the
            weighting method).
        tasks: task name -> scalar unweighted loss, summed over all outputs of the task.
        weights: task name -> scalar effective weight applied to ``tasks[name]``
            (detached, for logging).
        parts: task name -> detached loss of each output, in output order (deep
            supervision diagnostics).
        labelled: task name -> number of samples of the batch labelled for it.
    """

    total: Tensor
    tasks: dict[str, Tensor]
    weights: dict[str, Tensor]
    parts: dict[str, list[Tensor]] = field(default_factory=dict)
    labelled: dict[str, int] = field(default_factory=dict)

    @property
    def present(self) -> dict[str, bool]:
        """Task name -> whether the batch has a labelled sample of it."""
        return {name: n > 0 for name, n in self.labelled.items()}


class MultiTaskLoss(nn.Module):
    """Per-task losses with deep supervision, combined by a balancing method
    (:class:`~scenemtl.balancing.base.LossBalancer`).

    The weighting is a submodule, so learnable weights (uncertainty weighting) are in
    ``parameters()`` of whatever module owns this loss, and its state is saved in
    checkpoints. The tasks are not submodules here: their owner registers them once.

    Args:
        tasks: the run's tasks.
        weighting: the task weighting; fixed unit weights if None.
    """

    def __init__(self, tasks: Sequence[Task], weighting: LossBalancer | None = None) -> None:
        super().__init__()
        self.task_list: tuple[Task, ...] = tuple(tasks)
        self.weighting = (
            weighting if weighting is not None else build_balancer("fixed", tasks=tasks)
        )

    def task_loss(self, task: Task, pred: Tensor, target: Tensor) -> Tensor:
        """The loss of one output of one task; a lower-resolution auxiliary output is
        bilinearly upsampled to the target first."""
        if pred.shape[-2:] != target.shape[-2:]:
            pred = F.interpolate(pred, size=target.shape[-2:], mode="bilinear", align_corners=False)
        return task.loss(pred, target)

    def forward(
        self, outputs: Mapping[str, Sequence[Tensor] | Tensor], batch: Mapping[str, Tensor]
    ) -> LossOutput:
        """Compute all losses.

        Args:
            outputs: task name -> list of predictions (deep supervision; the last is the
                final one) or a single tensor.
            batch: the DataLoader batch; ``batch[task.name]`` is the target of each task,
                ``batch["labelled"][task.name]`` (optional) its labelled samples [B].
        """
        per_task: dict[str, Tensor] = {}
        parts: dict[str, list[Tensor]] = {}
        counts: dict[str, int] = {}
        for task in self.task_list:
            if task.name not in outputs:
                raise KeyError(f"model outputs lack task {task.name!r}")
            if task.name not in batch:
                raise KeyError(f"batch lacks ground truth for task {task.name!r}")
            preds = outputs[task.name]
            preds = [preds] if isinstance(preds, Tensor) else list(preds)
            if not preds:
                raise ValueError(f"model produced no output for task {task.name!r}")
            target = batch[task.name]
            mask = labelled_mask(batch, task.name)
            counts[task.name] = int(target.shape[0]) if mask is None else int(mask.sum())
            if mask is not None and 0 < counts[task.name] < target.shape[0]:
                # the labelled samples only: the loss is theirs, whatever its reduction
                target = target[mask]
                preds = [p[mask.to(p.device)] for p in preds]
            elif mask is not None and not counts[task.name]:
                # no label at all: the loss of an all-fill target, a zero with its graph
                target = torch.full_like(target, task.fill_value)
            losses = [self.task_loss(task, p, target) for p in preds]
            per_task[task.name] = torch.stack(losses).sum()
            parts[task.name] = [v.detach() for v in losses]
        present = {name: n > 0 for name, n in counts.items()}
        total, weights = self.weighting(per_task, present)
        return LossOutput(
            total=total, tasks=per_task, weights=weights, parts=parts, labelled=counts
        )
