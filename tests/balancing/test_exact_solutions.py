"""MGDA, CAGrad, UPGrad, DualProj (and IMTL-G) compute what their papers define, at every
scale: each method's update through the balancer against an exact solution computed here
independently, in float64, by enumerating the active sets of the problem's KKT system in
the space of the gradients (not from the Gram matrix the methods use).

The Jacobians cover what broke torchjd's defaults: conflicting gradients, near-parallel
and near-opposite ones, a task 100x larger than another (its squared-norm share ~1e-4),
all gradients scaled by 1e-4 (a Gram trace below torchjd's norm_eps) and both at once.

Tolerances. Each exact solution solves, per active set, a linear system of the active
rows; the method solves the same problem by another route from ``G = J J^T``. Both are
backward stable in ``G``, so they agree to ``~ K eps cond`` relative to the largest
gradient, where ``cond`` is the condition number of the active rows' (normalised)
Gram matrix: at most ~1e8 for the near-parallel cases here (rows 1e-4 apart in angle),
hence an agreement of ~1e-8 of the largest gradient norm; ``RTOL = 1e-7`` leaves a
factor 10. A wrong active set, a regularised projection (torchjd's errors were 7e-3 to
0.5) or an early-stopped Frank-Wolfe (up to 2.4e-2) is 1e5 times above it.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from scenemtl.balancing import build_balancer
from scenemtl.balancing.solvers import cagrad_weights, min_norm_weights
from scenemtl.tasks import build_tasks, legacy_task_specs

RTOL = 1e-7
N = 7  # gradient dimension: > K, so K random rows are independent


def tasks(k: int):
    """K tasks (the balancers only need K names): semseg, depth and more depth tasks."""
    specs = legacy_task_specs()
    extra = {f"depth{i}": specs["depth"] for i in range(2, k)}
    return build_tasks({**specs, **extra})[:k]


def update(method: str, J: np.ndarray, **options) -> np.ndarray:
    """The shared parameters' gradient the method makes of the Jacobian ``J`` [K, n]."""
    k, n = J.shape
    balancer = build_balancer(method, tasks=tasks(k), **options)
    param = torch.nn.Parameter(torch.zeros(n, dtype=torch.float64))
    feature = param * 1.0
    cut = feature.detach().requires_grad_()
    losses = torch.from_numpy(J) @ cut  # linear losses: their Jacobian is J
    balancer.backward(losses, [feature], [cut], [param], [])
    return param.grad.numpy()


def jacobian(kind: str, k: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    J = rng.normal(size=(k, N))
    if kind == "conflicting":  # every later row has a component against the first
        J[1:] -= 1.5 * J[:1] * np.sign(J[1:] @ J[0])[:, None]
    elif kind == "near_parallel":  # rows 1e-4 apart in angle, one of them reversed
        J[1:] = J[0] + 1e-4 * J[1:]
        J[-1] *= -1 if k > 2 else 1
    elif kind == "imbalanced":  # squared-norm share of the small task ~1e-4
        J[0] *= 100.0
    elif kind == "tiny":  # Gram trace ~1e-7, below torchjd's norm_eps
        J *= 1e-4
    elif kind == "tiny_imbalanced":
        J[0] *= 100.0
        J *= 1e-4
    return J


KINDS = ["conflicting", "near_parallel", "imbalanced", "tiny", "tiny_imbalanced"]
CASES = [(kind, k, seed) for kind in KINDS for k in (2, 3, 4) for seed in (0, 1)]


def subsets(k: int):
    for size in range(1, k + 1):
        yield from itertools.combinations(range(k), size)


# -- exact solutions by enumeration -------------------------------------------------------


def min_norm_point(J: np.ndarray) -> np.ndarray:
    """The point of smallest norm in the convex hull of the rows of J.

    For every affinely independent subset S of rows, the nearest point to 0 of their affine
    hull is ``p = x + B y`` (x a row, B the differences to it, y by least squares); the
    min-norm point of the hull is the one of these that lies in the simplex of S and
    satisfies ``p . g_i >= |p|^2`` for every row (nothing beyond the hyperplane)."""
    best = None
    for S in subsets(J.shape[0]):
        x, B = J[S[0]], (J[list(S[1:])] - J[S[0]]).T
        if B.size and np.linalg.matrix_rank(B, tol=1e-10 * np.abs(J).max()) < B.shape[1]:
            continue
        y = np.linalg.lstsq(B, -x, rcond=None)[0] if B.size else np.zeros(0)
        lam = np.concatenate([[1 - y.sum()], y])
        if (lam < -1e-12).any():
            continue
        p = x + B @ y if B.size else x
        if best is None or p @ p < best @ best:
            best = p
    return best


def project_on_dual_cone(J: np.ndarray, y: np.ndarray) -> np.ndarray:
    """argmin_{x : J x >= 0} |x - y|: for each set A of active rows with independent rows,
    ``x = y + J_A^T lam`` with ``J_A x = 0``; the solution has ``lam >= 0`` and
    ``J x >= 0``, and is the nearest such candidate to y."""
    best = None if (J @ y < 0).any() else y
    if best is not None:
        return best
    scale = np.abs(J).max(axis=1)
    for A in subsets(J.shape[0]):
        if (scale[list(A)] == 0).any():  # a zero row constrains nothing
            continue
        JA = J[list(A)]
        if np.linalg.matrix_rank(JA / scale[list(A), None], tol=1e-12) < len(A):
            continue
        lam = np.linalg.solve(JA @ JA.T, -(JA @ y))
        x = y + JA.T @ lam
        norms = np.linalg.norm(J, axis=1) * np.linalg.norm(y)
        if (lam < 0).any() or (J @ x < -1e-9 * norms).any():
            continue
        if best is None or np.linalg.norm(x - y) < np.linalg.norm(best - y):
            best = x
    return best


def cagrad_direction(J: np.ndarray, c: float) -> tuple[np.ndarray, float]:
    """CAGrad's ``d = argmax_{|d - g0| <= c |g0|} min_i g_i . d`` and its value.

    Every candidate below is feasible (in the ball), so the best one is the optimum as soon
    as the optimum is among them. At the optimum ``d - g0 = rho g_w / |g_w|`` with ``g_w``
    in the cone of a linearly independent set S of rows (Caratheodory) and
    ``g_i . d = lam`` on S (the dual's stationarity on its face): for each S, ``d - g0 =
    J_S^T v`` with ``G_S v = lam 1 - J_S g0`` and ``|J_S^T v| = rho``, a quadratic in lam.
    """
    k = J.shape[0]
    g0 = J.mean(axis=0)
    rho = c * np.linalg.norm(g0)
    best_val, best_d = -np.inf, None
    # when 0 is in the hull the optimum may have g_w = 0: value 0, reached (among others)
    # by the point of the dual cone nearest to g0, if the ball holds it
    x = project_on_dual_cone(J, g0)
    if np.linalg.norm(x - g0) <= rho:
        best_val, best_d = (J @ x).min(), x
    for S in subsets(k):
        JS = J[list(S)]
        # d must satisfy J_S d = lam 1 and d - g0 = rho * J_S^T w / |J_S^T w| with 1^T w = 1
        # Parametrise d - g0 = J_S^T v (v = rho w / t): J_S g0 + G_S v = lam 1, 1^T v = rho / t,
        # |J_S^T v| = rho. Solve v = a + lam b, then |J_S^T v|^2 = rho^2 is a quadratic in lam.
        GS = JS @ JS.T
        if np.linalg.matrix_rank(GS, tol=1e-12 * np.abs(GS).max()) < len(S):
            continue
        a = np.linalg.solve(GS, -(JS @ g0))
        b = np.linalg.solve(GS, np.ones(len(S)))
        qa, qb = JS.T @ a, JS.T @ b
        roots = np.roots([qb @ qb, 2 * qa @ qb, qa @ qa - rho**2])
        for lam in roots[np.isreal(roots)].real:
            v = a + lam * b
            if v.sum() <= 0 or (v < -1e-12 * np.abs(v).max()).any():
                continue
            d = g0 + JS.T @ v
            val = (J @ d).min()
            if val > best_val:
                best_val, best_d = val, d
    return best_d, best_val


# -- the methods against them ---------------------------------------------------------------


def assert_close(got: np.ndarray, want: np.ndarray, J: np.ndarray) -> None:
    scale = np.linalg.norm(J, axis=1).max()
    err = np.linalg.norm(got - want) / scale
    assert err <= RTOL, f"relative error {err:.2e}"


@pytest.mark.parametrize("kind, k, seed", CASES)
def test_mgda_is_the_min_norm_point(kind, k, seed):
    J = jacobian(kind, k, seed)
    assert_close(update("mgda", J), k * min_norm_point(J), J)


@pytest.mark.parametrize("kind, k, seed", CASES)
def test_upgrad_averages_the_exact_projections_of_the_rows(kind, k, seed):
    J = jacobian(kind, k, seed)
    want = sum(project_on_dual_cone(J, g) for g in J)  # K x the mean of the projections
    assert_close(update("upgrad", J), want, J)


@pytest.mark.parametrize("kind, k, seed", CASES)
def test_dualproj_is_the_exact_projection_of_the_mean(kind, k, seed):
    J = jacobian(kind, k, seed)
    assert_close(update("dualproj", J), k * project_on_dual_cone(J, J.mean(axis=0)), J)


@pytest.mark.parametrize("c", [0.4, 0.9])
@pytest.mark.parametrize("kind, k, seed", CASES)
def test_cagrad_is_the_conflict_averse_direction(kind, k, seed, c):
    J = jacobian(kind, k, seed)
    d, value = cagrad_direction(J, c)
    got = update("cagrad", J, c=c) * (1 + c) / k  # undo the sum-scale factor
    assert_close(got, d, J)
    # the worst task's rate of improvement is the optimum's
    scale = np.linalg.norm(J, axis=1).max() ** 2
    assert abs((J @ got).min() - value) <= RTOL * scale
    # and it is never a silent zero (torchjd's norm_eps): the ball excludes 0 for c < 1
    assert np.linalg.norm(got) >= (1 - c) * np.linalg.norm(J.mean(axis=0)) * (1 - 1e-9)


def test_cagrad_duality_gap_closes():
    """Weak duality: min_i g_i . d <= F(w) for every feasible pair; equal only at the
    optimum. The weights the solver returns certify themselves."""
    rng = np.random.default_rng(7)
    for _ in range(20):
        k = int(rng.integers(2, 6))
        J = rng.normal(size=(k, N)) * np.exp(rng.normal(size=(k, 1)) * 3)
        G = J @ J.T
        weights = cagrad_weights(G, 0.5)
        d = weights @ J
        g0 = J.mean(axis=0)
        rho = 0.5 * np.linalg.norm(g0)
        w = weights - 1 / k
        gw = (w / w.sum()) @ J
        dual = gw @ g0 + rho * np.linalg.norm(gw)
        scale = np.linalg.norm(J, axis=1).max() * np.linalg.norm(g0)
        assert abs(np.linalg.norm(d - g0) - rho) <= 1e-9 * np.linalg.norm(g0)
        assert abs((J @ d).min() - dual) <= 1e-9 * scale


def test_mgda_at_any_number_of_tasks():
    """K = 12 with duplicated and zero-free rows: the min-norm certificate holds
    (``p . g_i >= |p|^2`` for every row, p in the hull)."""
    rng = np.random.default_rng(3)
    J = rng.normal(size=(12, 30)) * np.exp(rng.normal(size=(12, 1)))
    J[5] = J[2]
    w = min_norm_weights(J @ J.T)
    p = w @ J
    assert (w >= 0).all() and abs(w.sum() - 1) < 1e-12
    assert (J @ p >= p @ p - 1e-10 * np.linalg.norm(J, axis=1).max() ** 2).all()


@pytest.mark.parametrize("method", ["mgda", "cagrad", "upgrad", "dualproj"])
def test_every_scale_gives_the_same_direction(method):
    """The methods are positively homogeneous in J: 1e-6 x the gradients, 1e-6 x the update
    (torchjd's norm_eps turned CAGrad's into 0 and UPGrad's into the mean)."""
    J = jacobian("conflicting", 3, 5)
    big, small = update(method, J), update(method, 1e-6 * J)
    np.testing.assert_allclose(small * 1e6, big, rtol=0, atol=RTOL * np.abs(J).max())
    assert np.linalg.norm(big) > 0.01 * np.abs(J).max()


@pytest.mark.parametrize("kind, k, seed", CASES)
def test_imtl_g_closed_form(kind, k, seed):
    """IMTL-G (Liu et al., 2021): d = J^T a with equal projections of d on every unit
    gradient, sum a = 1; i.e. a = G^-1 D / (1^T G^-1 D), D the gradient norms."""
    J = jacobian(kind, k, seed)
    if kind == "near_parallel":  # G^-1 amplifies rounding by 1e8: the comparison is moot
        return
    G = J @ J.T
    a = np.linalg.solve(G, np.sqrt(np.diag(G)))
    d = (a / a.sum()) @ J
    unit = J / np.linalg.norm(J, axis=1, keepdims=True)
    assert np.ptp(unit @ d) <= 1e-9 * np.linalg.norm(d)  # the defining property
    assert_close(update("imtl_g", J) / k, d, J)


def degenerate(kind: str) -> np.ndarray:
    rng = np.random.default_rng(11)
    J = rng.normal(size=(4, N))
    if kind == "duplicate":
        J[2] = J[1]
    elif kind == "zero_row":
        J[3] = 0.0
    elif kind == "opposite":
        J[1] = -0.5 * J[0]
    elif kind == "too_many_tasks":  # 5 rows in 2 dimensions: 0 may be in the hull
        J = rng.normal(size=(5, 2))
    return J


@pytest.mark.parametrize("scale", [1.0, 1e-6])
@pytest.mark.parametrize("kind", ["duplicate", "zero_row", "opposite", "too_many_tasks"])
def test_singular_gram_matrices_keep_the_optimality_certificates(kind, scale):
    """Rank-deficient G (no exact solution is unique in w there, so no enumeration): each
    update satisfies the optimality conditions of its problem, checked in the space of the
    gradients. Tolerance: as for RTOL, relative to the largest |g_i|^2."""
    J = degenerate(kind) * scale
    k = J.shape[0]
    tol = RTOL * np.linalg.norm(J, axis=1).max() ** 2
    # MGDA: p in the hull (weights on the simplex by construction) and p . g_i >= |p|^2
    p = update("mgda", J) / k
    assert (J @ p >= p @ p - tol).all()
    # DualProj: x = J^T v feasible, v - u >= 0, complementary slackness
    for method, targets in [("dualproj", [J.mean(axis=0)]), ("upgrad", list(J / k))]:
        want = sum(project_on_dual_cone(J, y) for y in targets) if kind != "opposite" else None
        got = update(method, J) / k
        assert (J @ got >= -tol).all()
        if want is not None:  # the enumeration needs independent active rows
            assert_close(got, want, J)
    # CAGrad: in the ball, and its worst rate is the optimum's (d itself may not be unique
    # when g_w = 0 at the optimum, the value is)
    c = 0.4
    d = update("cagrad", J, c=c) * (1 + c) / k
    g0 = J.mean(axis=0)
    assert np.linalg.norm(d - g0) <= c * np.linalg.norm(g0) * (1 + 1e-9)
    assert abs((J @ d).min() - cagrad_direction(J, c)[1]) <= tol


def test_bf16_representation_gradients_are_weighted_from_their_exact_gram_matrix():
    """Under bf16 autocast the representation's Jacobian rows are bf16: the method must
    weight them from their float64 Gram matrix (computed in bf16, ~3 significant digits,
    the min-norm weights of these conflicting rows were off by 3.7e-3). Reference: the
    exact min-norm point of the same bf16-rounded rows."""
    J = jacobian("conflicting", 3, 0)
    rows = torch.from_numpy(J).to(torch.bfloat16)
    balancer = build_balancer("mgda", tasks=tasks(3), wrt="representation")
    param = torch.nn.Parameter(torch.zeros(J.shape[1]))
    feature = (param * 1.0).to(torch.bfloat16)
    cut = feature.detach().requires_grad_()
    losses = (rows.float() @ cut.float()).float()  # the Jacobian at the cut: bf16 rows
    weights, _ = balancer.backward(losses, [feature], [cut], [param], [])
    exact = rows.double().numpy()
    # the reference's weights: the min-norm point as a combination of the (independent) rows
    want = np.linalg.lstsq(exact.T, min_norm_point(exact), rcond=None)[0]
    # scale K: identical rows give K g; float32 weights from a float64 Gram matrix
    np.testing.assert_allclose(weights.double().numpy() / 3, want, rtol=0, atol=1e-5)
