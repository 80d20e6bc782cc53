"""Saliency: one logit, the papers' (HED-)balanced BCE, maxF (beta^2 = 0.3) and IoU
(:mod:`scenemtl.evaluation.saliency`)."""

from __future__ import annotations

from torch import Tensor

from scenemtl.evaluation.saliency import SaliencyMetrics
from scenemtl.tasks.binary import BinaryMapTask


class TaskSaliencyMetrics(SaliencyMetrics):
    """:class:`~scenemtl.evaluation.saliency.SaliencyMetrics` named for a task:
    ``{<name>: maxF, <name>_IoU}`` in percent, ``<name>_maxF_threshold`` and
    ``<name>_IoU_threshold``. Targets of 255 are ignored (by the parent)."""

    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix

    def compute(self) -> dict[str, Tensor]:
        scores = super().compute()
        return {
            self.prefix: 100.0 * scores["maxF"],
            f"{self.prefix}_IoU": 100.0 * scores["IoU"],
            f"{self.prefix}_maxF_threshold": scores["maxF_threshold"],
            f"{self.prefix}_IoU_threshold": scores["IoU_threshold"],
        }


class SaliencyTask(BinaryMapTask):
    """Salient-object mask: target 1 on the salient object, 0 elsewhere, 255 unlabelled.

    Loss: the balanced BCE of :mod:`scenemtl.tasks.binary` with the batch's HED weight
    (``pos_weight`` None) by default, as Multi-Task-Learning-PyTorch, ATRC and InvPT train
    saliency (``BalancedCrossEntropyLoss()`` without ``pos_weight``); ``pos_weight: 0.5``
    gives half the plain binary cross-entropy. Metric: maxF (percent, beta^2 = 0.3,
    higher is better) and IoU.

    Args:
        name: task key ("saliency").
        pos_weight: option, ``w`` of the balanced BCE; None = the batch's HED weight.
    """

    kind = "saliency"
    headline_label = "maxF (%)"
    headline_unit = "%"

    def __init__(self, name: str, pos_weight: float | None = None) -> None:
        super().__init__(name, pos_weight)

    def make_metric(self) -> TaskSaliencyMetrics:
        return TaskSaliencyMetrics(self.name)
