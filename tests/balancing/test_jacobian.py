"""The Jacobian machinery of gradient-level methods (balancing/jacobian.py) and the lean
GradDrop (balancing/graddrop.py) against independent answers: the closed-form Jacobian
of a linear layer, the Gram matrix of the whole matrix, torchjd's own GradDrop with the
same random draws."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torchjd.aggregation import GradDrop as TorchjdGradDrop

from scenemtl.balancing import build_balancer, jacobian
from scenemtl.balancing.graddrop import GradDrop
from scenemtl.errors import UserError
from scenemtl.tasks import build_tasks, legacy_task_specs
from tests.balancing.given_draws import GivenDraws

TASKS = build_tasks(legacy_task_specs())


def test_parameter_jacobian_is_the_closed_form_of_a_linear_layer(monkeypatch):
    """features = x W^T + b: the row of <V_k, features> is (V_k^T x, sum V_k); a
    parameter that does not reach the features gets zeros."""
    monkeypatch.setattr(jacobian, "CHUNK", 7)
    torch.manual_seed(0)
    layer = nn.Linear(5, 4).double()
    unused = nn.Parameter(torch.ones(3, dtype=torch.float64))
    x = torch.randn(6, 5, dtype=torch.float64)
    features = layer(x)
    v = torch.randn(3, 6, 4, dtype=torch.float64)  # K = 3 rows
    parts = jacobian.parameter_jacobian([features], [v], [layer.weight, layer.bias, unused])
    for k in range(3):
        # float64 sums of the same products in another order: ~1e-15 relative
        expected = (v[k].T @ x).reshape(-1)
        torch.testing.assert_close(parts[0][k], expected, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(parts[1][k], v[k].sum(0), rtol=1e-12, atol=1e-14)
        assert parts[2][k].abs().sum() == 0
    whole = torch.cat(jacobian.stacked([list(rows) for rows in parts]), dim=1)
    assert whole.shape == (3, 4 * 5 + 4 + 3)
    gram = jacobian.gram_matrix(parts)
    assert gram.dtype == torch.float64
    torch.testing.assert_close(gram, whole @ whole.T, rtol=1e-12, atol=1e-14)
    # the update of weights w: sum_k w_k row_k per parameter
    w = torch.tensor([0.5, -2.0, 3.0], dtype=torch.float64)
    for got, want in zip(jacobian.combine(w, parts), (w @ whole).split([20, 4, 3]), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-14)


def test_the_gram_matrix_of_float32_rows(monkeypatch):
    """float32 products per chunk of 1000 columns, summed in float64: within 1e-6
    relative of the float64 Gram matrix (a chunk's float32 dot products err by ~1e-7
    relative; the bound leaves a factor 10 for the blocked summation)."""
    monkeypatch.setattr(jacobian, "CHUNK", 1000)
    torch.manual_seed(1)
    parts = [[torch.randn(n) + 0.1 for _ in range(2)] for n in (4000, 333, 1)]
    whole = torch.cat(jacobian.stacked([list(rows) for rows in parts]), dim=1).double()
    expected = whole @ whole.T
    scale = float(expected.abs().max())
    torch.testing.assert_close(jacobian.gram_matrix(parts), expected, rtol=1e-6, atol=1e-6 * scale)


def _graddrop_matrix(k: int, n: int, dtype: torch.dtype) -> torch.Tensor:
    torch.manual_seed(k * 100 + n)
    matrix = torch.randn(k, n, dtype=dtype)
    matrix[:, 0] = 0  # 0 / 0 purity: nothing kept
    matrix[0, 1] = 0  # an exact zero entry
    matrix[:, 2] = matrix[0, 2].abs()  # one sign only: purity 1
    return matrix


@pytest.mark.parametrize("k", [1, 2, 3, 5])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("leak", [None, [0.25, 0.0, 1.0, 0.5, 0.1]])
def test_graddrop_is_torchjds_with_the_same_draws(k, dtype, leak):
    """generator: torchjd reproduces torchjd's stream and result."""
    matrix = _graddrop_matrix(k, 300, dtype)
    leak_t = None if leak is None else torch.tensor(leak[:k], dtype=dtype)
    torch.manual_seed(7)
    expected = TorchjdGradDrop(leak=leak_t)(matrix)
    torch.manual_seed(7)
    got = GradDrop(leak=leak_t, generator="torchjd")(matrix)
    # the same entries kept (exact comparisons) and summed in the same order; only the
    # sign of a zero may differ. One ulp of tolerance.
    eps = torch.finfo(dtype).eps
    torch.testing.assert_close(got, expected, rtol=eps, atol=eps)


def test_graddrop_by_column_chunks_is_graddrop_of_the_whole_matrix(monkeypatch):
    """The balancer runs GradDrop on chunks of columns of each parameter's block: on the
    CPU the draws of the chunks are the draws of one call, so the update is torchjd's on
    the whole matrix."""
    monkeypatch.setattr(jacobian, "CHUNK", 16)
    matrix = _graddrop_matrix(2, 500, torch.float32)
    blocks = [b.contiguous() for b in matrix.split([100, 1, 250, 149], dim=1)]
    torch.manual_seed(3)
    expected = TorchjdGradDrop()(matrix)
    torch.manual_seed(3)
    got = torch.cat(jacobian.columnwise(GradDrop(generator="torchjd"), blocks))
    eps = torch.finfo(torch.float32).eps  # as above: one ulp
    torch.testing.assert_close(got, expected, rtol=eps, atol=eps)


def graddrop_by_the_paper(matrix: torch.Tensor, draws: torch.Tensor, leak=None) -> torch.Tensor:
    """The paper's Algorithm 1 (lines 10-15) in float64, entry by entry: P_j = (1 +
    sum_k J_kj / sum_k |J_kj|) / 2, M_kj = [P_j > U_j][J_kj > 0] + [P_j < U_j][J_kj < 0],
    update_j = sum_k (l_k + (1 - l_k) M_kj) J_kj."""
    j = matrix.double()
    k, n = j.shape
    leak = [0.0] * k if leak is None else [float(v) for v in leak]
    out = torch.zeros(n, dtype=torch.float64)
    for c in range(n):
        col = j[:, c].tolist()
        total = sum(abs(v) for v in col)
        u = float(draws[c])
        for i, v in enumerate(col):
            if total == 0:
                mask = 0.0
            else:
                p = 0.5 * (1 + sum(col) / total)
                mask = float((p > u and v > 0) or (p < u and v < 0))
            out[c] += (leak[i] + (1 - leak[i]) * mask) * v
    return out


def _draws_away_from_the_purity(matrix: torch.Tensor, seed: int) -> torch.Tensor:
    """Uniform draws in [0, 1) on the float32 grid, moved off any column whose purity is
    within 1e-5 of the draw (there float32 and float64 purities may decide differently:
    the purity S+ / (S+ - S-) of K float32 entries errs by at most ~(K + 1) eps < 1e-5
    relative), and exact ties where the purity is exact: (1, -1) gives 0.5, one sign only
    gives 1 or 0."""
    gen = torch.Generator().manual_seed(seed)
    u = torch.randint(0, 1 << 24, (matrix.shape[1],), generator=gen).double() / (1 << 24)
    j = matrix.double()
    p = 0.5 * (1 + j.sum(0) / j.abs().sum(0))
    near = (p - u).abs() < 1e-5
    u[near] = (u[near] + 0.25) % 1.0
    return u


@pytest.mark.parametrize("k", [1, 2, 3, 5])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("leak", [None, [0.25, 0.0, 1.0, 0.5, 0.1]])
def test_graddrop_with_injected_draws_is_the_papers_mask(monkeypatch, k, dtype, leak):
    """generator: pcg64 (default) computes the paper's update exactly for the draws it is
    given, on the whole matrix and per parameter in column chunks."""
    from scenemtl.balancing import graddrop

    matrix = _graddrop_matrix(k, 300, dtype)
    if k >= 2:  # exact ties: P = 0.5 = U, P = 0 = U (one sign only, negative)
        matrix[:, 3] = 0
        matrix[0, 3], matrix[1, 3] = 1.0, -1.0
        matrix[:, 4] = -matrix[:, 4].abs() - 0.1
    draws = _draws_away_from_the_purity(matrix, seed=k)
    draws[3], draws[4] = 0.5, 0.0
    leak_t = None if leak is None else torch.tensor(leak[:k], dtype=dtype)
    expected = graddrop_by_the_paper(matrix, draws, leak_t)
    # float32: the kept entries summed in float32 instead of float64, <= K eps of sum |J|
    eps = torch.finfo(dtype).eps
    atol = k * eps * float(matrix.abs().sum(0).max())
    monkeypatch.setattr(graddrop, "Draws", GivenDraws(draws))
    got = GradDrop(leak=leak_t)(matrix)
    torch.testing.assert_close(got.double(), expected, rtol=0, atol=atol)
    # the balancer's path: each parameter's rows in chunks of 16 columns
    monkeypatch.setattr(graddrop, "CHUNK", 16)
    monkeypatch.setattr(graddrop, "Draws", GivenDraws(draws))
    parts = [[r.clone() for r in block] for block in matrix.split([100, 1, 150, 49], dim=1)]
    got = torch.cat(GradDrop(leak=leak_t).combine_rows(parts, scale=2.0))
    torch.testing.assert_close(got.double(), 2 * expected, rtol=0, atol=2 * atol)


def test_graddrop_draws_are_uniform_and_keep_with_the_purity():
    """The default stream: its draws pass a Kolmogorov-Smirnov test of uniformity, chunks
    of any size continue one stream (the same seed gives the same draws), and columns of
    purity 0.3 keep their positive entry 30 % of the time (4 standard deviations)."""
    from scipy.stats import kstest

    from scenemtl.balancing.graddrop import Draws

    torch.manual_seed(0)
    whole = Draws().take(100_000, torch.float32)
    assert kstest(whole.double().numpy(), "uniform").pvalue > 1e-4
    torch.manual_seed(0)
    draws = Draws()
    pieces = torch.cat([draws.take(m, torch.float32) for m in (1, 999, 65536, 33464)])
    assert torch.equal(pieces, whole)  # the same numbers handed out, no arithmetic
    n = 200_000
    matrix = torch.tensor([[3.0], [-7.0]]).expand(2, n).contiguous()  # P = 3 / 10
    torch.manual_seed(1)
    kept = GradDrop()(matrix)
    share = float((kept == 3.0).double().mean())
    assert set(kept.unique().tolist()) <= {3.0, -7.0}
    assert abs(share - 0.3) < 4 * (0.3 * 0.7 / n) ** 0.5
    # seeded by torch's generator: the same seed, the same masks
    torch.manual_seed(1)
    torch.testing.assert_close(GradDrop()(matrix), kept, rtol=0, atol=0)


def test_graddrop_generator_is_checked():
    with pytest.raises(UserError, match="generator"):
        build_balancer("graddrop", tasks=TASKS, generator="mt")


@pytest.mark.parametrize("method", ["pcgrad", "mgda", "graddrop"])
def test_a_second_backward_adds_to_the_gradients(method):
    """Gradient accumulation: without zeroing, the second step's update adds to the
    first's (the update is set as .grad views on the first step, added after)."""
    torch.manual_seed(0)
    layer = nn.Linear(3, 4).double()
    x = torch.randn(5, 3, dtype=torch.float64)

    def step(balancer) -> None:
        feature = layer(x)
        cut = feature.detach().requires_grad_()
        losses = torch.stack([cut[:, :2].pow(2).sum(), (cut[:, 2:] - 1).pow(2).sum()])
        balancer.backward(losses, [feature], [cut], list(layer.parameters()), [])

    balancer = build_balancer(method, tasks=TASKS)
    torch.manual_seed(1)
    step(balancer)
    once = [p.grad.clone() for p in layer.parameters()]
    torch.manual_seed(1)  # the same draws again (GradDrop, PCGrad's order)
    step(balancer)
    for p, g in zip(layer.parameters(), once, strict=True):
        # g + g in float64 is exact
        torch.testing.assert_close(p.grad, 2 * g, rtol=1e-15, atol=0)


@pytest.mark.parametrize("method", ["mean", "mgda", "pcgrad"])
def test_parameters_that_share_their_gradient_each_get_the_update(method):
    """representation = p1 + p2: autograd hands out one tensor as both gradients; each
    parameter still gets the whole update (the same as a parameter alone would)."""
    p1 = nn.Parameter(torch.zeros(3, dtype=torch.float64))
    p2 = nn.Parameter(torch.zeros(3, dtype=torch.float64))
    alone = nn.Parameter(torch.zeros(3, dtype=torch.float64))
    matrix = torch.tensor([[1.0, -2.0, 0.5], [-1.0, 0.5, 2.0]], dtype=torch.float64)

    def run(params, representation) -> None:
        cut = representation.detach().requires_grad_()
        torch.manual_seed(0)  # PCGrad's order
        build_balancer(method, tasks=TASKS).backward(
            matrix @ cut, [representation], [cut], params, []
        )

    run([p1, p2], p1 + p2)
    run([alone], alone * 1.0)
    # float64 sums of the same few terms: equal to rounding
    torch.testing.assert_close(p1.grad, alone.grad, rtol=1e-14, atol=1e-15)
    torch.testing.assert_close(p2.grad, alone.grad, rtol=1e-14, atol=1e-15)


def test_a_factor_of_the_gram_matrix():
    """F F^T = G, also for a singular G (two equal rows, a zero row); float64 eigh of a
    3 x 3 matrix: ~1e-15 relative."""
    from scenemtl.balancing.gradient import gramian_factor

    torch.manual_seed(0)
    j = torch.randn(3, 50, dtype=torch.float64)
    singular = torch.stack([j[0], j[0], torch.zeros(50, dtype=torch.float64)])
    for matrix in (j, singular):
        g = matrix @ matrix.T
        f = gramian_factor(g, g)
        torch.testing.assert_close(f @ f.T, g, rtol=0, atol=1e-12 * float(g.abs().max()))


@pytest.mark.parametrize(
    "method, name, options",
    [
        ("mean", "Mean", {}),
        ("nash_mtl", "NashMTL", {"max_norm": 1.0, "update_weights_every": 1, "optim_niter": 20}),
        ("nash_mtl", "NashMTL", {"max_norm": 0.0, "update_weights_every": 1, "optim_niter": 20}),
    ],
)
def test_weights_through_the_gram_matrix_are_torchjds_on_the_whole_matrix(method, name, options):
    """Mean and Nash-MTL get a [K, K] factor of the Gram matrix: the update is torchjd's
    aggregator on the whole Jacobian (two parameters, K = 3), over two steps (Nash-MTL's
    warm start). Tolerance: in float64 the factor reproduces J J^T to ~1e-15 relative;
    Nash-MTL's ECOS solve takes the same iterations on both, so its weights agree far
    below 1e-6 of the update's largest entry."""
    import torchjd.aggregation as aggregation

    if name == "NashMTL":
        pytest.importorskip("cvxpy")
    gen = torch.Generator().manual_seed(4)
    reference = getattr(aggregation, name)(*((3,) if name == "NashMTL" else ()), **options)
    specs = legacy_task_specs()
    three = build_tasks({**specs, "depth2": specs["depth"]})
    balancer = build_balancer(method, tasks=three, **options)
    for _ in range(2):
        matrix = torch.randn(3, 7, generator=gen, dtype=torch.float64)
        matrix[2] *= -0.3  # some conflict
        p1 = nn.Parameter(torch.zeros(4, dtype=torch.float64))
        p2 = nn.Parameter(torch.zeros(3, dtype=torch.float64))
        feature = torch.cat([p1, p2])
        cut = feature.detach().requires_grad_()
        balancer.backward(matrix @ cut, [feature], [cut], [p1, p2], [])
        expected = reference(matrix) * balancer.scale
        got = torch.cat([p1.grad, p2.grad])
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-6 * float(expected.abs().max()))


@pytest.mark.parametrize("k", [2, 3])
def test_config_from_the_gram_matrix_is_the_papers_formula(k):
    """ConFIG's update, g = (sum_i g_i . u) u with u the unit vector of pinv(U) 1 (U the
    unit rows), computed here in float64 from the whole matrix with numpy's pinv; the
    balancer computes it from the Gram matrix, on two parameters. Both are float64 with
    well-conditioned U: ~1e-13 relative. Also a zero row (its unit row is 0)."""
    import numpy as np

    specs = legacy_task_specs()
    tasks = build_tasks({**specs, **{f"depth{i}": specs["depth"] for i in range(2, k)}})[:k]
    gen = torch.Generator().manual_seed(k)
    matrix = torch.randn(k, 9, generator=gen, dtype=torch.float64)
    matrix[1] = -0.5 * matrix[0] + 0.2 * matrix[1]  # a conflict
    cases = [matrix, torch.cat([matrix[:-1], torch.zeros(1, 9, dtype=torch.float64)])]
    for j in cases:
        norms = np.linalg.norm(j.numpy(), axis=1, keepdims=True)
        units = np.divide(j.numpy(), norms, out=np.zeros_like(j.numpy()), where=norms > 0)
        best = np.linalg.pinv(units) @ np.ones(k)
        unit = best / np.linalg.norm(best)
        expected = torch.from_numpy((j.numpy() @ unit).sum() * unit)
        p1 = nn.Parameter(torch.zeros(5, dtype=torch.float64))
        p2 = nn.Parameter(torch.zeros(4, dtype=torch.float64))
        feature = torch.cat([p1, p2])
        cut = feature.detach().requires_grad_()
        build_balancer("config", tasks=tasks).backward(j @ cut, [feature], [cut], [p1, p2], [])
        got = torch.cat([p1.grad, p2.grad])
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-12 * float(expected.abs().max()))
        # the plain aggregator on the matrix: the same
        from scenemtl.balancing.exact import ConFIG

        torch.testing.assert_close(
            ConFIG()(j), expected, rtol=0, atol=1e-12 * float(expected.abs().max())
        )


def test_config_is_not_zero_on_many_float32_columns():
    """torchjd's ConFIG returns exactly 0 for float32 matrices of more than 1 / eps = 8.4 M
    columns (pinv's default cutoff max(K, n) eps > 1); ours returns the update: here two
    orthogonal rows on 9 M columns, whose ConFIG update is g1 + g2 (u along g1/|g1| +
    g2/|g2|, equal norms)."""
    from scenemtl.balancing.exact import ConFIG

    n = 9_000_000
    j = torch.zeros(2, n)
    j[0, : n // 2] = 1.0
    j[1, n // 2 :] = 1.0
    out = ConFIG()(j)
    # float32 sums of 4.5 M ones are exact; the coefficients err by ~1e-7 relative
    torch.testing.assert_close(out, j.sum(0), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("method", ["graddrop", "pcgrad"])
def test_the_gram_matrix_is_skipped_only_where_nothing_needs_it(method):
    """Off the conflict monitor's steps GradDrop (which does not use the Gram matrix)
    skips it and reports None; PCGrad needs it and reports it; the update is the same
    either way (the same draws: one seed)."""
    matrix = torch.tensor([[1.0, -2.0, 0.5, 3.0], [-1.0, 0.5, 2.0, 1.0]], dtype=torch.float64)
    results = []
    for monitor in (True, False):
        p = nn.Parameter(torch.zeros(4, dtype=torch.float64))
        feature = p * 1.0
        cut = feature.detach().requires_grad_()
        torch.manual_seed(0)
        _, gramian = build_balancer(method, tasks=TASKS).backward(
            matrix @ cut, [feature], [cut], [p], [], monitor=monitor
        )
        results.append((p.grad, gramian))
    (on, gram_on), (off, gram_off) = results
    torch.testing.assert_close(gram_on, matrix @ matrix.T, rtol=1e-14, atol=0)
    assert (gram_off is None) == (method == "graddrop")
    torch.testing.assert_close(on, off, rtol=0, atol=0)  # one computation, the same seed
