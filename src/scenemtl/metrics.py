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

Partial labels: a batch's ``"labelled"`` entry (task name -> bool [B], see
:func:`scenemtl.data.dataset.collate_samples`) restricts each task's metric to the samples
labelled for it: an unlabelled sample counts nowhere (not as an image without valid
pixels either), so every figure above is over the labelled samples of the split.

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

from collections.abc import Mapping, Sequence

from torch import Tensor, nn

from scenemtl.reporting.metrics import GRADER, GRADER_TASKS, delta_m, grader  # noqa: F401
from scenemtl.tasks.base import Task

# Each task kind owns its metric; re-exported under their old home's names.
from scenemtl.tasks.depth import DepthMetrics as DepthMetrics
from scenemtl.tasks.labels import labelled_mask
from scenemtl.tasks.segmentation import SemsegMetrics as SemsegMetrics


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
            batch: the DataLoader batch; ``batch[task]`` is the ground truth as loaded,
                ``batch["labelled"][task]`` (optional) bool [B], the samples that have it.
        """
        for name, metric in self.tasks.items():
            if name not in preds:
                raise KeyError(f"predictions lack task {name!r}")
            if name not in batch:
                raise KeyError(f"batch lacks ground truth for task {name!r}")
            pred, target = preds[name], batch[name]
            mask = labelled_mask(batch, name)
            if mask is not None and not bool(mask.all()):
                if not bool(mask.any()):
                    continue
                pred, target = pred[mask.to(pred.device)], target[mask]
            metric.update(pred, target)

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
