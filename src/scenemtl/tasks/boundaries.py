"""Boundary (edge) detection: one logit, the papers' class-balanced BCE, odsF via SEISM's
matching (:mod:`scenemtl.evaluation.boundary`)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from scenemtl.codecs.binary import BINARY_IGNORE
from scenemtl.errors import UserError
from scenemtl.evaluation.boundary import MAX_DIST, BoundaryFMeasure
from scenemtl.tasks.binary import BinaryMapTask

EDGE_POS_WEIGHT = 0.95
"""``edge_w`` of Multi-Task-Learning-PyTorch's configs, kept by ATRC and InvPT."""
DEFAULT_MAX_DIST = MAX_DIST["pascal_context"]
"""SEISM's default maxDist (fraction of the image diagonal) for a dataset naming none."""


class BoundaryMetrics(BoundaryFMeasure):
    """:class:`~scenemtl.evaluation.boundary.BoundaryFMeasure` on a task's targets.

    ``update(prob, target)``: probabilities float [B,H,W] and targets integer [B,H,W] in
    {0, 1, 255}. SEISM has no "not labelled"; here such a pixel is neither a ground-truth
    edge nor a predicted one (its probability counts as 0), so a prediction there is
    neither rewarded nor punished, and an image is evaluated on the bounding box of its
    labelled pixels (the diagonal that scales ``max_dist`` is that box's). ``compute()``
    -> ``{<name>: odsF, <name>_oisF, <name>_AP, <name>_odsP, <name>_odsR}`` in percent
    and ``<name>_odsThreshold``.
    """

    def __init__(self, max_dist: float, prefix: str, workers: int = 0) -> None:
        super().__init__(max_dist, workers=workers)
        self.prefix = prefix

    def update(self, prob: Tensor, target: Tensor) -> None:
        if prob.shape != target.shape:
            raise UserError(
                f"{self.prefix}: prediction {list(prob.shape)} vs target {list(target.shape)}"
            )
        if prob.ndim != 3:
            raise UserError(f"{self.prefix}: metric needs [B, H, W], got {list(prob.shape)}")
        labelled = target != BINARY_IGNORE
        prob = torch.where(labelled, prob.double(), torch.zeros((), dtype=torch.float64))
        edges = (target == 1) & labelled
        probs, targets = [], []
        arrays = (prob.cpu().numpy(), edges.cpu().numpy(), labelled.cpu().numpy())
        for p, e, m in zip(*arrays, strict=True):
            # maxDist is a fraction of the image's diagonal: an image padded with unlabelled
            # pixels (PASCAL-Context's 512x512 canvas) is evaluated at its labelled extent,
            # the size of the original image the papers evaluate
            rows, cols = np.flatnonzero(m.any(axis=1)), np.flatnonzero(m.any(axis=0))
            if rows.size:
                p = p[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
                e = e[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
            probs.append(p)
            targets.append(e)
        self.update_images(probs, targets)

    def compute(self) -> dict[str, Tensor]:
        scores = super().compute()
        out = {self.prefix: 100.0 * scores["odsF"]}
        for key in ("oisF", "AP", "odsP", "odsR"):
            out[f"{self.prefix}_{key}"] = 100.0 * scores[key]
        out[f"{self.prefix}_odsThreshold"] = scores["odsThreshold"]
        return out


class BoundariesTask(BinaryMapTask):
    """Edges of a scene: target 1 on a (thin) boundary pixel, 0 elsewhere, 255 unlabelled.

    Metric: odsF (percent, higher is better) with SEISM's thinning and one-to-one
    matching within ``max_dist`` of the image diagonal, at 99 thresholds 0.01 .. 0.99,
    on the probability as an 8-bit PNG would hold it (the papers' protocol); also oisF
    and AP. The grader scores a submission's PNGs with the same metric.

    Augmentation resamples the edge map by nearest neighbour, as the papers' pipelines
    do (``cv2.INTER_NEAREST``): scaling down can break a one-pixel edge, scaling up
    thickens it; the thinning in the metric makes either count once.

    Args:
        name: task key ("boundaries").
        max_dist: a dataset fact (its spec): SEISM's maxDist, a fraction of the image
            diagonal (:data:`~scenemtl.evaluation.boundary.MAX_DIST`: PASCAL-Context
            0.0075, NYUD-v2 0.011).
        pos_weight: option, ``w`` of the balanced BCE (:mod:`scenemtl.tasks.binary`);
            None = the batch's HED weight.
        metric_workers: option, processes the metric spreads a batch's images over
            (0 = none; worth it for full-size benchmark splits, not small images).
    """

    kind = "boundaries"
    headline_label = "odsF (%)"
    headline_unit = "%"
    word = "edge"

    def __init__(
        self,
        name: str,
        max_dist: float = DEFAULT_MAX_DIST,
        pos_weight: float | None = EDGE_POS_WEIGHT,
        metric_workers: int = 0,
    ) -> None:
        super().__init__(name, pos_weight)
        if isinstance(max_dist, bool) or not isinstance(max_dist, (int, float)):
            raise ValueError(f"max_dist must be a number, got {max_dist!r}")
        if not 0.0 < float(max_dist) < 1.0:
            raise ValueError(f"max_dist is a fraction of the image diagonal, got {max_dist}")
        if isinstance(metric_workers, bool) or not isinstance(metric_workers, int):
            raise ValueError(f"metric_workers must be an integer, got {metric_workers!r}")
        if metric_workers < 0:
            raise ValueError(f"metric_workers must be >= 0, got {metric_workers}")
        self.max_dist = float(max_dist)
        self.metric_workers = metric_workers

    def spec(self) -> dict[str, Any]:
        return {"kind": self.kind, "max_dist": self.max_dist}

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, max_dist={self.max_dist}"

    def make_metric(self) -> BoundaryMetrics:
        return BoundaryMetrics(self.max_dist, self.name, workers=self.metric_workers)

    def describe_prediction(self, prediction: np.ndarray) -> str:
        share = 100.0 * float(np.mean(np.asarray(prediction) >= 0.5))
        return f"{self.name}: {share:.1f}% edge pixels (p >= 0.5)"
