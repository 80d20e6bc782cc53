"""Evaluation metrics (torchmetrics, so they sync across DDP processes).

Definitions (shared/DESIGN.md, "Metrics and the reporting convention"):

* ``semseg``: mean IoU in [0, 100] over the classes of the class table, from ONE confusion matrix
  accumulated over all labelled pixels of the split (label 255 is ignored). A class with
  no pixel in the ground truth and none in the prediction has an undefined IoU (0/0): it
  is reported as NaN and left out of the mean, as cityscapesscripts does. A class only
  predicted (false positives, no ground truth) has IoU 0 and counts.
* ``semseg_pixacc``: pixel accuracy in [0, 100], correctly classified labelled pixels
  over all labelled pixels of the split (the same confusion matrix; the multi-task
  papers' "Pix Acc").
* ``depth``: SI-logRMSE = ``100 * sqrt(mean(d^2) - mean(d)^2)``, ``d = ln pred - ln gt``
  over the valid pixels (gt > 0) of ONE image, averaged over images; images without
  valid pixels are skipped.
* ``depth_mae`` (m; the papers' "Abs Err"), ``depth_rmse`` (m), ``depth_absrel`` (their
  "Rel Err"), ``depth_sqrel`` (m),
  ``depth_logrmse`` (natural log): pixel-averaged over all valid pixels of the split
  (every valid pixel weighs the same, whichever image it is in).
* ``depth_delta1..3``: percentage (0..100) of valid pixels with
  ``max(pred/gt, gt/pred) < 1.25^k``, pixel-averaged over the split.
* ``grader = max(semseg - 50, 0) + max(50 - depth, 0)``: the course metric, defined
  for runs that learn both ``semseg`` and ``depth`` (:data:`GRADER_TASKS`).

On data whose depth is in other units (the MTAN release's Cityscapes disparity, see
:mod:`scenemtl.data.mtan`) the same formulas hold in those units: ``depth_mae`` is then
in disparity units; ``depth`` (SI-logRMSE) is unchanged by a scale and by inverting both
maps, so it equals the value depth in meters would give (up to the release's offset).

Depth metrics accept meters only: predictions decoded with
:meth:`scenemtl.tasks.depth_space.DepthSpace.decode`, ground truth exactly as the batch holds
it from disk. There is no argument through which a depth normalization could reach the
ground truth. Accumulation is float64 (depth sums) and int64 (confusion matrix).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn
from torchmetrics import Metric

from scenemtl.data.format import IGNORE_INDEX
from scenemtl.reporting.metrics import GRADER, GRADER_TASKS, delta_m, grader  # noqa: F401

if TYPE_CHECKING:
    from scenemtl.tasks.base import Task

DELTA_BASE = 1.25


def _count(values: Tensor, size: int) -> Tensor:
    """``torch.bincount(values, minlength=size)`` that also works in deterministic mode.

    CUDA's bincount refuses to run under ``torch.use_deterministic_algorithms`` (which
    Lightning's ``deterministic=True`` turns on); the fallback counts via a sort, in
    O(N) memory, unlike a one-hot [N, size] comparison that would need gigabytes for a
    full-resolution Cityscapes batch.
    """
    if values.device.type == "cpu" or not torch.are_deterministic_algorithms_enabled():
        return torch.bincount(values, minlength=size)
    uniq, counts = torch.unique(values, return_counts=True)
    out = torch.zeros(size, dtype=torch.long, device=values.device)
    out[uniq] = counts
    return out


class SemsegMetrics(Metric):
    """Confusion matrix over a split; mean and per-class IoU.

    ``compute()`` returns ``{"semseg": mIoU, "semseg_pixacc": pixel accuracy,
    "semseg_iou/<class name>": IoU, ...}``, all float64 scalars in [0, 100] (NaN for a
    class absent from both GT and prediction; pixel accuracy is NaN before any labelled
    pixel was seen).

    Args:
        num_classes: number of classes.
        names: class names for the per-class keys (default: ``class_<i>``).
        prefix: key of the mean IoU (the task's name).
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    confmat: Tensor

    def __init__(
        self,
        num_classes: int = 19,
        names: list[str] | None = None,
        prefix: str = "semseg",
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.names = (
            list(names) if names is not None else [f"class_{i}" for i in range(num_classes)]
        )
        if len(self.names) != num_classes:
            raise ValueError(f"{len(self.names)} class names for {num_classes} classes")
        self.prefix = prefix
        self.add_state(
            "confmat",
            default=torch.zeros(num_classes, num_classes, dtype=torch.long),
            dist_reduce_fx="sum",
        )

    def update(self, preds: Tensor, target: Tensor) -> None:
        """Accumulate a batch.

        Args:
            preds: logits [B,C,H,W] (float) or class ids [B,H,W] (integer).
            target: [B,H,W] class ids, ``IGNORE_INDEX`` = not labelled.
        """
        if preds.is_floating_point():
            if preds.dim() != 4 or preds.shape[1] != self.num_classes:
                raise ValueError(
                    f"float predictions must be logits [B,{self.num_classes},H,W], "
                    f"got {tuple(preds.shape)}"
                )
            preds = preds.argmax(dim=1)
        if preds.shape != target.shape:
            raise ValueError(
                f"semseg prediction {tuple(preds.shape)} vs target {tuple(target.shape)}"
            )
        target = target.long()
        preds = preds.long()
        labelled = target != IGNORE_INDEX
        gt = target[labelled]
        pr = preds[labelled]
        if gt.numel() == 0:
            return
        if bool(((gt < 0) | (gt >= self.num_classes)).any()):
            raise ValueError(f"semseg target holds values outside 0..{self.num_classes - 1}, 255")
        if bool(((pr < 0) | (pr >= self.num_classes)).any()):
            raise ValueError(f"semseg prediction holds values outside 0..{self.num_classes - 1}")
        # row = ground truth, column = prediction
        counts = _count(gt * self.num_classes + pr, self.num_classes**2)
        self.confmat += counts.reshape(self.num_classes, self.num_classes)

    def per_class_iou(self) -> Tensor:
        """[C] float64 IoU in [0, 100] from the current (local) state; NaN = undefined."""
        cm = self.confmat.to(torch.float64)
        tp = cm.diagonal()
        union = cm.sum(dim=0) + cm.sum(dim=1) - tp
        iou = 100.0 * tp / union
        return torch.where(union > 0, iou, torch.full_like(iou, math.nan))

    def compute(self) -> dict[str, Tensor]:
        iou = self.per_class_iou()
        defined = ~torch.isnan(iou)
        miou = iou[defined].mean() if bool(defined.any()) else iou.new_tensor(math.nan)
        out = {self.prefix: miou.to(torch.float64)}
        labelled = self.confmat.sum()
        correct = self.confmat.diagonal().sum().to(torch.float64)
        out[f"{self.prefix}_pixacc"] = (
            100.0 * correct / labelled if labelled > 0 else miou.new_tensor(math.nan)
        ).to(torch.float64)
        for name, value in zip(self.names, iou, strict=True):
            out[f"{self.prefix}_iou/{name}"] = value
        return out


class DepthMetrics(Metric):
    """SI-logRMSE per image averaged over images, plus pixel-averaged error metrics.

    ``compute()`` returns float64 scalars ``{"depth", "depth_mae", "depth_rmse",
    "depth_absrel", "depth_sqrel", "depth_logrmse", "depth_delta1", "depth_delta2",
    "depth_delta3"}`` (NaN if nothing valid was seen); see the module docstring.
    """

    is_differentiable = False
    higher_is_better = False
    full_state_update = False

    silog_sum: Tensor
    num_images: Tensor
    num_pixels: Tensor
    abs_sum: Tensor
    sq_sum: Tensor
    absrel_sum: Tensor
    sqrel_sum: Tensor
    logsq_sum: Tensor
    delta_count: Tensor

    _SUMS = ("silog_sum", "num_images", "num_pixels", "abs_sum", "sq_sum", "absrel_sum",
             "sqrel_sum", "logsq_sum")  # fmt: skip

    def __init__(self, prefix: str = "depth") -> None:
        super().__init__()
        self.prefix = prefix
        for name in self._SUMS:
            self.add_state(name, default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state(
            "delta_count", default=torch.zeros(3, dtype=torch.float64), dist_reduce_fx="sum"
        )

    def update(self, pred_m: Tensor, gt_m: Tensor) -> None:
        """Accumulate a batch.

        Args:
            pred_m: predicted depth in meters, [B,H,W] or [B,1,H,W]; must be positive
                and finite wherever the ground truth is valid.
            gt_m: ground-truth meters [B,H,W] as read from disk, 0 = invalid.

        Raises:
            ValueError: shape mismatch, or a prediction that is not positive meters at a
                valid pixel (e.g. a still-normalized network output).
        """
        if pred_m.dim() == 4:
            if pred_m.shape[1] != 1:
                raise ValueError(
                    f"depth prediction must have one channel, got {tuple(pred_m.shape)}"
                )
            pred_m = pred_m[:, 0]
        if pred_m.shape != gt_m.shape or gt_m.dim() != 3:
            raise ValueError(
                f"depth prediction {tuple(pred_m.shape)} vs target {tuple(gt_m.shape)}"
            )
        pred = pred_m.to(torch.float64).flatten(1)
        gt = gt_m.to(torch.float64).flatten(1)
        valid = (gt > 0) & torch.isfinite(gt)
        if not bool(valid.any()):
            return
        bad = valid & ~((pred > 0) & torch.isfinite(pred))
        if bool(bad.any()):
            raise ValueError(
                "depth metrics take positive meters; decode network outputs with "
                "DepthSpace.decode before updating the metrics"
            )
        one = torch.ones_like(gt)
        p = torch.where(valid, pred, one)
        g = torch.where(valid, gt, one)
        zero = torch.zeros_like(gt)
        d = torch.where(valid, torch.log(p) - torch.log(g), zero)  # 0 at invalid pixels
        n = valid.sum(dim=1).to(torch.float64)
        has = n > 0
        n_safe = n.clamp(min=1)
        mean_d = d.sum(dim=1) / n_safe
        var = (d.square().sum(dim=1) / n_safe - mean_d.square()).clamp(min=0)
        self.silog_sum += (100.0 * var.sqrt())[has].sum()
        self.num_images += has.sum()

        err = torch.where(valid, p - g, zero)
        self.num_pixels += n.sum()
        self.abs_sum += err.abs().sum()
        self.sq_sum += err.square().sum()
        self.absrel_sum += (err.abs() / g).sum()
        self.sqrel_sum += (err.square() / g).sum()
        self.logsq_sum += d.square().sum()
        ratio = torch.maximum(p / g, g / p)
        for k in range(3):
            self.delta_count[k] += (valid & (ratio < DELTA_BASE ** (k + 1))).sum()

    def compute(self) -> dict[str, Tensor]:
        nan = torch.tensor(math.nan, dtype=torch.float64, device=self.num_pixels.device)
        ni, npx = self.num_images, self.num_pixels
        silog = self.silog_sum / ni if ni > 0 else nan
        if npx > 0:
            pix = {
                "mae": self.abs_sum / npx,
                "rmse": (self.sq_sum / npx).sqrt(),
                "absrel": self.absrel_sum / npx,
                "sqrel": self.sqrel_sum / npx,
                "logrmse": (self.logsq_sum / npx).sqrt(),
            }
            pix.update({f"delta{k + 1}": 100.0 * self.delta_count[k] / npx for k in range(3)})
        else:
            names = ("mae", "rmse", "absrel", "sqrel", "logrmse", "delta1", "delta2", "delta3")
            pix = dict.fromkeys(names, nan)
        out = {self.prefix: silog}
        out.update({f"{self.prefix}_{k}": v for k, v in pix.items()})
        return out


class MultiTaskMetrics(nn.Module):
    """All tasks' metrics plus, when the run has both its tasks, the course grader.

    Keys: ``"<task>"`` (the headline), ``"<task>_..."`` (the task's other metrics) and
    ``"grader"``. Prefix them (``val/``, ``test/``) when logging. Each task metric is a
    torchmetrics ``Metric`` that syncs itself over DDP processes in ``compute()``.
    Keep one instance per split (validation and test must not share state).

    Args:
        tasks: the run's tasks; each makes its own metric (:meth:`Task.make_metric`).
    """

    def __init__(self, tasks: Sequence[Task]) -> None:
        super().__init__()
        self.tasks = nn.ModuleDict({t.name: t.make_metric() for t in tasks})
        self.has_grader = all(name in self.tasks for name in GRADER_TASKS)

    def update(self, preds: Mapping[str, Tensor], batch: Mapping[str, Tensor]) -> None:
        """Accumulate a batch.

        Args:
            preds: task name -> final prediction in metric units (:meth:`Task.decode`).
            batch: the DataLoader batch; ``batch[task]`` is the ground truth as loaded.
        """
        for name, metric in self.tasks.items():
            if name not in preds:
                raise KeyError(f"predictions lack task {name!r}")
            if name not in batch:
                raise KeyError(f"batch lacks ground truth for task {name!r}")
            metric.update(preds[name], batch[name])

    @property
    def update_count(self) -> int:
        return sum(m.update_count for m in self.tasks.values())

    def compute(self) -> dict[str, Tensor]:
        """Flat dict of float64 scalar tensors, including ``"grader"`` when defined."""
        out: dict[str, Tensor] = {}
        for metric in self.tasks.values():
            out.update(metric.compute())
        if self.has_grader:
            out[GRADER] = grader(*(out[name] for name in GRADER_TASKS))
        return out

    def reset(self) -> None:
        for metric in self.tasks.values():
            metric.reset()
