"""Surface normals: three channels regressed per pixel, decoded to unit vectors.

Convention (docs/normals.md): unit normals in the camera frame of the image, OpenCV axes
(x right, y down, z forward), facing the camera; invalid pixels are the zero vector.
In memory a target is float32 [3,H,W]; on disk an 8-bit RGB PNG, ``c = round((n+1)/2 *
255)`` per component, RGB (0,0,0) = invalid.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor
from torchmetrics import Metric

from scenemtl.codecs.normals import (
    NORMALS_CODEC_MAX_ANGLE_DEG,
    NORMALS_ENCODINGS,
    NORMALS_RGB8,
    decode_normals,
    encode_normals,
    read_normals,
)
from scenemtl.errors import DataFormatError, UserError
from scenemtl.tasks.base import Task
from scenemtl.tasks.counting import count_values
from scenemtl.tasks.likelihood import LAPLACE_ON_SPHERE, VON_MISES_FISHER, Likelihood

NORMALS_LOSSES: tuple[str, ...] = ("l1", "cosine")

THRESHOLDS_DEG: tuple[float, ...] = (11.25, 22.5, 30.0)
"""Angular error thresholds of the ``within`` metrics (Fouhey et al. 2013, NYUv2)."""
HIST_BIN_DEG = 0.01
"""Bin width of the angular error histogram the median is read from: the median is the
centre of its bin, within HIST_BIN_DEG / 2 of the exact median."""
_HIST_BINS = round(180.0 / HIST_BIN_DEG)

EXPORT_NORMALS_ATOL_DEG = 0.1
"""Largest angle between exported and torch-eager unit normals, degrees."""

_NORM_EPS = 1e-6

# The PNG codec lives with the other codecs (scenemtl.codecs.normals: numpy and Pillow
# only, so the generator writes normals without torch); re-exported for the task's users.
__all__ = [
    "NORMALS_CODEC_MAX_ANGLE_DEG",
    "NormalsMetrics",
    "NormalsTask",
    "decode_normals",
    "encode_normals",
    "normals_loss",
    "read_normals",
]


def colorize_normals(normals: np.ndarray) -> np.ndarray:
    """Normals [3,H,W] -> uint8 RGB [H,W,3]: the PNG code as a picture, invalid black.

    (R, G, B) = (n + 1) / 2 * 255 of (x, y, z): facing the camera (0,0,-1) is olive
    (128,128,0), ground seen from a level camera (0,-1,0) purple (128,0,128), a wall
    facing left (-1,0,0) teal (0,128,128), one facing right (1,0,0) pink (255,128,128).
    """
    return np.asarray(encode_normals(normals))


# --------------------------------------------------------------------------------------
# loss and metrics


def valid_mask(target: Tensor) -> Tensor:
    """[B,H,W] bool: pixels of a target [B,3,H,W] that hold a normal (not all zero)."""
    return (target != 0).any(dim=1)


def normals_loss(output: Tensor, target: Tensor, kind: str = "l1") -> Tensor:
    """Loss of a normals output against unit-normal targets, over valid pixels.

    The output is normalized to unit length first (as :meth:`NormalsTask.decode` does),
    so the network is only asked for a direction. ``l1``: sum of the three absolute
    component differences per pixel; ``cosine``: ``1 - cos`` of the angle between
    prediction and target. Both are averaged over the valid pixels of the batch.

    Args:
        output: [B,3,H,W] raw network output (any precision; computed in float32).
        target: [B,3,H,W] unit normals, all-zero = invalid.
        kind: one of :data:`NORMALS_LOSSES`.

    Returns:
        scalar float32; 0.0 (with a graph) when nothing is valid.
    """
    if output.shape != target.shape or output.dim() != 4 or output.shape[1] != 3:
        raise ValueError(f"normals output {tuple(output.shape)} vs target {tuple(target.shape)}")
    pred = F.normalize(output.float(), dim=1, eps=_NORM_EPS)
    gt = target.float()
    valid = valid_mask(gt)
    if kind == "l1":
        per_pixel = (pred - gt).abs().sum(dim=1)
    elif kind == "cosine":
        per_pixel = 1.0 - (pred * gt).sum(dim=1)
    else:
        raise UserError(f"unknown normals loss {kind!r}; choose one of {', '.join(NORMALS_LOSSES)}")
    total = torch.where(valid, per_pixel, torch.zeros_like(per_pixel)).sum()
    return total / valid.sum().clamp(min=1)


def angular_error_deg(pred: Tensor, target: Tensor) -> Tensor:
    """Angle in degrees [B,H,W] (float64) between normals [B,3,H,W] (pred normalized).

    atan2(|a x b|, a . b) rather than acos(a . b): acos loses all precision near 0
    degrees (its slope is infinite there), atan2 keeps it at every angle.
    """
    p = F.normalize(pred.to(torch.float64), dim=1, eps=_NORM_EPS)
    g = target.to(torch.float64)
    cross = torch.linalg.vector_norm(torch.cross(p, g, dim=1), dim=1)
    dot = (p * g).sum(dim=1)
    return torch.rad2deg(torch.atan2(cross, dot))


class NormalsMetrics(Metric):
    """Angular error of predicted normals over the valid pixels of a split.

    ``compute()`` returns float64 scalars, pixel-averaged over the split (NaN if nothing
    valid was seen):

    * ``<prefix>``: mean angular error, degrees (the headline; lower is better);
    * ``<prefix>_median``: median angular error, degrees, within 0.005 deg (the centre
      of its 0.01-degree histogram bin, so the state has a fixed size and sums over DDP);
    * ``<prefix>_within_11_25``, ``_within_22_5``, ``_within_30``: % of pixels with an
      error below 11.25, 22.5, 30 degrees.
    """

    is_differentiable = False
    higher_is_better = False
    full_state_update = False

    angle_sum: Tensor
    num_pixels: Tensor
    within: Tensor
    hist: Tensor

    def __init__(self, prefix: str = "normals") -> None:
        super().__init__()
        self.prefix = prefix
        f64 = torch.float64
        self.add_state("angle_sum", default=torch.zeros((), dtype=f64), dist_reduce_fx="sum")
        self.add_state("num_pixels", default=torch.zeros((), dtype=f64), dist_reduce_fx="sum")
        self.add_state(
            "within", default=torch.zeros(len(THRESHOLDS_DEG), dtype=f64), dist_reduce_fx="sum"
        )
        self.add_state("hist", default=torch.zeros(_HIST_BINS, dtype=f64), dist_reduce_fx="sum")

    def update(self, pred: Tensor, target: Tensor) -> None:
        """Accumulate a batch.

        Args:
            pred: predicted normals [B,3,H,W] (normalized here; decoded outputs are).
            target: unit normals [B,3,H,W] as read from disk, all-zero = invalid.

        Raises:
            ValueError: shapes differ or are not [B,3,H,W].
        """
        if pred.shape != target.shape or pred.dim() != 4 or pred.shape[1] != 3:
            raise ValueError(
                f"normals prediction {tuple(pred.shape)} vs target {tuple(target.shape)}"
            )
        valid = valid_mask(target)
        if not bool(valid.any()):
            return
        angle = angular_error_deg(pred, target)[valid]
        self.angle_sum += angle.sum()
        self.num_pixels += angle.numel()
        for k, t in enumerate(THRESHOLDS_DEG):
            self.within[k] += (angle < t).sum()
        bins = (angle / HIST_BIN_DEG).floor().clamp(0, _HIST_BINS - 1).to(torch.int64)
        self.hist += count_values(bins, _HIST_BINS).to(torch.float64)

    def compute(self) -> dict[str, Tensor]:
        n = self.num_pixels
        nan = torch.tensor(float("nan"), dtype=torch.float64, device=n.device)
        if float(n) == 0:
            out = {self.prefix: nan, f"{self.prefix}_median": nan}
            out.update({f"{self.prefix}_{_within_name(t)}": nan for t in THRESHOLDS_DEG})
            return out
        cumulative = torch.cumsum(self.hist, dim=0)
        k = int(torch.searchsorted(cumulative, n / 2).clamp(max=_HIST_BINS - 1))
        median = torch.tensor((k + 0.5) * HIST_BIN_DEG, dtype=torch.float64, device=n.device)
        out = {self.prefix: self.angle_sum / n, f"{self.prefix}_median": median}
        for k, t in enumerate(THRESHOLDS_DEG):
            out[f"{self.prefix}_{_within_name(t)}"] = 100.0 * self.within[k] / n
        return out


def _within_name(threshold: float) -> str:
    """``within_11_25`` for 11.25: metric names without dots (loggers treat them)."""
    return "within_" + f"{threshold:g}".replace(".", "_")


# --------------------------------------------------------------------------------------
# the task


class NormalsTask(Task):
    """Unit surface normals in the camera frame (x right, y down, z forward).

    Output: [B,3,H,W], any length; decoded: unit vectors [B,3,H,W] (float32). Files:
    8-bit RGB PNG (docs/normals.md). Metric: mean angular error in degrees (lower is
    better), plus median and % within 11.25/22.5/30 degrees. TTA: the mean of the views'
    unit vectors, renormalized (a mirrored view's x component negated first).
    Augmentation: a horizontal flip negates x, an in-plane rotation rotates (x, y) with
    the image, zoom and crop leave normals unchanged (they only change the intrinsics);
    the perspective wiggle is refused (not a camera rotation about the optical axis).

    Args:
        name: task key ("normals").
        encoding: PNG encoding of the dataset (only ``rgb8``).
        loss: ``l1`` or ``cosine`` (see :func:`normals_loss`).
    """

    kind = "normals"
    headline_label = "mean angular error (deg)"
    headline_unit = "deg"
    prediction_modes = ("RGB",)
    higher_is_better = False
    fill_value = 0.0
    target_dtype = torch.float32
    target_channels = 3
    refused_augmentations: ClassVar[Mapping[str, str]] = {
        "wiggle": "a perspective warp is not a rotation of the camera about its optical "
        "axis, so camera-frame normals cannot follow it"
    }

    def __init__(self, name: str, encoding: str = NORMALS_RGB8, loss: str = "l1") -> None:
        super().__init__(name, 3)
        if encoding not in NORMALS_ENCODINGS:
            raise UserError(
                f"task {name!r}: unknown normals encoding {encoding!r}; known: "
                f"{', '.join(NORMALS_ENCODINGS)}"
            )
        if loss not in NORMALS_LOSSES:
            raise UserError(
                f"task {name!r}: normals loss {loss!r} unknown; choose one of "
                f"{', '.join(NORMALS_LOSSES)}"
            )
        self.encoding = encoding
        self.loss_kind = loss

    def spec(self) -> dict[str, Any]:
        return {"kind": self.kind, "encoding": self.encoding}

    def extra_repr(self) -> str:
        return f"name={self.name!r}, loss={self.loss_kind!r}"

    # -- data --------------------------------------------------------------------------

    def read_target(self, path: Path) -> np.ndarray:
        return read_normals(path)

    def encode_png(self, prediction: np.ndarray) -> Image.Image:
        return encode_normals(prediction)

    def read_prediction(self, image: Image.Image, target: np.ndarray) -> np.ndarray:
        normals = decode_normals(image)
        holes = int(((normals == 0).all(axis=0) & (target != 0).any(axis=0)).sum())
        if holes:
            raise DataFormatError(
                f"no normal (RGB 0,0,0) at {holes} pixel(s) where the ground truth has one"
            )
        return normals

    # -- training and evaluation -------------------------------------------------------

    @property
    def likelihood(self) -> Likelihood:
        # 1 - cos is quadratic in the angle (von Mises-Fisher), L1 is linear in the
        # component errors; both on the sphere (two degrees of freedom per pixel)
        return VON_MISES_FISHER if self.loss_kind == "cosine" else LAPLACE_ON_SPHERE

    def loss(self, output: Tensor, target: Tensor) -> Tensor:
        return normals_loss(output, target, self.loss_kind)

    def decode(self, output: Tensor) -> Tensor:
        return F.normalize(output.float(), dim=1, eps=_NORM_EPS)

    def make_metric(self) -> NormalsMetrics:
        return NormalsMetrics(prefix=self.name)

    # -- geometry: augmentation and TTA ------------------------------------------------

    def warp_target(self, target: Tensor, linear: Tensor) -> Tensor:
        """Rotate/reflect the (x, y) components with the image (see :meth:`Task.warp_target`).

        The camera frame's x and y axes are the image's (square pixels), so a rotation
        or reflection of the picture is the same rotation or reflection of the camera
        about its optical axis, and acts on (x, y) of every normal as on pixel offsets.
        z is unchanged, and zero (invalid) vectors stay zero.
        """
        q = linear.to(device=target.device, dtype=target.dtype)  # [B,2,2]
        xy = torch.einsum("bij,bjhw->bihw", q, target[:, :2])
        return torch.cat([xy, target[:, 2:]], dim=1)

    def unmirror(self, output: Tensor) -> Tensor:
        # Mirroring the image mirrors the camera's x axis: pixels back and x negated.
        back = torch.flip(output, dims=[-1])
        return torch.cat([-back[:, :1], back[:, 1:]], dim=1)

    def to_merge_space(self, output: Tensor) -> Tensor:
        # Unit vectors first, so a view with a longer raw output does not weigh more.
        return self.decode(output)

    def from_merge_space(self, mean: Tensor) -> Tensor:
        return self.decode(mean)

    def single_view(self, output: Tensor) -> Tensor:
        return self.decode(output)

    # -- pictures and export -----------------------------------------------------------

    def colorize(self, values: np.ndarray) -> np.ndarray:
        return colorize_normals(values)

    def export_outputs(self, output: Tensor) -> dict[str, Tensor]:
        return {self.name: self.decode(output)}

    def compare_export(
        self, reference: Mapping[str, np.ndarray], candidate: Mapping[str, np.ndarray]
    ) -> tuple[bool, str]:
        ref = torch.from_numpy(np.asarray(reference[self.name], dtype=np.float64))
        cand = torch.from_numpy(np.asarray(candidate[self.name], dtype=np.float64))
        worst = float(angular_error_deg(cand, ref).max()) if ref.numel() else 0.0
        text = f"{self.name} max angle {worst:.2e} deg (tol {EXPORT_NORMALS_ATOL_DEG:g})"
        return worst <= EXPORT_NORMALS_ATOL_DEG, text

    def describe_prediction(self, prediction: np.ndarray) -> str:
        n = np.asarray(prediction)
        facing = float(np.mean(n[2] < -0.5)) if n.size else 0.0
        return f"{self.name}: {100 * facing:.0f}% facing the camera"

    def card_output(self) -> str:
        return "unit vectors float32 [3,H,W] (camera frame)"

    def example_target(
        self, batch: int, height: int, width: int, generator: torch.Generator
    ) -> Tensor:
        """Unit normals facing the camera (z < 0), float32 [B,3,H,W]: isotropic Gaussian
        directions folded onto the camera's half of the sphere."""
        v = torch.randn(batch, 3, height, width, generator=generator)
        v = torch.cat([v[:, :2], -v[:, 2:].abs()], dim=1)
        return F.normalize(v, dim=1, eps=_NORM_EPS)
