"""GradDrop's default path (balancing/graddrop.py) piece by piece: its draws are numpy's
documented stream, its chunks cover every column once in column order, and its decision
is the paper's for a purity function and at the ends of the float range. The whole
aggregator against torchjd's and the paper's Algorithm 1 is in test_jacobian.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from scenemtl.balancing import graddrop
from scenemtl.balancing.graddrop import Draws, GradDrop, chunks
from tests.balancing.given_draws import GivenDraws


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_draws_are_numpys_generator_random_for_the_seed(dtype):
    """Draws made from PCG64's raw words are the numbers numpy's Generator.random gives
    for the same seed (the stream docs/balancing.md documents), whatever the chunk sizes
    (odd sizes leave half a word for the next chunk). Exact: both are integers below
    2^24 (2^53) times a power of two, no rounding anywhere."""
    torch.manual_seed(0)
    seed = int(torch.randint(0, 2**63 - 1, (), dtype=torch.int64))
    sizes = (1, 2, 3, 999, 0, 4096, 7, 65536, 1)
    np_dtype = np.float32 if dtype == torch.float32 else np.float64
    expected = np.random.Generator(np.random.PCG64(seed)).random(sum(sizes), dtype=np_dtype)
    torch.manual_seed(0)
    draws = Draws()
    got = torch.cat([draws.take(m, dtype) for m in sizes])
    assert got.dtype == dtype
    assert np.array_equal(got.numpy(), expected)


def test_draws_keep_numpys_half_word_across_float64_draws():
    """numpy keeps the unused high half of a word for the next float32 draw, also across
    float64 draws in between (its generator state); so do the Draws."""
    torch.manual_seed(3)
    seed = int(torch.randint(0, 2**63 - 1, (), dtype=torch.int64))
    rng = np.random.Generator(np.random.PCG64(seed))
    expected = [rng.random(3, dtype=np.float32), rng.random(2), rng.random(5, dtype=np.float32)]
    torch.manual_seed(3)
    draws = Draws()
    got = [draws.take(3, torch.float32), draws.take(2, torch.float64)]
    got.append(draws.take(5, torch.float32))
    for g, e in zip(got, expected, strict=True):
        assert np.array_equal(g.numpy(), e)  # exact, as above


@pytest.mark.parametrize(
    "sizes",
    [[100, 1, 150, 49], [16, 16, 3], [5, 40, 7, 7, 64, 2], [1] * 40, [33], [17, 15, 16, 1]],
)
def test_chunks_cover_every_column_once_in_column_order(sizes):
    """The pieces of the chunks, one after the other, are the columns of the parameters
    side by side in order; no chunk is larger than the size; a chunk of several pieces
    holds only parameters' first ``numel % size`` columns, the rest are whole chunks."""
    size = 16
    found = [(p, c) for pieces in chunks(sizes, size) for p, a, b in pieces for c in range(a, b)]
    assert found == [(p, c) for p, n in enumerate(sizes) for c in range(n)]
    for pieces in chunks(sizes, size):
        assert 0 < sum(b - a for _, a, b in pieces) <= size
        if len(pieces) > 1 or pieces[0][2] - pieces[0][1] < size:
            assert all(b <= sizes[p] % size for p, _, b in pieces)
    # the small ones packed: [1] * 40 in 3 chunks, not 40
    assert len(list(chunks([1] * 40, size))) == 3


def test_combine_rows_of_small_parameters_is_the_whole_matrix():
    """Packed chunks (many small parameters, gathered and scattered back) give what the
    whole matrix gives with the same seed: the same draws (one stream in column order)
    and the same operations per column, then one multiplication by the scale (within
    one rounding of the largest update)."""
    torch.manual_seed(5)
    sizes = [3, 64, 64, 200, 1, 64, 64, 50]
    matrix = torch.randn(3, sum(sizes))
    parts = [[r.clone() for r in block] for block in matrix.split(sizes, dim=1)]
    torch.manual_seed(9)
    whole = GradDrop()(matrix)
    torch.manual_seed(9)
    got = torch.cat(GradDrop().combine_rows(parts, scale=0.5))
    eps = torch.finfo(torch.float32).eps
    torch.testing.assert_close(got, 0.5 * whole, rtol=0, atol=eps * float(whole.abs().max()))


def _papers_update(matrix: torch.Tensor, draws: torch.Tensor, f) -> torch.Tensor:
    """Algorithm 1 (lines 10-15) in float64, column by column, with purity function f:
    keep J_kj > 0 if f(P_j) > U_j, J_kj < 0 if f(P_j) < U_j; P_j = (1 + sum / sum|.|) / 2,
    nothing kept in a zero column."""
    out = []
    for col, u in zip(matrix.double().T.tolist(), draws.tolist(), strict=True):
        total = sum(abs(v) for v in col)
        fp = f(0.5 * (1 + sum(col) / total)) if total else None
        kept = [v for v in col if fp is not None and ((fp > u and v > 0) or (fp < u and v < 0))]
        out.append(sum(kept))
    return torch.tensor(out, dtype=torch.float64)


def test_a_purity_function_is_applied_as_the_paper_says(monkeypatch):
    """``f`` other than the identity (the general path: P, f(P), then U - f(P)): f(P) =
    P^3, monotone, keeps the positive entries less often. Draws kept 1e-4 away from
    f(P) (where float32 and float64 purities could decide differently)."""
    torch.manual_seed(11)
    matrix = torch.randn(2, 400)
    p = 0.5 * (1 + matrix.double().sum(0) / matrix.double().abs().sum(0))
    draws = torch.randint(0, 1 << 24, (400,), generator=torch.Generator().manual_seed(1))
    draws = draws.double() / (1 << 24)
    near = (p**3 - draws).abs() < 1e-4
    draws[near] = (draws[near] + 0.25) % 1.0
    expected = _papers_update(matrix, draws, lambda v: v**3)
    monkeypatch.setattr(graddrop, "Draws", GivenDraws(draws))
    got = GradDrop(f=lambda t: t**3)(matrix)
    # float32 sums of at most two kept entries: one rounding of sum |J|
    atol = torch.finfo(torch.float32).eps * float(matrix.abs().sum(0).max())
    torch.testing.assert_close(got.double(), expected, rtol=0, atol=atol)


def test_the_decision_is_exact_at_the_ends_of_the_float_range(monkeypatch):
    """The update of a column with one positive and one negative entry is exactly one of
    them (or 0 on a tie): huge entries near float32's largest, subnormal ones, and a
    subnormal against a huge one; the selection by clamp(+-BIG, S-, S+) must not round."""
    big, tiny = 1.5e38, 1e-44
    columns = [(big, -big), (big, -tiny), (tiny, -big), (tiny, -tiny), (tiny, -3 * tiny)]
    columns += [(-big, big), (3.0, -1.0)]
    matrix = torch.tensor(columns, dtype=torch.float32).T.contiguous()
    draws = torch.tensor([0.3, 0.7, 0.2, 0.9, 0.1, 0.6, 0.75])  # the last one a tie: P = 3/4
    expected = _papers_update(matrix, draws, lambda v: v)
    monkeypatch.setattr(graddrop, "Draws", GivenDraws(draws))
    got = GradDrop()(matrix)
    # each update is one entry of the column or 0: no arithmetic, so exact
    torch.testing.assert_close(got.double(), expected, rtol=0, atol=0)
    assert float(got[-1]) == 0.0  # the tie keeps nothing


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("leak", [None, (0.0, 0.0)])
def test_half_rows_of_one_sign_keep_their_whole_column(monkeypatch, dtype, leak):
    """P = 1 (every entry positive) keeps the column for every draw U < 1, also for draws
    just below 1, which a half type rounds to 1 (bfloat16 from 1 - 2^-9, float16 from
    1 - 2^-12): a tie there would drop the column. With one sign per column the update
    is the column's sum, exactly (two entries of one sign: one rounding each way)."""
    draws = torch.tensor([1 - 2.0**-24, 1 - 2.0**-10, 1 - 2.0**-13, 0.5, 0.0])
    matrix = torch.tensor([[1.0, 2.0, 0.25, 3.0, 1.0], [0.5, 4.0, 0.5, 1.0, 2.0]], dtype=dtype)
    monkeypatch.setattr(graddrop, "Draws", GivenDraws(draws))
    aggregator = GradDrop(leak=None if leak is None else torch.tensor(leak))
    got = aggregator(matrix)
    assert got.dtype == dtype
    assert torch.equal(got, matrix.sum(dim=0))
    # and a column of negative entries (P = 0) is kept for every U > 0
    monkeypatch.setattr(graddrop, "Draws", GivenDraws(draws))
    got = aggregator(-matrix[:, :4])
    assert torch.equal(got, -matrix[:, :4].sum(dim=0))
