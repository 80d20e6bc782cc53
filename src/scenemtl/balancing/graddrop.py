"""GradDrop (Chen et al., NeurIPS 2020) as torchjd's aggregator computes it, in fewer passes.

torchjd 0.18's :class:`torchjd.aggregation.GradDrop` (lines 10-15 of the paper's
Algorithm 1) keeps, per column j of the Jacobian [K, n], the positive entries with
probability ``P_j = (1 + sum_k J_kj / sum_k |J_kj|) / 2`` (the "positive sign purity")
and the negative ones otherwise, with one uniform draw ``U_j`` per column, and sums the
kept entries. Its code makes about 20 passes over [n] or [K, n] tensors with fresh
temporaries; per column it needs two sums, one draw and a sign test per entry. This
class computes the same numbers (the same draws from the same generator, the same float
operations on every kept entry) with about half the passes, and declares itself
``columnwise`` so that :mod:`scenemtl.balancing.jacobian` can run it on column chunks
that stay in cache. The result is torchjd's (the same entries kept, summed in the same
order), with or without a ``leak``; tests/balancing/test_jacobian.py compares them.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchjd.aggregation import GradDrop as TorchjdGradDrop


class GradDrop(TorchjdGradDrop):
    """torchjd's GradDrop (same options, same result), fewer passes over the matrix."""

    columnwise = True
    """Column j of the output depends on column j of the matrix and the j-th uniform draw
    only (drawn in column order): chunks of columns give the result of the whole matrix
    where the generator's draws concatenate (the CPU generator)."""

    def forward(self, matrix: Tensor, /) -> Tensor:
        """[K, n] -> [n]: the kept entries of each column, summed."""
        self._check_matrix_shape(matrix)
        k, n = matrix.shape
        if k == 0 or n == 0:
            return torch.zeros(n, dtype=matrix.dtype, device=matrix.device)
        # P = (1 + sum / sum|.|) / 2, as torchjd writes it: 0.5 * (1 + s / a)
        purity = matrix.sum(dim=0).div_(matrix.abs().sum(dim=0)).add_(1.0).mul_(0.5)
        draws = torch.rand(purity.shape, dtype=matrix.dtype, device=matrix.device)
        # torchjd keeps J_kj when (f(P_j) > U_j and J_kj > 0) or (f(P_j) < U_j and
        # J_kj < 0): exactly when sign(J_kj) * (f(P_j) - U_j) > 0 (a difference of two
        # floats is 0 only when they are equal, and NaN compares false in both forms)
        margin = self.f(purity).sub_(draws)
        keep = torch.sign(matrix).mul_(margin).gt_(0)
        if self.leak is None:
            # torchjd: (0 + (1 - 0) * keep) * J = keep * J, exactly
            kept = keep.mul_(matrix)
        else:
            leak = self.leak.to(matrix)[:, None]
            kept = (leak + (1 - leak) * keep).mul_(matrix)
        # torchjd sums the rows one after the other into zeros
        vector = kept[0].clone()
        for i in range(1, k):
            vector += kept[i]
        return vector
