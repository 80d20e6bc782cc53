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
  ``seed_everything`` still make a run reproducible): the numbers of numpy's
  ``Generator.random``, made from the raw 64-bit words (:class:`Draws`, ~1.2 ns a
  float32 draw against ~4 ns for torch's CPU mt19937, one thread). Without a leak the
  update is computed from the sums of the positive and negative entries, ``S+_j`` and
  ``S-_j``: ``P_j = S+_j / (S+_j - S-_j)`` (the same number as the paper's formula in
  exact arithmetic) and the column's update is ``S+_j`` if ``f(P_j) > U_j``, ``S-_j`` if
  ``f(P_j) < U_j``, 0 if they are equal, which is the sum of the kept entries
  (:func:`drop`). It runs on each parameter's rows in column chunks that stay in cache,
  without stacking them, small parameters packed together (:func:`chunks`), and writes
  into the first row (:meth:`GradDrop.combine_rows`).
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

import sys
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor
from torchjd.aggregation import GradDrop as TorchjdGradDrop

from scenemtl.balancing.base import distributed_world

GENERATORS = ("pcg64", "torchjd")

CHUNK = 1 << 16
"""Columns per chunk of :meth:`GradDrop.combine_rows`: the K rows' chunks, the three
work buffers and the draws (~1.8 MB for K = 2 in float32) stay in the core's 2 MB L2
cache, so only the first read of the rows and the write of the update go to memory."""


def _identity(p: Tensor) -> Tensor:
    return p


class Draws:
    """Uniform draws in [0, 1) from numpy's PCG64, consumed in column order: chunks of
    any sizes give the draws of one call of their total size. One generator per
    aggregation, seeded from torch's global generator (rank 0's under torch.distributed:
    every process applies the update to its replica, so all must drop the same entries,
    and their global generators drift apart after any data-dependent draw).

    The numbers are those of ``numpy.random.Generator(PCG64(seed)).random(n, dtype)``
    (tests/balancing/test_graddrop.py compares them), made from the generator's raw 64-bit
    words here: numpy's float32 draw is ``(w >> 8) 2^-24`` of each 32-bit half ``w`` of a
    word, low half first (the high half is kept for the next draw, across calls), its
    float64 draw ``(w >> 11) 2^-53`` of a whole word. Reading the raw words and converting
    them in whole arrays takes ~1.2 ns a float32 draw against ~2 ns through
    ``Generator.random`` (one thread)."""

    def __init__(self, device: torch.device | str = "cpu") -> None:
        """``device``: where the process group's backend takes tensors (the rows')."""
        seed = torch.randint(0, 2**63 - 1, (), dtype=torch.int64)
        if distributed_world() > 1:
            seed = seed.to(device)
            dist.broadcast(seed, src=0)
        self.bits = np.random.PCG64(int(seed))
        self.spare: np.ndarray | None = None
        """[1] uint32: the high half of the last word, not handed out yet (numpy keeps it
        in the generator's state, ``has_uint32``)."""

    def take(self, n: int, dtype: torch.dtype) -> Tensor:
        """[n] uniform numbers in [0, 1) on a grid of 2^-53 (float64) or 2^-24 (float32,
        also for any other ``dtype``), a fresh tensor of that float type."""
        if dtype == torch.float64:
            words = self.bits.random_raw(n)
            np.right_shift(words, 11, out=words)  # < 2^53: exact in float64
            return torch.from_numpy(words.view(np.int64)).to(torch.float64).mul_(2.0**-53)
        halves = self._halves(n)
        np.right_shift(halves, 8, out=halves)  # < 2^24: exact in float32
        return torch.from_numpy(halves.view(np.int32)).to(torch.float32).mul_(2.0**-24)

    def _halves(self, n: int) -> np.ndarray:
        """[n] uint32: the next n 32-bit halves of the stream, a fresh writable array."""
        spare, self.spare = (self.spare, None) if n > 0 else (None, self.spare)
        rest = n - (spare is not None)
        halves = self.bits.random_raw((rest + 1) // 2).view(np.uint32)
        if sys.byteorder != "little":  # the view gives the high half first there
            halves = halves.reshape(-1, 2)[:, ::-1].ravel()
        if rest % 2:
            self.spare = halves[-1:].copy()
            halves = halves[:-1]
        return halves if spare is None else np.concatenate((spare, halves))


_TINY = {
    dtype: torch.finfo(dtype).smallest_normal * torch.finfo(dtype).eps
    for dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64)
}
"""The smallest subnormal number of each dtype (0 < it <= any positive float)."""


def _sums(rows: Sequence[Tensor], work: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
    """(S+, S-) [m]: the sums of the positive and of the negative entries per column of
    the K rows [m], in row order, written into ``work[0]`` and ``work[1]`` (``work[2]``
    scratch; each [m])."""
    positive = torch.clamp_min(rows[0], 0, out=work[0])
    negative = torch.clamp_max(rows[0], 0, out=work[1])
    for row in rows[1:]:
        positive += torch.clamp_min(row, 0, out=work[2])
        negative += torch.clamp_max(row, 0, out=work[2])
    return positive, negative


def _denominator(positive: Tensor, negative: Tensor, out: Tensor) -> Tensor:
    """S+ - S- [m], the denominator of P = (1 + (S+ + S-) / (S+ - S-)) / 2 = S+ / (S+ -
    S-). A zero column (0 / 0 in the paper's formula: nothing kept) gets P = 0 here, by a
    denominator raised to the smallest subnormal (no other denominator changes): with
    P = 0 the column's update is S- = 0 or 0 whatever the draw, the same."""
    return torch.sub(positive, negative, out=out).clamp_min_(_TINY[positive.dtype])


def _margin(
    positive: Tensor, den: Tensor, draws: Tensor, f: Callable[[Tensor], Tensor], out: Tensor
) -> Tensor:
    """U - f(P) [m], P = S+ / den, into ``out`` (which may be ``den``). Its sign is exact
    (the difference of two floats is 0 only when they are equal). For ``f`` the identity
    in float32 or float64 one fused pass: ``addcdiv`` computes ``U + (-1 S+) / den``, the
    same two roundings as ``U - S+ / den``."""
    if f is _identity and positive.dtype in (torch.float32, torch.float64):
        return torch.addcdiv(draws.to(positive), positive, den, value=-1, out=out)
    if positive.dtype not in (torch.float32, torch.float64):
        purity = _decision_precision(f(torch.div(positive, den, out=out)))
        return draws.to(purity) - purity
    purity = f(torch.div(positive, den, out=out))
    return torch.sub(draws.to(purity), purity, out=out if purity is out else None)


def _decision_precision(purity: Tensor) -> Tensor:
    """``purity`` in at least float32: the draws are on a 2^-24 grid, and rounded to a
    half type those in [1 - 2^-9, 1) would become 1 and tie with a column of one sign
    (P = 1), dropping it; the margin's sign must not depend on the rows' type."""
    return purity if purity.dtype in (torch.float32, torch.float64) else purity.float()


def drop(
    rows: Sequence[Tensor],
    draws: Tensor,
    f: Callable[[Tensor], Tensor],
    out: Tensor | None = None,
    work: Sequence[Tensor] | None = None,
) -> Tensor:
    """GradDrop without a leak of the K columns ``rows`` [m] each given the draws [m]:
    the sum of the kept entries per column, [m], written into ``out`` (which may be one of
    ``rows``: it is written last) or a fresh tensor; ``work``: three [m] buffers of the
    rows' dtype (fresh ones if None).

    The kept entries of column j sum to S+ if f(P) > U, S- if f(P) < U, 0 if equal: with
    ``s = sign(f(P) - U)`` that is ``clamp(s BIG, S-, S+)``, BIG the dtype's largest
    finite number (S- <= 0 <= S+ <= BIG, so BIG gives S+, -BIG gives S-, 0 gives 0):
    exact, and three passes (sign, scale, clamp) where masks and their products took
    five. Float arithmetic only: boolean masks and ``torch.where`` cost 5-30x a float
    operation on this CPU."""
    if work is None:
        work = [torch.empty_like(rows[0]) for _ in range(3)]
    positive, negative = _sums(rows, work)
    den = _denominator(positive, negative, out=work[2])
    margin = _margin(positive, den, draws, f, out=work[2])  # U - f(P)
    side = margin.sign_().mul_(-torch.finfo(margin.dtype).max)  # BIG sign(f(P) - U)
    # (float32 ``side`` for half rows: S+ and S- are exact in it, and so after the cast)
    return torch.clamp(side, negative, positive, out=out)


def drop_with_leak(
    rows: Sequence[Tensor], draws: Tensor, f: Callable[[Tensor], Tensor], leak: Tensor
) -> Tensor:
    """GradDrop with a leak [K]: ``sum_k (l_k + (1 - l_k) m_k) J_k`` per column, [m]."""
    work = [torch.empty_like(rows[0]) for _ in range(3)]
    positive, negative = _sums(rows, work)
    purity = _decision_precision(f(positive / _denominator(positive, negative, out=work[2])))
    draws = draws.to(purity)
    up, down = purity > draws, purity < draws
    out = torch.zeros_like(rows[0])
    for k, row in enumerate(rows):
        mask = ((row > 0) & up) | ((row < 0) & down)
        lk = float(leak[k])
        out += (lk + (1 - lk) * mask.to(row.dtype)) * row
    return out


def chunks(sizes: Sequence[int], size: int) -> Iterator[list[tuple[int, int, int]]]:
    """The columns of parameters of ``sizes`` columns each, side by side, in column order
    and in chunks of at most ``size`` columns; each chunk a list of pieces ``(parameter,
    start, stop)``. A parameter's whole chunks of ``size`` columns are chunks of one piece
    (views of its rows, no copy); its first ``numel % size`` columns are packed with the
    neighbouring parameters' such columns where they follow each other (a chunk costs
    ~30 us of Python and dispatch whatever its size: the normalization layers' 64-512
    parameters between two convolutions of the demo network would otherwise make 256
    chunks instead of 200)."""
    pending: list[tuple[int, int, int]] = []
    room = size
    for p, n in enumerate(sizes):
        begin, head = 0, n % size
        while begin < head:  # the loose columns, packed
            stop = min(head, begin + room)
            pending.append((p, begin, stop))
            room -= stop - begin
            begin = stop
            if room == 0:
                yield pending
                pending, room = [], size
        if n >= size:  # its whole chunks follow its head in column order
            if pending:
                yield pending
            pending, room = [], size
            for begin in range(head, n, size):
                yield [(p, begin, begin + size)]
    if pending:
        yield pending


class _Workspace:
    """Buffers of CHUNK columns per dtype and device, reused by every chunk of one
    aggregation (a fresh tensor per chunk is fresh memory to bring into the cache)."""

    def __init__(self, k: int) -> None:
        self.k = k
        self.buffers: dict[tuple[torch.dtype, torch.device], list[Tensor]] = {}

    def get(self, like: Tensor, m: int) -> list[Tensor]:
        """[m] buffers (m <= CHUNK) of ``like``'s dtype and device: three for the work of
        :func:`drop`, then K to gather the rows of a packed chunk into."""
        key = (like.dtype, like.device)
        if key not in self.buffers:
            self.buffers[key] = [like.new_empty(CHUNK) for _ in range(3 + self.k)]
        buffers = self.buffers[key]
        return buffers if m == CHUNK else [b[:m] for b in buffers]  # most chunks are full


def _gather(
    parts: Sequence[Sequence[Tensor]],
    outs: Sequence[Tensor],
    pieces: list[tuple[int, int, int]],
    buffers: Sequence[Tensor],
) -> tuple[list[Tensor], Tensor]:
    """The chunk's K rows [m] and where its update goes [m]: views of the parameter's
    rows and of its ``outs`` for one piece; else the pieces' rows copied side by side
    into ``buffers`` (K [m] tensors), the update into the first (:func:`_scatter` then)."""
    if len(pieces) == 1:
        p, start, stop = pieces[0]
        return [row[start:stop] for row in parts[p]], outs[p][start:stop]
    rows = [
        torch.cat([parts[p][k][start:stop] for p, start, stop in pieces], out=buffer)
        for k, buffer in enumerate(buffers)
    ]
    return rows, rows[0]


def _scatter(update: Tensor, outs: Sequence[Tensor], pieces: list[tuple[int, int, int]]) -> None:
    """A packed chunk's ``update`` [m] back into the ``outs`` of its pieces."""
    begin = 0
    for p, start, stop in pieces:
        outs[p][start:stop].copy_(update[begin : begin + stop - start])
        begin += stop - start


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
            out = torch.empty(n, dtype=matrix.dtype, device=matrix.device)
            self._combine([list(matrix)], [out])
            return out
        return self._torchjd_forward(matrix)

    def combine_rows(self, parts: list[list[Tensor]], scale: float = 1.0) -> list[Tensor]:
        """GradDrop of ``scale * J``, ``J`` the parameters' rows side by side (one list of
        K flat rows per parameter), as :meth:`forward` on the whole matrix with the same
        seed; per parameter its update [numel], written into its first row (the rows
        are not used afterwards)."""
        outs = [rows[0] for rows in parts]
        self._combine(parts, outs, scale)
        return outs

    def _combine(
        self, parts: Sequence[Sequence[Tensor]], outs: Sequence[Tensor], scale: float = 1.0
    ) -> None:
        """The update of each parameter's K rows [m] into its ``outs`` [m] (which may be
        its first row), chunk by chunk (:func:`chunks`) in column order with one stream
        of draws, each chunk finished (scaled included) while it is in cache."""
        draws, work = Draws(outs[0].device), _Workspace(len(parts[0]))
        for pieces in chunks([out.numel() for out in outs], CHUNK):
            m = sum(stop - start for _, start, stop in pieces)
            buffers = work.get(outs[pieces[0][0]], m)
            rows, target = _gather(parts, outs, pieces, buffers[3:])
            u = draws.take(m, target.dtype).to(target.device)
            if self.leak is None:
                drop(rows, u, self.f, out=target, work=buffers[:3])
            else:
                target.copy_(drop_with_leak(rows, u, self.f, self.leak.to(target)))
            if scale != 1.0:  # P does not change with a positive scale: the sums scale
                target.mul_(scale)
            if len(pieces) > 1:
                _scatter(target, outs, pieces)

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
