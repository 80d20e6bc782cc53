"""MGDA, CAGrad, UPGrad and DualProj as torchjd aggregators with exact solvers.

torchjd 0.18's versions of these four approximate their problem in ways that matter for
training (docs/balancing.md, "Exact solvers"): CAGrad returns 0 when the Gram trace is
below 1e-4, UPGrad and DualProj add 1e-4 to the trace-normalised Gram matrix (a task
with a 1e-4 share of the squared norms is swamped; below trace 1e-4 both become the
mean), MGDA stops Frank-Wolfe at a step of 1e-3. The classes here keep torchjd's
interface (a :class:`~torchjd.aggregation.GramianWeightedAggregator` whose weighting maps
the Gram matrix [K, K] to weights [K]), so :class:`~scenemtl.balancing.gradient.
GradientBalancer` treats them like any torchjd aggregator (``jac_to_grad``, the weights it
logs, the summed Gram matrix under DDP), and solve the problems of
:mod:`scenemtl.balancing.solvers` in float64 instead.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor
from torchjd.aggregation import Aggregator, GramianWeightedAggregator, Weighting

from scenemtl.balancing.solvers import cagrad_weights, dual_cone_weights, min_norm_weights


class _GramWeighting(Weighting):
    """Gram matrix [K, K] -> weights [K], computed in float64 numpy, returned in the Gram
    matrix's dtype and device. Not differentiable (nothing here needs it)."""

    def forward(self, gramian: Tensor, /) -> Tensor:
        with torch.no_grad():
            G = gramian.detach().double().cpu().numpy()
            w = self.solve((G + G.T) / 2)
        return torch.from_numpy(np.ascontiguousarray(w)).to(gramian.device, gramian.dtype)

    def solve(self, G: np.ndarray) -> np.ndarray:
        raise NotImplementedError


class MinNormWeighting(_GramWeighting):
    """MGDA's weights: the min-norm point of the convex hull of the gradients."""

    def solve(self, G: np.ndarray) -> np.ndarray:
        return min_norm_weights(G)


class ConflictAverseWeighting(_GramWeighting):
    """CAGrad's weights ``1/K + c |g0| w / |g_w|``."""

    def __init__(self, c: float) -> None:
        super().__init__()
        c = float(c)
        if not (math.isfinite(c) and c >= 0):
            raise ValueError(f"c must be a finite number >= 0, got {c}")
        self.c = c

    def solve(self, G: np.ndarray) -> np.ndarray:
        return cagrad_weights(G, self.c)


class ProjectRowsWeighting(_GramWeighting):
    """UPGrad's weights: the sum of the projections of each row / K onto the dual cone."""

    def solve(self, G: np.ndarray) -> np.ndarray:
        k = G.shape[0]
        return dual_cone_weights(G, np.eye(k) / k).sum(axis=0)


class ProjectMeanWeighting(_GramWeighting):
    """DualProj's weights: the projection of the mean row onto the dual cone."""

    def solve(self, G: np.ndarray) -> np.ndarray:
        k = G.shape[0]
        return dual_cone_weights(G, np.full(k, 1.0 / k))


class MGDA(GramianWeightedAggregator):
    """MGDA (Sener & Koltun, 2018; Desideri, 2012): the min-norm convex combination of the
    task gradients, exactly (no Frank-Wolfe tolerance)."""

    def __init__(self) -> None:
        super().__init__(MinNormWeighting())


class CAGrad(GramianWeightedAggregator):
    """CAGrad (Liu et al., 2021): ``g0 + c |g0| g_w / |g_w|`` with ``w`` the exact
    minimiser of the dual, at any scale of the gradients."""

    def __init__(self, c: float = 0.4) -> None:
        super().__init__(ConflictAverseWeighting(c))

    def __repr__(self) -> str:
        return f"CAGrad(c={self.gramian_weighting.c})"


class UPGrad(GramianWeightedAggregator):
    """UPGrad (Quinton & Rey, 2024): the mean of the exact projections of the rows onto the
    dual cone ``{x : J x >= 0}``."""

    def __init__(self) -> None:
        super().__init__(ProjectRowsWeighting())


class DualProj(GramianWeightedAggregator):
    """DualProj (Quinton & Rey, 2024, after GEM): the exact projection of the mean row
    onto the dual cone ``{x : J x >= 0}``."""

    def __init__(self) -> None:
        super().__init__(ProjectMeanWeighting())


class ConFIG(Aggregator):
    """ConFIG (Liu et al., ICLR 2025, equation 2): ``g = (sum_i g_i . u) u``, ``u`` the
    unit vector of ``pinv(U) 1``, ``U`` the unit rows of ``J``, computed from the Gram
    matrix: ``pinv(U) 1 = U^T pinv(U U^T) 1``, so the update is a combination of the rows
    with coefficients from ``J J^T`` alone (:meth:`gramian_combination`).

    torchjd 0.18's ConFIG takes ``torch.linalg.pinv`` of the [K, n] unit rows in their
    dtype, whose default cutoff ``max(K, n) eps`` is above 1 for float32 and ``n > 8.4e6``:
    every singular value is cut and the update is exactly 0 (the 12 M shared parameters of
    the demo network with ``wrt: parameters``). Here the pseudo-inverse is of the [K, K]
    correlation matrix in float64, cutting eigenvalues below ``RTOL`` of the largest
    (rows within ~1e-5 rad of parallel count as one direction, as rounding of a float32
    Gram matrix cannot tell them apart)."""

    RTOL = 1e-10

    def forward(self, matrix: Tensor, /) -> Tensor:
        """[K, n] -> [n]."""
        gramian = matrix.double() @ matrix.double().T
        return self.gramian_combination(gramian).to(matrix) @ matrix

    def gramian_combination(self, gramian: Tensor) -> Tensor:
        """Gram matrix [K, K] -> coefficients a [K] (float64) with update ``a @ J``."""
        G = gramian.detach().double().cpu().numpy()
        G = (G + G.T) / 2
        norms = np.sqrt(np.clip(np.diag(G), 0, None))
        inv = np.divide(1.0, norms, out=np.zeros_like(norms), where=norms > 0)
        correlation = inv[:, None] * G * inv[None, :]
        c = np.linalg.pinv(correlation, rcond=self.RTOL, hermitian=True) @ np.ones(len(G))
        # |pinv(U) 1|, clamped as torch.nn.functional.normalize does
        size = max(math.sqrt(max(float(c @ correlation @ c), 0.0)), 1e-12)
        direction = inv * c / size  # u = J^T direction
        length = float(np.ones(len(G)) @ G @ direction)  # sum_i g_i . u
        return torch.from_numpy(length * direction)

    def __repr__(self) -> str:
        return "ConFIG()"
