"""Saliency maxF and IoU as the multi-task papers report them.

- **maxF** (ATRC's ``MaxF``, InvPT's ``SaliencyMeter``): true positives, predicted positives
  and actual positives are summed over the whole split at thresholds 0.05, 0.10, ..., 0.95
  (``prob >= t``); F-beta with beta^2 = 0.3 is taken per threshold from the summed counts
  (an undefined F counts as 0) and the maximum over thresholds is reported. Pixels whose
  target is 255 are ignored.
- **IoU** (Multi-Task-Learning-PyTorch's ``eval_sal``, from ASTMT): per image, the Jaccard
  index of ``prob > t`` (strict) and the target at 15 thresholds ``linspace(0.2, 0.9, 15)``
  (an image with no positive in either counts 1); averaged over images per threshold, the
  best threshold's mean is reported (their ``mIoU``).

docs/metrics.md says where the papers' own code differs (InvPT squashes its probabilities a
second time).
"""

from __future__ import annotations

import numpy as np
import torch
from torchmetrics import Metric

from scenemtl.errors import UserError

MAXF_THRESHOLDS = np.arange(1, 20) * 0.05  # torch.arange(0.05, 1, 0.05) as ATRC/InvPT
IOU_THRESHOLDS = np.linspace(0.2, 0.9, 15)  # Multi-Task-Learning-PyTorch's SaliencyMeter
BETA_SQUARED = 0.3
IGNORE_INDEX = 255


def max_f(
    true_pos: np.ndarray, pred_pos: np.ndarray, actual_pos: np.ndarray, beta2: float
) -> tuple[float, int]:
    """Best F-beta over thresholds from split-summed counts ``[T]``; (value, argmax)."""
    tp, pp, ap = (np.asarray(a, dtype=np.float64) for a in (true_pos, pred_pos, actual_pos))
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = tp / pp
        recall = tp / ap
        f = (1 + beta2) * precision * recall / (beta2 * precision + recall)
    f = np.where(np.isnan(f), 0.0, f)
    best = int(np.argmax(f))
    return float(f[best]), best


class SaliencyMetrics(Metric):
    """Streaming saliency ``maxF`` and ``IoU`` (see the module doc).

    ``update(prob, target)``: ``[B, H, W]`` probabilities in [0, 1] and ``[B, H, W]`` targets
    (0/1, 255 = ignored). ``compute()`` -> ``{"maxF", "maxF_threshold", "IoU",
    "IoU_threshold"}`` (fractions, float64 tensors). State: ``3 x T`` sums and ``15`` sums of
    per-image IoU plus an image count.
    """

    full_state_update = False
    higher_is_better = True

    def __init__(
        self,
        maxf_thresholds: np.ndarray | list[float] = MAXF_THRESHOLDS,
        iou_thresholds: np.ndarray | list[float] = IOU_THRESHOLDS,
        beta2: float = BETA_SQUARED,
    ) -> None:
        super().__init__()
        self.maxf_thresholds = torch.as_tensor(np.asarray(maxf_thresholds), dtype=torch.float64)
        self.iou_thresholds = torch.as_tensor(np.asarray(iou_thresholds), dtype=torch.float64)
        if self.maxf_thresholds.numel() == 0 or self.iou_thresholds.numel() == 0:
            raise UserError("saliency thresholds must be non-empty lists")
        self.beta2 = float(beta2)
        t, u = self.maxf_thresholds.numel(), self.iou_thresholds.numel()
        zeros = torch.zeros
        self.add_state("true_pos", default=zeros(t, dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("pred_pos", default=zeros(t, dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("actual_pos", default=zeros(t, dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("iou_sum", default=zeros(u, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("images", default=torch.tensor(0, dtype=torch.int64), dist_reduce_fx="sum")

    def update(self, prob: torch.Tensor, target: torch.Tensor) -> None:
        if prob.ndim != 3 or prob.shape != target.shape:
            raise UserError(
                f"saliency metric needs [B, H, W] prediction and target of one shape, "
                f"got {list(prob.shape)} and {list(target.shape)}"
            )
        target = target.detach().to("cpu").long()
        valid = target != IGNORE_INDEX
        if bool(((target[valid] != 0) & (target[valid] != 1)).any()):
            raise UserError("saliency targets must be 0, 1 or 255 (ignored)")
        prob = prob.detach().to("cpu", torch.float64)
        positive = (target == 1) & valid
        b = prob.shape[0]
        flat_p, flat_pos, flat_valid = (
            prob.reshape(b, -1),
            positive.reshape(b, -1),
            valid.reshape(b, -1),
        )
        for k, t in enumerate(self.maxf_thresholds):
            predicted = (flat_p >= t) & flat_valid
            self.true_pos[k] += int((predicted & flat_pos).sum())
            self.pred_pos[k] += int(predicted.sum())
            self.actual_pos[k] += int(flat_pos.sum())
        for k, t in enumerate(self.iou_thresholds):
            predicted = (flat_p > t) & flat_valid
            inter = (predicted & flat_pos).sum(dim=1).double()
            union = (predicted | flat_pos).sum(dim=1).double()
            iou = torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))
            self.iou_sum[k] += iou.sum()
        self.images += b

    def compute(self) -> dict[str, torch.Tensor]:
        f, best = max_f(
            self.true_pos.numpy(), self.pred_pos.numpy(), self.actual_pos.numpy(), self.beta2
        )
        n = int(self.images)
        mean_iou = self.iou_sum / n if n else torch.zeros_like(self.iou_sum)
        best_iou = int(torch.argmax(mean_iou))
        as_tensor = lambda v: torch.tensor(float(v), dtype=torch.float64)  # noqa: E731
        return {
            "maxF": as_tensor(f),
            "maxF_threshold": as_tensor(self.maxf_thresholds[best]),
            "IoU": as_tensor(mean_iou[best_iou]),
            "IoU_threshold": as_tensor(self.iou_thresholds[best_iou]),
        }
