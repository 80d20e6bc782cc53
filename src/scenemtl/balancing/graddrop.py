"""GradDrop (Chen et al., NeurIPS 2020): torchjd's aggregator in fewer passes, with a
faster random stream by default.

Per column j of the Jacobian [K, n] (lines 10-15 of the paper's Algorithm 1, torchjd
0.18's :class:`torchjd.aggregation.GradDrop`): the "positive sign purity"
``P_j = (1 + sum_k J_kj / sum_k |J_kj|) / 2``, one uniform draw ``U_j``, and entry
``J_kj`` is kept when ``f(P_j) > U_j and J_kj > 0`` or ``f(P_j) < U_j and J_kj < 0``; the
update is the sum of the kept entries (with a ``leak``, ``sum_k (l_k + (1 - l_k) m_kj)
J_kj``).

Two streams of draws (option ``generator``):

* ``pcg64`` (default): the draws come from numpy's PCG64, seeded per call with one
  64-bit integer drawn from torch's global generator (so ``torch.manual_seed`` and
  ``seed_everything`` still make a run reproducible). It fills one float32 in ~2 ns
  against ~4 ns for torch's CPU mt19937 (~25 ms against ~46 ms for the 12 M shared
  parameters of the demo network, one thread). Without a leak the update is computed
  from the sums of the positive and negative entries, ``S+_j`` and ``S-_j``:
  ``P_j = S+_j / (S+_j - S-_j)`` (the same number as the paper's formula in exact
  arithmetic) and the column's update is ``S+_j`` if ``f(P_j) > U_j``, ``S-_j`` if
  ``f(P_j) < U_j``, 0 if they are equal, which is the sum of the kept entries. It runs
  on each parameter's rows in column chunks that stay in cache, without stacking them
  (:meth:`GradDrop.combine_rows`), and writes into the first row.
* ``torchjd``: torchjd's exact stream (``torch.rand`` of the matrix's shape on the
  global generator) and torchjd's float operations, so the result is torchjd's to the
  last bit (tests/balancing/test_jacobian.py compares them), on column chunks of the
  stacked rows.

The two streams give different masks for the same seed; the distribution of the masks
is the same (tests/balancing/test_jacobian.py holds both: an independent float64
solution fed the same draws, and the frequency of keeping the positive entries).
docs/balancing.md ("Where the time goes") has the figures.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import Tensor
from torchjd.aggregation import GradDrop as TorchjdGradDrop

GENERATORS = ("pcg64", "torchjd")

CHUNK = 1 << 16
"""Columns per chunk of :meth:`GradDrop.combine_rows`: the K rows' chunks and the
temporaries stay in the core's cache."""


def _identity(p: Tensor) -> Tensor:
    return p


class Draws:
    """Uniform draws in [0, 1) from numpy's PCG64, consumed in column order: chunks of
    any sizes give the draws of one call of their total size (numpy generators
    concatenate). One generator per aggregation, seeded from torch's global generator."""

    def __init__(self) -> None:
        seed = int(torch.randint(0, 2**63 - 1, (), dtype=torch.int64))
        self.rng = np.random.Generator(np.random.PCG64(seed))

    def take(self, n: int, dtype: torch.dtype) -> Tensor:
        """[n] uniform numbers in [0, 1) on a grid of 2^-24 (float32) or 2^-53 (float64)."""
        np_dtype = np.float64 if dtype == torch.float64 else np.float32
        return torch.from_numpy(self.rng.random(n, dtype=np_dtype))


def _sums(rows: Sequence[Tensor], work: Tensor) -> tuple[Tensor, Tensor]:
    """(S+, S-) [m]: the sums of the positive and of the negative entries per column, in
    row order (``work`` [m] a scratch tensor)."""
    positive = rows[0].clamp_min(0)
    negative = rows[0].clamp_max(0)
    for row in rows[1:]:
        positive += torch.clamp_min(row, 0, out=work)
        negative += torch.clamp_max(row, 0, out=work)
    return positive, negative


def _purity(
    positive: Tensor, negative: Tensor, f: Callable[[Tensor], Tensor], work: Tensor
) -> Tensor:
    """f(P) [m], P = (1 + (S+ + S-) / (S+ - S-)) / 2 = S+ / (S+ - S-). A zero column
    (0 / 0 in the paper's formula: nothing kept) gets P = 0 here, by a denominator raised
    to the smallest subnormal (no other denominator changes): with P = 0 the column's
    update is S- = 0 or 0 whatever the draw, the same."""
    den = torch.sub(positive, negative, out=work).clamp_min_(_TINY[positive.dtype])
    return f(positive / den)


_TINY = {
    dtype: torch.finfo(dtype).smallest_normal * torch.finfo(dtype).eps
    for dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64)
}
"""The smallest subnormal number of each dtype (0 < it <= any positive float)."""


def drop(
    rows: Sequence[Tensor],
    draws: Tensor,
    f: Callable[[Tensor], Tensor],
    out: Tensor | None = None,
) -> Tensor:
    """GradDrop without a leak of the K columns ``rows`` [m] each given the draws [m]:
    the sum of the kept entries per column, [m], written into ``out`` (which may be one of
    ``rows``: it is written last) or a fresh tensor.

    The kept entries of column j sum to S+ if f(P) > U, S- if f(P) < U, 0 if equal: with
    ``s = sign(f(P) - U)``, ``up = max(s, 0)`` and ``down = up - s`` (1 where s = -1)
    that is ``S+ up + S- down``, exact in floats (products with 1 and 0, and one of the
    two terms is zero). Float arithmetic only: boolean masks and ``torch.where`` cost
    5-30x a float operation on this CPU."""
    work = torch.empty_like(rows[0])
    positive, negative = _sums(rows, work)
    purity = _purity(positive, negative, f, work)
    side = torch.sign(purity.sub_(draws.to(purity)))
    up = torch.clamp_min(side, 0, out=work)
    down = torch.sub(up, side, out=side)
    return torch.addcmul(positive.mul_(up), negative, down, out=out)


def drop_with_leak(
    rows: Sequence[Tensor], draws: Tensor, f: Callable[[Tensor], Tensor], leak: Tensor
) -> Tensor:
    """GradDrop with a leak [K]: ``sum_k (l_k + (1 - l_k) m_k) J_k`` per column, [m]."""
    work = torch.empty_like(rows[0])
    positive, negative = _sums(rows, work)
    purity = _purity(positive, negative, f, work)
    draws = draws.to(purity)
    up, down = purity > draws, purity < draws
    out = torch.zeros_like(rows[0])
    for k, row in enumerate(rows):
        mask = ((row > 0) & up) | ((row < 0) & down)
        lk = float(leak[k])
        out += (lk + (1 - lk) * mask.to(row.dtype)) * row
    return out


class GradDrop(TorchjdGradDrop):
    """GradDrop with torchjd's options (``f``, ``leak``) and ``generator``: ``"pcg64"``
    (default, the faster stream) or ``"torchjd"`` (torchjd's stream and result)."""

    def __init__(
        self,
        f: Callable[[Tensor], Tensor] = _identity,
        leak: Tensor | None = None,
        generator: str = "pcg64",
    ) -> None:
        if generator not in GENERATORS:
            raise ValueError(f"generator must be one of {', '.join(GENERATORS)}, got {generator!r}")
        super().__init__(f=f, leak=leak)
        self.generator = generator

    @property
    def columnwise(self) -> bool:
        """torchjd's stream on chunks of columns of the stacked rows: column j of the
        output depends on column j and the j-th draw only (drawn in column order), so
        chunks give the result of the whole matrix where the draws concatenate (the CPU
        generator)."""
        return self.generator == "torchjd"

    @property
    def rowwise(self) -> bool:
        """:meth:`combine_rows` works on the rows of each parameter as autograd gives them."""
        return self.generator == "pcg64"

    def forward(self, matrix: Tensor, /) -> Tensor:
        """[K, n] -> [n]: the kept entries of each column, summed."""
        self._check_matrix_shape(matrix)
        k, n = matrix.shape
        if k == 0 or n == 0:
            return torch.zeros(n, dtype=matrix.dtype, device=matrix.device)
        if self.generator == "pcg64":
            draws = Draws().take(n, matrix.dtype).to(matrix.device)
            return self._drop(list(matrix), draws)
        return self._torchjd_forward(matrix)

    def combine_rows(self, parts: list[list[Tensor]], scale: float = 1.0) -> list[Tensor]:
        """GradDrop of ``scale * J``, ``J`` the parameters' rows side by side (one list of
        K flat rows per parameter), as :meth:`forward` on the whole matrix with the same
        seed; per parameter its update [numel], written into its first row (the rows
        are not used afterwards)."""
        draws = Draws()
        out = []
        for rows in parts:
            vector = rows[0]
            for start in range(0, vector.numel(), CHUNK):
                chunk = [r[start : start + CHUNK] for r in rows]
                u = draws.take(chunk[0].numel(), vector.dtype).to(vector.device)
                self._drop(chunk, u, out=chunk[0])
            if scale != 1.0:  # P does not change with a positive scale: the sums scale
                vector.mul_(scale)
            out.append(vector)
        return out

    def _drop(self, rows: Sequence[Tensor], draws: Tensor, out: Tensor | None = None) -> Tensor:
        if self.leak is None:
            return drop(rows, draws, self.f, out)
        result = drop_with_leak(rows, draws, self.f, self.leak.to(rows[0]))
        return result if out is None else out.copy_(result)

    def _torchjd_forward(self, matrix: Tensor) -> Tensor:
        """torchjd's numbers: its draws and its float operations, in fewer passes."""
        k = matrix.shape[0]
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
