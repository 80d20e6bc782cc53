"""What the binary-map kinds share (boundaries, saliency): one logit channel, a {0, 1}
target with 255 = not labelled, the class-balanced binary cross-entropy of the papers,
probabilities as the decoded prediction and 8-bit probability PNGs as files.

The loss (docs/metrics.md, "Boundaries and saliency"), per labelled pixel with logit
``x`` and label ``y``::

    l = w * y * softplus(-x) + (1 - w) * (1 - y) * softplus(x)

averaged over the labelled pixels of the batch (``softplus(-x) = -log sigmoid(x)``).
``w`` is a fixed positive weight (boundaries: 0.95, the papers' ``edge_w``) or, when
None, the HED weight ``w = #negatives / #labelled`` of the batch (saliency, as the papers
train it). This equals Multi-Task-Learning-PyTorch's ``BalancedCrossEntropyLoss`` (which
sums ``w * loss_pos + (1 - w) * loss_neg`` and divides by the pixel count) on maps without
unlabelled pixels, and ATRC/InvPT's ``BalancedBinaryCrossEntropyLoss`` (binary
cross-entropy with ``pos_weight = w / (1 - w)``, divided by ``1 / (1 - w)``) always.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from scenemtl.codecs.binary import (
    BINARY_IGNORE,
    decode_probability_png,
    encode_probability_png,
    read_binary_map,
)
from scenemtl.errors import DataFormatError
from scenemtl.tasks.base import Task
from scenemtl.tasks.likelihood import SOFTMAX, Likelihood
from scenemtl.tasks.segmentation import EXPORT_LOGIT_ATOL
from scenemtl.tasks.statistics import TargetStatistics

# Probability kept away from 0 and 1 before the logit when TTA views are merged: a pixel
# every view is certain about gets a large but finite logit (float32 sigmoid saturates
# at |x| ~ 17, the logit of 1e-7 is ~ -16).
_MIN_PROB = 1e-7
# colours of the pictures: off, on, not labelled (dark violet: no probability is shown so)
_OFF, _ON, _UNLABELLED = (0, 0, 0), (255, 255, 255), (72, 0, 96)


def balanced_bce_loss(logits: Tensor, target: Tensor, pos_weight: float | None) -> Tensor:
    """Class-balanced binary cross-entropy (module doc) over the labelled pixels.

    Args:
        logits: [B,1,H,W] or [B,H,W] float (computed in float32).
        target: [B,H,W] integer 0/1, ``BINARY_IGNORE`` = not labelled.
        pos_weight: ``w`` in [0, 1), or None for the batch's HED weight.

    Returns:
        scalar float32, 0.0 with a graph when no pixel is labelled.
    """
    x = (logits[:, 0] if logits.dim() == 4 else logits).float()
    labelled = target != BINARY_IGNORE
    positive = (target == 1) & labelled
    count = labelled.sum()
    if pos_weight is None:
        negatives = (labelled & ~positive).sum()
        w = negatives.double() / count.clamp(min=1).double()
    else:
        w = torch.tensor(float(pos_weight), dtype=torch.float64, device=x.device)
    w = w.to(x.dtype)
    per_pixel = torch.where(positive, w * F.softplus(-x), (1 - w) * F.softplus(x))
    return (per_pixel * labelled).sum() / count.clamp(min=1)


class BinaryFraction(TargetStatistics):
    """Share of "on" pixels among the labelled ones and share of unlabelled pixels, as
    dataset.json "stats" ``<task>_positive_fraction`` / ``<task>_ignored_pixel_fraction``."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.counts = np.zeros(3, dtype=np.int64)  # off, on, unlabelled

    def add(self, target: np.ndarray) -> None:
        values = np.asarray(target)
        self.counts += [
            int((values == 0).sum()),
            int((values == 1).sum()),
            int((values == BINARY_IGNORE).sum()),
        ]

    def merge(self, other: TargetStatistics) -> None:
        assert isinstance(other, BinaryFraction)
        self.counts += other.counts

    def result(self, where: str) -> dict[str, Any]:
        labelled = int(self.counts[:2].sum())
        if labelled == 0:
            raise DataFormatError(f"{where}: task {self.name!r} has no labelled pixel")
        return {
            f"{self.name}_positive_fraction": float(self.counts[1] / labelled),
            f"{self.name}_ignored_pixel_fraction": float(self.counts[2] / self.counts.sum()),
        }


class BinaryMapTask(Task):
    """A per-pixel yes/no task (not registered itself; see boundaries and saliency).

    Output: one logit [B,1,H,W]. Decoded: the probability ``sigmoid`` float32 [B,H,W].
    Target: integer [B,H,W] in {0, 1}, 255 = not labelled (also where augmentation has no
    source pixel). Files: ground truth as :func:`~scenemtl.codecs.binary.read_binary_map`,
    predictions as 8-bit probability PNGs (:mod:`scenemtl.codecs.binary`). TTA averages
    the views' probabilities (as segmentation averages softmax).

    Args:
        name: task key.
        pos_weight: ``w`` of :func:`balanced_bce_loss`; None = the batch's HED weight.
    """

    prediction_modes = ("L",)
    higher_is_better = True
    fill_value = float(BINARY_IGNORE)
    target_dtype = torch.int64

    def __init__(self, name: str, pos_weight: float | None) -> None:
        super().__init__(name, 1)
        if pos_weight is not None:
            if isinstance(pos_weight, bool) or not isinstance(pos_weight, (int, float)):
                raise ValueError(f"pos_weight must be a number in [0, 1) or null: {pos_weight!r}")
            if not 0.0 <= float(pos_weight) < 1.0:
                raise ValueError(f"pos_weight must be in [0, 1), got {pos_weight}")
            pos_weight = float(pos_weight)
        self.pos_weight = pos_weight

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, pos_weight={self.pos_weight}"

    # -- data --------------------------------------------------------------------------

    def read_target(self, path: Path) -> np.ndarray:
        return read_binary_map(path).astype(np.int64)

    def statistics(self) -> BinaryFraction:
        return BinaryFraction(self.name)

    def encode_png(self, prediction: np.ndarray) -> Image.Image:
        return encode_probability_png(prediction)

    def read_prediction(self, image: Image.Image, target: np.ndarray) -> np.ndarray:
        return decode_probability_png(image)

    # -- training ----------------------------------------------------------------------

    @property
    def likelihood(self) -> Likelihood:
        # a sigmoid is the softmax over the logits (x, 0): Kendall et al.'s classification
        # likelihood with a temperature, as for segmentation
        return SOFTMAX

    def loss(self, output: Tensor, target: Tensor) -> Tensor:
        return balanced_bce_loss(output, target, self.pos_weight)

    def decode(self, output: Tensor) -> Tensor:
        return torch.sigmoid((output[:, 0] if output.dim() == 4 else output).float())

    # -- TTA ---------------------------------------------------------------------------

    def to_merge_space(self, output: Tensor) -> Tensor:
        return torch.sigmoid(output.float())

    def from_merge_space(self, mean: Tensor) -> Tensor:
        p = mean.clamp(_MIN_PROB, 1 - _MIN_PROB)
        return torch.log(p) - torch.log1p(-p)

    def single_view(self, output: Tensor) -> Tensor:
        return output.float()

    # -- pictures and export -----------------------------------------------------------

    def colorize(self, values: np.ndarray) -> np.ndarray:
        """Probabilities (float) as grey levels; a target (integer) as black 0, white 1
        and dark violet 255 (not labelled)."""
        values = np.asarray(values)
        if values.dtype.kind == "f":
            grey = np.floor(np.clip(np.nan_to_num(values), 0.0, 1.0) * 255.0).astype(np.uint8)
            return np.repeat(grey[..., None], 3, axis=-1)
        out = np.zeros((*values.shape, 3), dtype=np.uint8)
        out[values == 0] = _OFF
        out[values == 1] = _ON
        out[values == BINARY_IGNORE] = _UNLABELLED
        return out

    def histogram_values(self, prediction: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        labelled = target != BINARY_IGNORE
        return prediction[labelled].float(), target[labelled].float()

    def export_outputs(self, output: Tensor) -> dict[str, Tensor]:
        return {f"{self.name}_logits": output, self.name: self.decode(output)}

    def compare_export(
        self, reference: Mapping[str, np.ndarray], candidate: Mapping[str, np.ndarray]
    ) -> tuple[bool, str]:
        key = f"{self.name}_logits"
        logit_abs = float(np.max(np.abs(reference[key].astype(np.float64) - candidate[key])))
        # the sigmoid's slope is at most 1/4, so probabilities differ by at most a quarter
        # of the logits' difference (plus float32 rounding, far below it)
        prob_abs = float(
            np.max(np.abs(reference[self.name].astype(np.float64) - candidate[self.name]))
        )
        ok = logit_abs <= EXPORT_LOGIT_ATOL and prob_abs <= EXPORT_LOGIT_ATOL / 4 + 1e-6
        text = (
            f"{self.name} logits max |diff| {logit_abs:.2e} (tol {EXPORT_LOGIT_ATOL:g}), "
            f"probabilities {prob_abs:.2e}"
        )
        return ok, text

    def describe_prediction(self, prediction: np.ndarray) -> str:
        share = 100.0 * float(np.mean(np.asarray(prediction) >= 0.5))
        return f"{self.name}: {share:.1f}% of pixels at p >= 0.5"

    def example_target(
        self, batch: int, height: int, width: int, generator: torch.Generator
    ) -> Tensor:
        """0/1 labels, "on" with probability 0.1, int64 [B,H,W] (every pixel labelled)."""
        u = torch.rand(batch, height, width, generator=generator)
        return (u < 0.1).long()
