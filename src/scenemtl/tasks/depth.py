"""Metric depth: one channel regressed in a normalized space, decoded to meters."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torchmetrics import Metric

from scenemtl.codecs.depth import (
    DEPTH_ENCODINGS,
    DISPARITY8,
    DISPARITY8_MAX_M,
    DISPARITY8_MIN_M,
    INVALID_DEPTH,
    decode_depth,
    depth_encoding_of,
    encode_depth,
    read_depth,
)
from scenemtl.codecs.image import open_image, with_path
from scenemtl.errors import DataFormatError, UserError
from scenemtl.tasks.base import Task
from scenemtl.tasks.depth_space import DEPTH_SPACES, DepthSpace
from scenemtl.tasks.keys import ColorBar, color_bar
from scenemtl.tasks.likelihood import GAUSSIAN, LAPLACE, RADIAL_LAPLACE, Likelihood
from scenemtl.tasks.statistics import Histogram, TargetStatistics

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


DELTA_BASE = 1.25
"""Threshold base of the ``delta<k>`` metrics: ratio below ``1.25^k``."""


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


def colorize_depth(
    depth_m: np.ndarray, min_m: float = 4.0, max_m: float = 300.0, cmap: str = "magma_r"
) -> np.ndarray:
    """Depth in meters [H,W] -> colours [H,W,3] on a log scale; invalid (<= 0) is black.

    A log scale because street depth spans two orders of magnitude: linear colours would
    spend the whole colormap on the far 200 m and show the near scene as one colour.
    """
    from matplotlib import colormaps

    depth = np.asarray(depth_m, dtype=np.float64)
    valid = np.isfinite(depth) & (depth > 0)
    t = (np.log(np.clip(depth, min_m, max_m)) - np.log(min_m)) / (np.log(max_m) - np.log(min_m))
    rgb = (colormaps[cmap](np.where(valid, t, 0.0))[..., :3] * 255).astype(np.uint8)
    rgb[~valid] = 0
    return rgb


STATS_HIST_BINS = 128
"""Bins of the depth histograms ``scenemtl data stats`` plots."""


def _mean_std(n: float, s: float, s2: float) -> dict[str, float]:
    mean = s / n
    return {"mean": float(mean), "std": float(np.sqrt(max(s2 / n - mean**2, 0.0)))}


class DepthStatistics(TargetStatistics):
    """Mean and std of valid depth in meters, log-meters and inverse meters (the
    normalizations of :mod:`scenemtl.tasks.depth_space`), the share of valid pixels, and
    histograms in meters and log-meters over the dataset's range.

    Args:
        range_m: the dataset's depth range (histogram bins span it).
    """

    def __init__(self, range_m: tuple[float, float]) -> None:
        self.lo, self.hi = range_m
        self.pixels = 0
        # valid count, sum/sum of squares of meters, of log-meters, of inverse meters
        self.sums = np.zeros(7)
        self.hist_m = np.zeros(STATS_HIST_BINS)
        self.hist_log = np.zeros(STATS_HIST_BINS)

    def add(self, target: np.ndarray) -> None:
        depth = np.asarray(target, dtype=np.float64)
        valid = depth[depth > 0]
        self.pixels += depth.size
        log_d, inv_d = np.log(valid), 1.0 / valid
        self.sums += [valid.size, valid.sum(), (valid**2).sum(), log_d.sum(),
                      (log_d**2).sum(), inv_d.sum(), (inv_d**2).sum()]  # fmt: skip
        self.hist_m += np.histogram(valid, bins=STATS_HIST_BINS, range=(0, self.hi))[0]
        log_range = (np.log(self.lo), np.log(self.hi))
        self.hist_log += np.histogram(log_d, bins=STATS_HIST_BINS, range=log_range)[0]

    def merge(self, other: TargetStatistics) -> None:
        assert isinstance(other, DepthStatistics)
        self.pixels += other.pixels
        self.sums += other.sums
        self.hist_m += other.hist_m
        self.hist_log += other.hist_log

    def result(self, where: str) -> dict[str, Any]:
        count, s, s2, ls, ls2, is_, is2 = self.sums
        if count == 0:
            raise DataFormatError(f"{where} has no valid depth pixel")
        return {
            "valid_depth_fraction": float(count / self.pixels),
            "depth_m": _mean_std(count, s, s2),
            "depth_log": _mean_std(count, ls, ls2),
            "depth_inv": _mean_std(count, is_, is2),
        }

    def histograms(self) -> dict[str, Histogram]:
        log_edges = np.linspace(np.log(self.lo), np.log(self.hi), STATS_HIST_BINS + 1)
        return {
            "meters": Histogram(
                self.hist_m, np.linspace(0, self.hi, STATS_HIST_BINS + 1), "depth [m]"
            ),
            "log": Histogram(self.hist_log, log_edges, "log depth [log m]"),
        }


SCALE_WIDTH = 512
"""Columns of the depth colour bar (:meth:`DepthTask.picture_key`)."""


def format_meters(depth_m: float) -> str:
    """``4`` -> ``4 m``, ``0.5`` -> ``0.5 m``, ``1000`` -> ``1000 m``."""
    return f"{depth_m:.3g} m" if depth_m < 1000 else f"{depth_m:.0f} m"


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
    flat_options: ClassVar[Mapping[str, str]] = {
        "depth_space": "space",
        "depth_loss": "loss",
        "silog_lambda": "silog_lambda",
    }
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

    def check_target(self, path: Path) -> tuple[tuple[int, int] | None, list[str]]:
        """Besides what :meth:`read_target` refuses: a PNG in another encoding than the
        dataset declares, and depth outside the declared range (beyond quantization)."""
        try:
            image = open_image(path)
        except DataFormatError as e:
            return None, [str(e)]
        problems = []
        if depth_encoding_of(image) != self.encoding:
            problems.append(
                f"{path}: mode {image.mode} is {depth_encoding_of(image)}, "
                f"dataset.json declares {self.encoding}"
            )
        try:
            depth = decode_depth(image)
        except DataFormatError as e:
            return (image.height, image.width), [*problems, str(with_path(path, e))]
        valid = depth[depth > 0]
        lo, hi = self._decoded_range()
        if valid.size and (valid.min() < lo or valid.max() > hi):
            problems.append(
                f"{path}: depth {valid.min():.3g}..{valid.max():.3g} m outside "
                f"declared range {self.range_m[0]:g}..{self.range_m[1]:g} m"
            )
        return (image.height, image.width), problems

    def _decoded_range(self) -> tuple[float, float]:
        """The declared range as decoded files can hold it: quantization can move a bound
        by one code."""
        lo, hi = self.range_m
        probe = decode_depth(encode_depth(np.array([[lo, hi]]), self.encoding))[0]
        return min(lo, float(probe[0])) * (1 - 1e-6), max(hi, float(probe[1])) * (1 + 1e-6)

    def statistics(self) -> DepthStatistics:
        return DepthStatistics(self.range_m)

    def describe_statistics(self, stats: Mapping[str, Any]) -> list[str]:
        lines = [f"  {self.name}: {100 * stats['valid_depth_fraction']:.1f}% valid pixels"]
        for key, unit in (("depth_m", "m"), ("depth_log", "log m"), ("depth_inv", "1/m")):
            s = stats[key]
            lines.append(f"  {key:10s} mean {s['mean']:.4g} std {s['std']:.4g} {unit}")
        return lines

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

    def picture_key(self, width: int = SCALE_WIDTH) -> ColorBar:
        """The colour bar over the task's range (the range :meth:`colorize` spans), near
        (left) to far on a log scale, ``width`` columns."""
        lo, hi = self.range_m
        title = f"{self.name} in meters (log scale)"
        return color_bar(title, lo, hi, self.colorize, format_meters, width, scale="log")

    def card_tags(self) -> tuple[str, ...]:
        return ("depth-estimation",)

    def card_output(self) -> str:
        return f"meters float32 [H,W] (trained on `{self.encoding}` depth PNGs)"

    def example_target(
        self, batch: int, height: int, width: int, generator: torch.Generator
    ) -> Tensor:
        """Depths in meters drawn uniformly from (min, max] of the task's range, float32
        [B,H,W] (positive: 0 would mean invalid)."""
        lo, hi = self.range_m
        u = torch.rand(batch, height, width, generator=generator)
        return hi - (hi - lo) * u
