"""Semantic segmentation: N classes from the dataset's class table, 255 = not labelled."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from scenemtl.data.format import IGNORE_INDEX, read_semseg
from scenemtl.errors import DataFormatError
from scenemtl.metrics import SemsegMetrics
from scenemtl.tasks.base import Task
from scenemtl.tasks.likelihood import SOFTMAX, Likelihood

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

    @property
    def likelihood(self) -> Likelihood:
        return SOFTMAX

    def loss(self, output: Tensor, target: Tensor) -> Tensor:
        return cross_entropy_loss(output, target)

    def decode(self, output: Tensor) -> Tensor:
        return output.argmax(dim=1)

    def make_metric(self) -> SemsegMetrics:
        return SemsegMetrics(self.channels, names=self.class_names, prefix=self.name)

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
