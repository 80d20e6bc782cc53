"""The space in which the network regresses depth, and the way back to meters.

A network does not predict meters directly: its depth channel lives in a normalized
space chosen by configuration. :class:`DepthSpace` maps ground-truth meters into that
space for the losses (:meth:`DepthSpace.encode`) and maps predictions back to meters
(:meth:`DepthSpace.decode`). Metrics only ever see decoded predictions and the depth as
read from disk: the ground truth never takes a round trip through this module, so an
error in an inverse transform cannot make the metrics look better than they are (the
pitfall of report 003, section 5.5).

Kinds (statistics come from ``dataset.json`` "stats", written by ``scenemtl data stats``):

* ``"meters"``:  ``(d - mean_m) / std_m``
* ``"log"``:     ``(ln d - mean_log) / std_log``
* ``"inverse"``: ``(1/d - mean_inv) / std_inv``
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from scenemtl.errors import UserError

DEPTH_SPACES: tuple[str, ...] = ("meters", "log", "inverse")
"""Names accepted by :class:`DepthSpace`."""

STATS_KEYS: dict[str, str] = {"meters": "depth_m", "log": "depth_log", "inverse": "depth_inv"}
"""Which entry of dataset.json "stats" each kind is normalized with."""

DEFAULT_MIN_M = 1e-3
DEFAULT_MAX_M = 1e4


def _clamp_straight_through(x: Tensor, lo: float, hi: float) -> Tensor:
    """Clamp the value of ``x`` but let the gradient through as if unclamped.

    A plain clamp has zero gradient outside the range, so a pixel predicted far out of
    range (e.g. negative meters) would never be pulled back by a loss on decoded depth.
    """
    # clamped + (x - x) rather than x + (clamped - x): the latter cancels catastrophically
    # in float32 for |x| >> range and can yield exactly 0 (log -> -inf).
    return x.detach().clamp(lo, hi) + (x - x.detach())


class DepthSpace(nn.Module):
    """Normalization of depth for regression, and decoding back to meters.

    The mean and std are registered as buffers, so a checkpoint carries the statistics
    its weights were trained with: loading it restores them even if the module was
    built from another dataset's ``dataset.json``.

    Args:
        kind: one of :data:`DEPTH_SPACES`.
        stats: the ``"stats"`` object of ``dataset.json`` (only the entry of ``kind``
            is read: ``{"mean": float, "std": float}``).
        min_m, max_m: decoded depth is clamped to this range, so it is always strictly
            positive and finite whatever the network outputs.

    Raises:
        UserError: unknown kind, missing or malformed statistics, bad clamp range.
    """

    mean: Tensor
    std: Tensor

    def __init__(
        self,
        kind: str,
        stats: Mapping[str, Any] | None,
        min_m: float = DEFAULT_MIN_M,
        max_m: float = DEFAULT_MAX_M,
    ) -> None:
        super().__init__()
        if kind not in DEPTH_SPACES:
            raise UserError(
                f"unknown depth space {kind!r}; choose one of {', '.join(DEPTH_SPACES)}"
            )
        if not (0 < min_m < max_m and math.isfinite(max_m)):
            raise UserError(f"depth clamp range [{min_m}, {max_m}] must be 0 < min < max < inf")
        self.kind = kind
        self.min_m = float(min_m)
        self.max_m = float(max_m)
        mean, std = self._parse_stats(stats)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32))

    def _parse_stats(self, stats: Mapping[str, Any] | None) -> tuple[float, float]:
        key = STATS_KEYS[self.kind]
        entry = (stats or {}).get(key)
        if not isinstance(entry, Mapping) or "mean" not in entry or "std" not in entry:
            raise UserError(
                f"dataset statistics {key!r} (needed by depth space {self.kind!r}) are "
                "missing: run `scenemtl data stats --root DATASET_ROOT` first"
            )
        try:
            mean, std = float(entry["mean"]), float(entry["std"])
        except (TypeError, ValueError):
            raise UserError(f"dataset statistics {key!r} hold non-numeric mean/std") from None
        if not (math.isfinite(mean) and math.isfinite(std) and std > 0):
            raise UserError(
                f"dataset statistics {key!r} are unusable (mean={mean}, std={std}); "
                "re-run `scenemtl data stats --root DATASET_ROOT`"
            )
        return mean, std

    def set_stats(self, stats: Mapping[str, Any] | None) -> None:
        """Replace the normalization in place (buffers keep their device and identity).

        Args:
            stats: the ``"stats"`` object of ``dataset.json``.

        Raises:
            UserError: the entry for this kind is missing or unusable.
        """
        mean, std = self._parse_stats(stats)
        self.mean.fill_(mean)
        self.std.fill_(std)

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}, mean={self.mean.item():.4g}, std={self.std.item():.4g}"

    def encode(self, depth_m: Tensor) -> Tensor:
        """Meters to the normalized space.

        Args:
            depth_m: float, any shape (typically [B,H,W]); values <= 0 are invalid.

        Returns:
            float32, same shape. Invalid pixels are mapped to 0.0 (never inf or NaN);
            callers must mask them with ``depth_m > 0``, not with the encoded value.
        """
        d = depth_m.float()
        valid = d > 0
        safe = torch.where(valid, d, torch.ones_like(d))
        if self.kind == "meters":
            raw = safe
        elif self.kind == "log":
            raw = torch.log(safe)
        else:
            raw = torch.reciprocal(safe)
        out = (raw - self.mean) / self.std
        return torch.where(valid, out, torch.zeros_like(out))

    def decode(self, pred: Tensor) -> Tensor:
        """Normalized predictions to meters.

        Args:
            pred: any shape (typically [B,1,H,W] or [B,H,W]), any float dtype.

        Returns:
            float32 meters, same shape, in ``[min_m, max_m]`` (strictly positive, finite);
            a NaN output stays NaN so that a broken model is not hidden.
        """
        raw = pred.float() * self.std + self.mean
        if self.kind == "log":
            meters = torch.exp(raw.clamp(math.log(self.min_m), math.log(self.max_m)))
        elif self.kind == "inverse":
            meters = torch.reciprocal(raw.clamp(1.0 / self.max_m, 1.0 / self.min_m))
        else:
            meters = raw
        # clamp (again) in meters: exp/reciprocal round the bounds by an ulp or so
        return meters.clamp(self.min_m, self.max_m)

    def log_meters(self, pred: Tensor) -> Tensor:
        """Natural log of the decoded depth, differentiable everywhere.

        Equal in value to ``decode(pred).log()``, but out-of-range predictions keep a
        gradient pointing back into range (straight-through clamp), which a loss such
        as SILog needs.

        Args:
            pred: any shape, any float dtype.

        Returns:
            float32 log-meters, same shape.
        """
        raw = pred.float() * self.std + self.mean
        if self.kind == "meters":
            return torch.log(_clamp_straight_through(raw, self.min_m, self.max_m))
        if self.kind == "log":
            return _clamp_straight_through(raw, math.log(self.min_m), math.log(self.max_m))
        return -torch.log(_clamp_straight_through(raw, 1.0 / self.max_m, 1.0 / self.min_m))
