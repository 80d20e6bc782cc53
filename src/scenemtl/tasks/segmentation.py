"""Semantic segmentation: N classes from the dataset's class table, 255 = not labelled."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor
from torchmetrics import Metric

from scenemtl.codecs.classes import IGNORE_INDEX, read_semseg
from scenemtl.errors import DataFormatError
from scenemtl.tasks.base import Task
from scenemtl.tasks.counting import count_values
from scenemtl.tasks.likelihood import SOFTMAX, Likelihood
from scenemtl.tasks.statistics import TargetStatistics

# Smallest probability kept before the log when TTA views are merged: a class no view
# gives any mass to gets a large negative but finite logit.
_MIN_PROB = 1e-30
# Largest absolute logit difference between onnxruntime and torch eager.
EXPORT_LOGIT_ATOL = 1e-3


def cross_entropy_loss(logits: Tensor, target: Tensor) -> Tensor:
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


def parse_class_table(classes: Any, where: str = "classes") -> list[dict[str, Any]]:
    """Validate a class table: a list of ``{"name": str, "color": [r, g, b]}``, 1..255 long.

    Raises:
        DataFormatError: one line naming the problem.
    """
    if not isinstance(classes, list) or not 1 <= len(classes) < IGNORE_INDEX:
        raise DataFormatError(f"{where}: expected a list of 1..{IGNORE_INDEX - 1} classes")
    table = []
    for i, c in enumerate(classes):
        if not isinstance(c, Mapping) or not isinstance(c.get("name"), str):
            raise DataFormatError(f"{where}[{i}]: expected an object with a 'name'")
        color = c.get("color", [0, 0, 0])
        if not (
            isinstance(color, (list, tuple))
            and len(color) == 3
            and all(isinstance(v, int) and 0 <= v <= 255 for v in color)
        ):
            raise DataFormatError(f"{where}[{i}] ({c['name']}): 'color' must be [r, g, b] 0..255")
        table.append({"name": c["name"], "color": [int(v) for v in color]})
    return table


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
        counts = count_values(gt * self.num_classes + pr, self.num_classes**2)
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


class AbstainingSemsegMetrics(SemsegMetrics):
    """:class:`SemsegMetrics` that also takes 255 ("no class") as a prediction, as a
    submitted PNG may hold it (an argmax never does).

    Such a pixel, where the ground truth is labelled, is a false negative of the
    ground-truth class only (in that class's union, in no other class's); with no 255 in
    the predictions the scores are exactly those of the parent class.
    """

    missed: Tensor

    def __init__(self, num_classes: int, names: list[str] | None = None, prefix: str = "") -> None:
        super().__init__(num_classes=num_classes, names=names, prefix=prefix)
        self.add_state(
            "missed", default=torch.zeros(self.num_classes, dtype=torch.long), dist_reduce_fx="sum"
        )

    def update(self, preds: Tensor, target: Tensor) -> None:
        """preds int [B,H,W] in 0..C-1 or 255; target int [B,H,W] (255 = unlabelled)."""
        preds, target = preds.long(), target.long()
        abstained = (preds == IGNORE_INDEX) & (target != IGNORE_INDEX)
        if bool(abstained.any()):
            gt = target[abstained]
            if bool(((gt < 0) | (gt >= self.num_classes)).any()):
                raise ValueError(f"semseg target holds values outside 0..{self.num_classes - 1}")
            self.missed += count_values(gt, self.num_classes)
            target = torch.where(abstained, torch.full_like(target, IGNORE_INDEX), target)
        super().update(preds, target)

    def per_class_iou(self) -> Tensor:
        cm = self.confmat.to(torch.float64)
        tp = cm.diagonal()
        union = cm.sum(dim=0) + cm.sum(dim=1) - tp + self.missed.to(torch.float64)
        iou = 100.0 * tp / union
        return torch.where(union > 0, iou, torch.full_like(iou, math.nan))


class ClassFrequency(TargetStatistics):
    """Pixel counts per label value: the class frequencies of dataset.json "stats"
    (``<prefix>class_pixel_frequency``: share of the labelled pixels,
    ``<prefix>ignored_pixel_fraction``: share of all pixels labelled 255).

    Args:
        num_classes: size of the class table.
        prefix: "" for the dataset's ``semseg`` task (the keys every reader of the stats
            knows), ``<task>_`` for any further segmentation task (human parts), so two
            tables' frequencies do not overwrite each other.
    """

    def __init__(self, num_classes: int, prefix: str = "") -> None:
        self.num_classes = num_classes
        self.prefix = prefix
        self.counts = np.zeros(IGNORE_INDEX + 1, dtype=np.int64)
        self.pixels = 0

    def add(self, target: np.ndarray) -> None:
        self.counts += np.bincount(np.asarray(target).ravel(), minlength=IGNORE_INDEX + 1)
        self.pixels += int(np.asarray(target).size)

    def merge(self, other: TargetStatistics) -> None:
        assert isinstance(other, ClassFrequency)
        self.counts += other.counts
        self.pixels += other.pixels

    def result(self, where: str) -> dict[str, Any]:
        labelled = self.counts[: self.num_classes].sum()
        freq = self.counts[: self.num_classes] / max(labelled, 1)
        return {
            f"{self.prefix}class_pixel_frequency": [float(f) for f in freq],
            f"{self.prefix}ignored_pixel_fraction": float(1 - labelled / max(self.pixels, 1)),
        }


class SegmentationTask(Task):
    """Per-pixel classification into the classes of a class table.

    Output: logits [B,N,H,W]. Decoded: int64 labels [B,H,W]. Files: PNG mode L holding
    the label (a P image's palette indices are its labels). Metric: mean IoU (higher is
    better). TTA merges views as the log of the mean softmax, so one over-confident view
    cannot outvote the others.

    Args:
        name: task key ("semseg").
        classes: the class table, ``[{"name": ..., "color": [r, g, b]}, ...]``.
    """

    kind = "segmentation"
    headline_label = "mean IoU (%)"
    headline_unit = "%"
    prediction_modes = ("L", "P")  # P: palette indices are the labels, as for ground truth
    higher_is_better = True
    fill_value = float(IGNORE_INDEX)
    target_dtype = torch.int64

    def __init__(self, name: str, classes: Sequence[Mapping[str, Any]]) -> None:
        table = parse_class_table(list(classes), where=f"task {name!r} classes")
        super().__init__(name, len(table))
        self.classes = table
        self.class_names = [c["name"] for c in table]
        palette = np.zeros((256, 3), dtype=np.uint8)  # 255 (ignore) and beyond: black
        palette[: len(table)] = np.array([c["color"] for c in table], dtype=np.uint8)
        self._palette = palette

    def spec(self) -> dict[str, Any]:
        return {"kind": self.kind, "classes": self.classes}

    def read_target(self, path: Path) -> np.ndarray:
        try:
            return self._checked(read_semseg(path))
        except DataFormatError as e:
            if str(e).startswith(str(path)):
                raise
            raise DataFormatError(f"{path}: {e}") from None

    def read_prediction(self, image: Image.Image, target: np.ndarray) -> np.ndarray:
        return self._checked(np.asarray(image, dtype=np.uint8))

    def _checked(self, labels: np.ndarray) -> np.ndarray:
        """uint8 labels [H,W] as int64, or DataFormatError for values outside the table."""
        bad = (labels >= self.channels) & (labels != IGNORE_INDEX)
        if bad.any():
            values = sorted({int(v) for v in np.unique(labels[bad])})[:5]
            raise DataFormatError(
                f"label values {values} outside the {self.channels}-class table "
                f"(0..{self.channels - 1}) and {IGNORE_INDEX}"
            )
        return labels.astype(np.int64)

    def encode_png(self, prediction: np.ndarray) -> Image.Image:
        return Image.fromarray(np.asarray(prediction).astype(np.uint8), mode="L")

    def statistics(self) -> ClassFrequency:
        # the first segmentation task of every layout is "semseg" (data.format), whose keys
        # predate task kinds; another one (human parts) gets its own
        return ClassFrequency(self.channels, "" if self.name == "semseg" else f"{self.name}_")

    @property
    def likelihood(self) -> Likelihood:
        return SOFTMAX

    def loss(self, output: Tensor, target: Tensor) -> Tensor:
        return cross_entropy_loss(output, target)

    def decode(self, output: Tensor) -> Tensor:
        return output.argmax(dim=1)

    def make_metric(self) -> SemsegMetrics:
        return SemsegMetrics(self.channels, names=self.class_names, prefix=self.name)

    def make_grader_metric(self) -> AbstainingSemsegMetrics:
        return AbstainingSemsegMetrics(self.channels, names=self.class_names, prefix=self.name)

    def to_merge_space(self, output: Tensor) -> Tensor:
        return torch.softmax(output.float(), dim=1)

    def from_merge_space(self, mean: Tensor) -> Tensor:
        return torch.log(mean.clamp_min(_MIN_PROB))

    def single_view(self, output: Tensor) -> Tensor:
        return torch.log_softmax(output.float(), dim=1)

    def colorize(self, values: np.ndarray) -> np.ndarray:
        return self._palette[np.asarray(values).astype(np.uint8)]

    def export_outputs(self, output: Tensor) -> dict[str, Tensor]:
        return {f"{self.name}_logits": output, self.name: output.argmax(dim=1)}

    def compare_export(
        self, reference: Mapping[str, np.ndarray], candidate: Mapping[str, np.ndarray]
    ) -> tuple[bool, str]:
        key = f"{self.name}_logits"
        logits = reference[key].astype(np.float64)
        logit_abs = float(np.max(np.abs(logits - candidate[key])))
        differ = reference[self.name] != candidate[self.name]
        # A pixel whose two best classes are closer than twice the logit tolerance may
        # legitimately flip under float reordering; a wider margin may not.
        top2 = np.sort(logits, axis=1)[:, -2:]
        confident = (top2[:, 1] - top2[:, 0]) > 2 * EXPORT_LOGIT_ATOL
        mismatches = int(np.sum(differ & confident))
        ok = logit_abs <= EXPORT_LOGIT_ATOL and mismatches == 0
        text = (
            f"{self.name} logits max |diff| {logit_abs:.2e} (tol {EXPORT_LOGIT_ATOL:g}), "
            f"labels differ on {100 * float(differ.mean()):.3f}% of pixels "
            f"({mismatches} above the tie margin)"
        )
        return ok, text

    def describe_prediction(self, prediction: np.ndarray) -> str:
        counts = np.bincount(np.asarray(prediction).ravel(), minlength=self.channels)
        top = int(counts.argmax())
        share = 100.0 * counts[top] / max(1, counts.sum())
        return f"{self.name}: mostly {self.class_names[top]} ({share:.0f}%)"

    def example_target(
        self, batch: int, height: int, width: int, generator: torch.Generator
    ) -> Tensor:
        """Class ids drawn uniformly from this task's class table, int64 [B,H,W]."""
        return torch.randint(0, self.channels, (batch, height, width), generator=generator)
