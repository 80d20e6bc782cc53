"""Training losses: per-task losses, deep supervision and the weighted total.

* Semantic segmentation: cross-entropy over labelled pixels (255 = ignore).
* Depth: ``"l1"`` or ``"l2"`` between the prediction and the encoded ground truth in the
  configured :class:`~scenemtl.depth_space.DepthSpace`, or ``"silog"`` on the log of
  the decoded meters. Only pixels with valid ground truth (``depth > 0``) count.

Every loss is finite on a batch without a single labelled / valid pixel: it is then
exactly zero and still attached to the graph, so backward and DDP gradient reduction run
as usual.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from scenemtl.depth_space import DepthSpace
from scenemtl.errors import UserError
from scenemtl.tasks import IGNORE_INDEX, TASKS, Task
from scenemtl.weighting import TaskWeighting, build_weighting

DEPTH_LOSSES: tuple[str, ...] = ("l1", "l2", "silog")
DEFAULT_SILOG_LAMBDA = 0.85


def semseg_loss(logits: Tensor, target: Tensor) -> Tensor:
    """Cross-entropy averaged over labelled pixels of the batch.

    Args:
        logits: [B,C,H,W] float (any precision; computed in float32).
        target: [B,H,W] int64 class ids, ``IGNORE_INDEX`` = not labelled.

    Returns:
        scalar float32; 0.0 (with a graph) if no pixel is labelled, where
        ``F.cross_entropy(reduction="mean")`` would return NaN.
    """
    per_pixel = F.cross_entropy(
        logits.float(), target.long(), ignore_index=IGNORE_INDEX, reduction="none"
    )
    count = (target != IGNORE_INDEX).sum()
    return per_pixel.sum() / count.clamp(min=1)


def depth_loss(
    pred: Tensor,
    target_m: Tensor,
    space: DepthSpace,
    kind: str = "l1",
    silog_lambda: float = DEFAULT_SILOG_LAMBDA,
) -> Tensor:
    """Depth regression loss over valid pixels.

    ``l1`` / ``l2``: mean absolute / squared difference between ``pred`` and
    ``space.encode(target_m)``, averaged over all valid pixels of the batch.

    ``silog`` (Eigen et al. 2014, in the square-root form used by BTS/AdaBins):
    per image, ``d = log(decoded pred) - log(target)`` over its valid pixels and
    ``sqrt(mean(d^2) - silog_lambda * mean(d)^2)``; then averaged over images that have
    valid pixels. ``silog_lambda = 1`` is fully scale invariant, ``0`` is log-RMSE.

    Args:
        pred: [B,1,H,W] or [B,H,W], the network output in ``space``.
        target_m: [B,H,W] ground truth in meters, 0 = invalid.
        space: the configured depth space.
        kind: one of :data:`DEPTH_LOSSES`.
        silog_lambda: in [0, 1].

    Returns:
        scalar float32; 0.0 (with a graph) when nothing is valid.
    """
    if pred.dim() == 4:
        pred = pred[:, 0]
    if pred.shape != target_m.shape:
        raise ValueError(f"depth prediction {tuple(pred.shape)} vs target {tuple(target_m.shape)}")
    pred = pred.float()
    valid = target_m > 0
    if kind in ("l1", "l2"):
        diff = pred - space.encode(target_m)
        per_pixel = diff.abs() if kind == "l1" else diff.square()
        # where() rather than multiplying by the mask: 0 * inf would still be NaN.
        total = torch.where(valid, per_pixel, torch.zeros_like(per_pixel)).sum()
        return total / valid.sum().clamp(min=1)
    if kind == "silog":
        log_pred = space.log_meters(pred)
        log_gt = torch.log(torch.where(valid, target_m.float(), torch.ones_like(log_pred)))
        d = torch.where(valid, log_pred - log_gt, torch.zeros_like(log_pred)).flatten(1)
        n = valid.flatten(1).sum(dim=1)
        has = n > 0
        n_safe = n.clamp(min=1).to(d.dtype)
        mean_d = d.sum(dim=1) / n_safe
        mean_d2 = d.square().sum(dim=1) / n_safe
        # The clamp guards against tiny negative values from rounding; the epsilon keeps
        # the gradient of sqrt finite for a perfect prediction.
        per_image = torch.sqrt((mean_d2 - silog_lambda * mean_d.square()).clamp(min=0) + 1e-8)
        per_image = torch.where(has, per_image, torch.zeros_like(per_image))
        return per_image.sum() / has.sum().clamp(min=1)
    raise UserError(f"unknown depth loss {kind!r}; choose one of {', '.join(DEPTH_LOSSES)}")


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
    """

    total: Tensor
    tasks: dict[str, Tensor]
    weights: dict[str, Tensor]
    parts: dict[str, list[Tensor]] = field(default_factory=dict)

    def log_dict(self, prefix: str = "loss") -> dict[str, Tensor]:
        """Flat scalars for logging: ``{prefix: total, f"{prefix}_{task}": ..., ...}``."""
        out = {prefix: self.total.detach()}
        for name, value in self.tasks.items():
            out[f"{prefix}_{name}"] = value.detach()
            out[f"weight_{name}"] = self.weights[name]
        return out


class MultiTaskLoss(nn.Module):
    """Per-task losses with deep supervision, combined by a :class:`TaskWeighting`.

    The weighting is a submodule, so learnable weights (uncertainty weighting) are in
    ``parameters()`` of whatever module owns this loss, and its state is saved in
    checkpoints.

    Args:
        depth_space: the space the depth outputs live in (shared with decoding).
        depth_loss: one of :data:`DEPTH_LOSSES`.
        silog_lambda: lambda of the SILog loss, in [0, 1].
        weighting: the task weighting; fixed unit weights if None.
    """

    def __init__(
        self,
        depth_space: DepthSpace,
        depth_loss: str = "l1",
        silog_lambda: float = DEFAULT_SILOG_LAMBDA,
        weighting: TaskWeighting | None = None,
    ) -> None:
        super().__init__()
        if depth_loss not in DEPTH_LOSSES:
            raise UserError(
                f"unknown depth loss {depth_loss!r}; choose one of {', '.join(DEPTH_LOSSES)}"
            )
        if not 0.0 <= silog_lambda <= 1.0:
            raise UserError(f"silog_lambda must be in [0, 1], got {silog_lambda}")
        self.depth_space = depth_space
        self.depth_loss = depth_loss
        self.silog_lambda = float(silog_lambda)
        self.weighting = weighting if weighting is not None else build_weighting("fixed")

    def task_loss(self, task: Task, pred: Tensor, target: Tensor) -> Tensor:
        """The loss of one output of one task (the task-specific choice lives here).

        Args:
            pred: logits [B,C,H,W] (classification) or [B,1,H,W] (regression); a
                lower-resolution auxiliary output is bilinearly upsampled to the target.
            target: [B,H,W] from the batch.
        """
        if pred.shape[-2:] != target.shape[-2:]:
            pred = F.interpolate(pred, size=target.shape[-2:], mode="bilinear", align_corners=False)
        if task.kind == "classification":
            return semseg_loss(pred, target)
        return depth_loss(pred, target, self.depth_space, self.depth_loss, self.silog_lambda)

    def forward(
        self, outputs: Mapping[str, Sequence[Tensor] | Tensor], batch: Mapping[str, Tensor]
    ) -> LossOutput:
        """Compute all losses.

        Args:
            outputs: task name -> list of predictions (deep supervision; the last is the
                final one) or a single tensor.
            batch: the DataLoader batch; ``batch[task.name]`` is the target of each task
                (semseg int64 [B,H,W], depth float32 meters [B,H,W]).
        """
        per_task: dict[str, Tensor] = {}
        parts: dict[str, list[Tensor]] = {}
        for task in TASKS:
            if task.name not in outputs:
                raise KeyError(f"model outputs lack task {task.name!r}")
            if task.name not in batch:
                raise KeyError(f"batch lacks ground truth for task {task.name!r}")
            preds = outputs[task.name]
            preds = [preds] if isinstance(preds, Tensor) else list(preds)
            if not preds:
                raise ValueError(f"model produced no output for task {task.name!r}")
            losses = [self.task_loss(task, p, batch[task.name]) for p in preds]
            per_task[task.name] = torch.stack(losses).sum()
            parts[task.name] = [v.detach() for v in losses]
        total, weights = self.weighting(per_task)
        return LossOutput(total=total, tasks=per_task, weights=weights, parts=parts)
