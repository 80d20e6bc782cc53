"""Metric depth: one channel regressed in a normalized space, decoded to meters."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from scenemtl.data.format import (
    DEPTH_ENCODINGS,
    DISPARITY8,
    DISPARITY8_MAX_M,
    DISPARITY8_MIN_M,
    INVALID_DEPTH,
    decode_depth,
    encode_depth,
    read_depth,
)
from scenemtl.errors import DataFormatError, UserError
from scenemtl.metrics import DepthMetrics
from scenemtl.tasks.base import Task
from scenemtl.tasks.depth_space import DEPTH_SPACES, DepthSpace
from scenemtl.tasks.likelihood import GAUSSIAN, LAPLACE, RADIAL_LAPLACE, Likelihood

DEPTH_LOSSES: tuple[str, ...] = ("l1", "l2", "silog")
DEFAULT_SILOG_LAMBDA = 0.85
# SILog (square-root form) is a norm of an image's log errors, degree 1 like L1.
_LIKELIHOODS: dict[str, Likelihood] = {"l1": LAPLACE, "l2": GAUSSIAN, "silog": RADIAL_LAPLACE}
EXPORT_DEPTH_RTOL = 1e-3
"""Largest relative difference of exported depth (meters) from torch eager."""

# Placeholder statistics until the dataset's are adopted or restored from a checkpoint.
_UNSET_STATS = {k: {"mean": 0.0, "std": 1.0} for k in ("depth_m", "depth_log", "depth_inv")}


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


class DepthTask(Task):
    """Metric depth in meters, 0 = invalid.

    Output: [B,1,H,W] in the normalized space ``space`` (statistics from dataset.json,
    kept as buffers so a checkpoint carries them). Decoded: float32 meters [B,H,W].
    Files: the dataset's depth PNG encoding. Metric: SI-logRMSE x 100 (lower is better)
    plus the usual error and threshold metrics. TTA merges views in log-meters (a
    geometric mean of the decoded depths).

    Args:
        name: task key ("depth").
        encoding: PNG encoding of the dataset (``disparity8`` or ``meters16``).
        range_m: the dataset's depth range, for pictures.
        space: ``meters``, ``log`` or ``inverse`` (each normalized with dataset stats).
        loss: ``l1``, ``l2`` or ``silog``.
        silog_lambda: variance weight of the SILog loss, in [0, 1].
    """

    kind = "depth"
    headline_label = "SI-logRMSE (x100)"
    headline_unit = ""  # a log-ratio spread: no unit (the same in meters or disparity)
    prediction_modes = ("L", "I;16", "I;16B", "I;16L", "I")
    higher_is_better = False
    fill_value = INVALID_DEPTH
    target_dtype = torch.float32

    def __init__(
        self,
        name: str,
        encoding: str = DISPARITY8,
        range_m: tuple[float, float] | list[float] = (DISPARITY8_MIN_M, DISPARITY8_MAX_M),
        space: str = "meters",
        loss: str = "l1",
        silog_lambda: float = DEFAULT_SILOG_LAMBDA,
    ) -> None:
        super().__init__(name, 1)
        if encoding not in DEPTH_ENCODINGS:
            raise UserError(f"task {name!r}: unknown depth encoding {encoding!r}")
        if space not in DEPTH_SPACES:
            raise UserError(
                f"task {name!r}: depth space {space!r} unknown; choose one of "
                f"{', '.join(DEPTH_SPACES)}"
            )
        if loss not in DEPTH_LOSSES:
            raise UserError(
                f"task {name!r}: depth loss {loss!r} unknown; choose one of "
                f"{', '.join(DEPTH_LOSSES)}"
            )
        if not 0.0 <= float(silog_lambda) <= 1.0:
            raise UserError(f"task {name!r}: silog_lambda must be in [0, 1], got {silog_lambda}")
        self.encoding = encoding
        self.range_m = (float(range_m[0]), float(range_m[1]))
        self.loss_kind = loss
        self.silog_lambda = float(silog_lambda)
        self.space = DepthSpace(space, _UNSET_STATS)

    def spec(self) -> dict[str, Any]:
        return {"kind": self.kind, "encoding": self.encoding, "range_m": list(self.range_m)}

    def extra_repr(self) -> str:
        return f"name={self.name!r}, loss={self.loss_kind!r}"

    def read_target(self, path: Path) -> np.ndarray:
        return read_depth(path)

    def read_prediction(self, image: Image.Image, target: np.ndarray) -> np.ndarray:
        depth = decode_depth(image)
        holes = int(((depth <= 0) & (target > 0)).sum())
        if holes:
            raise DataFormatError(
                f"depth 0 (invalid) at {holes} pixel(s) where the ground truth has depth"
            )
        return depth

    def encode_png(self, prediction: np.ndarray) -> Image.Image:
        return encode_depth(np.asarray(prediction, dtype=np.float32), self.encoding)

    def adopt_stats(self, stats: Mapping[str, Any]) -> None:
        self.space.set_stats(stats)

    @property
    def likelihood(self) -> Likelihood:
        return _LIKELIHOODS[self.loss_kind]

    def loss(self, output: Tensor, target: Tensor) -> Tensor:
        return depth_loss(output, target, self.space, self.loss_kind, self.silog_lambda)

    def decode(self, output: Tensor) -> Tensor:
        return self.space.decode(output[:, 0] if output.dim() == 4 else output)

    def make_metric(self) -> DepthMetrics:
        return DepthMetrics(prefix=self.name)

    def to_merge_space(self, output: Tensor) -> Tensor:
        return self.space.log_meters(output)

    def from_merge_space(self, mean: Tensor) -> Tensor:
        return self.space.encode(torch.exp(mean))

    def colorize(self, values: np.ndarray) -> np.ndarray:
        from scenemtl.visualize import colorize_depth

        return colorize_depth(values, *self.range_m)

    def histogram_values(self, prediction: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        valid = target > 0
        return prediction[valid].float(), target[valid].float()

    def compare_export(
        self, reference: Mapping[str, np.ndarray], candidate: Mapping[str, np.ndarray]
    ) -> tuple[bool, str]:
        ref = reference[self.name].astype(np.float64)
        diff = np.abs(ref - candidate[self.name])
        rel = float(np.max(diff / np.maximum(np.abs(ref), 1e-6)))
        text = (
            f"{self.name} max |diff| {float(diff.max()):.2e} m, max rel {rel:.2e} "
            f"(tol {EXPORT_DEPTH_RTOL:g})"
        )
        return rel <= EXPORT_DEPTH_RTOL, text

    def describe_prediction(self, prediction: np.ndarray) -> str:
        return f"median {self.name} {float(np.median(prediction)):.1f} m"
