"""Exact small quadratic programs of the gradient-level methods (MGDA, CAGrad, UPGrad,
DualProj), on the K x K Gram matrix ``G = J J^T`` of the task gradients (rows of ``J``).

Every problem here is solved exactly up to float64 rounding, at any scale of ``G``:

* each solver first removes the scale (divides ``G`` by its largest diagonal entry, or
  normalises it to a correlation matrix where the problem allows it), so a step whose
  gradients are all 1e-8 gets the same weights as one whose gradients are 1;
* the combinatorial part (which constraints are active) is found by the Lawson-Hanson
  active-set method for non-negative least squares, which terminates after finitely many
  steps with the exact active set; each step solves the linear system of its active set by
  SVD least squares, so singular (parallel, duplicated, zero) gradients need no
  regularisation;
* no epsilon is added to ``G`` and there is no iteration cap that cuts a solve short
  (the caps below are far above the finite number of steps the methods take and are only
  a guard against a cycle caused by rounding).

All functions take and return float64 numpy arrays.
"""

from __future__ import annotations

import numpy as np

EPS = float(np.finfo(np.float64).eps)


def nnls_gram(H: np.ndarray, f: np.ndarray) -> np.ndarray:
    """``argmin_{x >= 0} x^T H x / 2 - f^T x`` for a PSD ``H`` (Lawson-Hanson, Gram form).

    This is non-negative least squares ``min_{x>=0} |A x - b|^2`` written with ``H = A^T A``
    and ``f = A^T b`` only (Bro & de Jong's "fast NNLS"). The passive (free) set grows one
    index at a time by the most violated optimality condition; a step that would make a
    free variable negative stops at the boundary and frees the variable. When ``H`` is
    singular the solution ``x`` may be non-unique; ``H x`` (the fitted vector) is unique.

    Args:
        H: [K, K] symmetric positive semi-definite.
        f: [K].

    Returns:
        [K] the minimiser, ``x >= 0``; KKT holds to ~K eps (|H| |x| + |f|).
    """
    k = f.shape[0]
    x = np.zeros(k)
    passive = np.zeros(k, dtype=bool)
    blocked = np.zeros(k, dtype=bool)  # see the rounding guard below
    scale = np.abs(H).max(initial=0.0)
    for _ in range(10 * k + 10):  # Lawson-Hanson needs far fewer; a guard against cycling
        grad = f - H @ x  # minus the gradient: > 0 means raising x_j lowers the cost
        tol = 64 * k * EPS * (scale * np.abs(x).max(initial=0.0) + np.abs(f).max(initial=0.0))
        free = ~passive & ~blocked & (grad > tol)
        if not free.any():
            break
        j = int(np.argmax(np.where(free, grad, -np.inf)))
        passive[j] = True
        moved = False
        while True:
            idx = np.flatnonzero(passive)
            s = np.zeros(k)
            s[idx] = np.linalg.lstsq(H[np.ix_(idx, idx)], f[idx], rcond=None)[0]
            if (s[idx] > 0).all():
                x, moved = s, True
                break
            if not moved and s[j] <= 0:
                # In exact arithmetic the entering variable is positive (the key lemma of
                # Lawson & Hanson's NNLS); rounding can break that when column j is nearly a
                # combination of the free ones. Entering it again would cycle: block it
                # until the free set changes.
                passive[j] = False
                blocked[j] = True
                break
            # step from x towards s until the first free variable reaches 0, and fix it
            bad = idx[s[idx] <= 0]
            ratios = x[bad] / (x[bad] - s[bad])
            x = x + ratios.min() * (s - x)
            leaving = passive & (x <= 0)
            leaving[bad[np.argmin(ratios)]] = True
            passive &= ~leaving
            x[~passive] = 0.0
            moved = True
            if not passive.any():
                break
        if moved:
            blocked[:] = False
    return x


def _psd(G: np.ndarray) -> np.ndarray:
    """The nearest symmetric PSD matrix (eigenvalues clipped at 0): undoes the rounding
    that can make a Gram matrix of parallel gradients slightly indefinite."""
    G = (G + G.T) / 2
    vals, vecs = np.linalg.eigh(G)
    if vals.min(initial=0.0) >= 0:
        return G
    return (vecs * np.clip(vals, 0, None)) @ vecs.T


def _normalised(G: np.ndarray) -> np.ndarray | None:
    """``G`` divided by its largest diagonal entry (PSD-cleaned), None when ``G`` is 0.

    The solutions of MGDA and CAGrad are invariant to this division (their weights do not
    change when all gradients are scaled alike)."""
    G = np.asarray(G, dtype=np.float64)
    top = float(np.max(np.diag(G), initial=0.0))
    if not (np.isfinite(G).all() and top > 0):
        return None
    return _psd(G / top)


def min_norm_weights(G: np.ndarray) -> np.ndarray:
    """MGDA: ``argmin_{w in simplex} w^T G w`` (the min-norm point of the convex hull of
    the gradients is ``J^T w``).

    Solved as one NNLS: ``min_{z>=0} |J^T z|^2 + (1^T z - 1)^2`` has the minimiser
    ``z = w* / (1 + nu)`` (``nu`` the min squared norm), since for a fixed ``s = 1^T z`` the
    best ``z`` is ``s w*`` and ``s^2 nu + (s - 1)^2`` is smallest at ``s = 1 / (1 + nu)``.
    Its Gram form is ``H = G + 1 1^T``, ``f = 1``; ``w* = z / 1^T z``.

    Args:
        G: [K, K] Gram matrix.

    Returns:
        [K] weights on the simplex (uniform when every gradient is 0).
    """
    k = G.shape[0]
    Gn = _normalised(G)
    if Gn is None:
        return np.full(k, 1.0 / k)
    z = nnls_gram(Gn + 1.0, np.ones(k))
    return z / z.sum()


def dual_cone_weights(G: np.ndarray, U: np.ndarray) -> np.ndarray:
    """Weights of the projections onto the dual cone ``{x : J x >= 0}``.

    For each row ``u`` of ``U``, ``v`` with ``J^T v = argmin_{x : J x >= 0} |x - J^T u|``,
    i.e. (Quinton & Rey, Prop. 1) ``v = argmin_{v >= u} v^T G v``. With ``v = u + z`` that
    is the NNLS ``min_{z >= 0} z^T G z / 2 + (G u)^T z``.

    The cone does not change when a row of ``J`` is scaled by a positive factor, so the
    problem is solved on the unit-norm rows (``G`` becomes the correlation matrix ``C``) and
    mapped back: a task whose gradient is 1e-4 of another's counts exactly as much for the
    cone as in the paper. Zero rows constrain nothing; their entry of ``v`` stays ``u``'s.

    Args:
        G: [K, K] Gram matrix.
        U: [..., K] weights of the vectors to project.

    Returns:
        [..., K] the projections' weights.
    """
    G = np.asarray(G, dtype=np.float64)
    U = np.asarray(U, dtype=np.float64)
    V = U.copy()
    if not np.isfinite(G).all():  # non-finite gradients: nothing to project, J^T v is too
        return V
    d = np.diag(G).copy()
    live = d > 0
    if not live.any():
        return V
    r = np.sqrt(d[live])
    C = G[np.ix_(live, live)] / np.outer(r, r)
    C = _psd(np.clip(C, -1.0, 1.0))
    for index in np.ndindex(U.shape[:-1]):
        b = U[index][live] * r  # weights of the same vector on the unit rows
        top = np.abs(b).max()
        if top == 0:
            continue
        b = b / top  # the projection is positively homogeneous
        z = nnls_gram(C, -(C @ b))
        V[(*index, np.flatnonzero(live))] = (b + z) * top / r
    return V


def cagrad_weights(G: np.ndarray, c: float) -> np.ndarray:
    """CAGrad (Liu et al., 2021): weights of ``d = g0 + rho g_w / |g_w|``.

    ``g0 = J^T 1/K`` is the mean gradient, ``rho = c |g0|`` and ``w`` minimises the dual
    ``F(w) = g_w . g0 + rho |g_w|`` over the simplex (``g_w = J^T w``). The weights are
    ``1/K + rho w / |g_w|``, the same for any common scale of the gradients.

    The dual is solved exactly: with ``t = |g_w|`` fixed, ``w`` minimises
    ``|g_w + (t / rho) g0|^2`` over the simplex, an MGDA problem on shifted gradients
    (:func:`min_norm_weights`); ``|g_{w(t)}| / t`` decreases in ``t`` and equals 1 at the
    optimum. On a fixed support ``S`` the stationary point of ``F`` has a closed form
    (``w = m + (t / rho) q`` with ``m`` the affine min-norm point of ``S``, ``q`` the
    ``g0``-direction, and ``t^2 = m^T G m / (1 - q^T G q / rho^2)``). The search visits
    supports from ``w(t)`` and stops at the first closed form that satisfies the KKT
    conditions of ``F``; bisection on ``t`` guarantees progress.

    When the optimum has ``g_w = 0`` (0 in the convex hull of the gradients and no
    direction of it steep enough against ``g0``), ``d`` is not unique; the one closest to
    ``g0``, the projection of ``g0`` onto the dual cone, is returned.

    Args:
        G: [K, K] Gram matrix.
        c: radius factor, >= 0.

    Returns:
        [K] weights (sum ``1 + rho / |g_w|``; ``(1 + c)`` times the mean for agreeing rows).
    """
    k = G.shape[0]
    u = np.full(k, 1.0 / k)
    Gn = _normalised(G)
    if Gn is None:
        return u
    a = Gn @ u
    g0sq = float(u @ a)
    # a mean gradient below rounding of the largest one: nothing to steer, d = g0
    if c == 0 or g0sq <= 64 * k * EPS:
        return u
    rho = c * np.sqrt(g0sq)

    def inner(t: float) -> np.ndarray:
        s = t / rho
        shifted = Gn + s * (a[:, None] + a[None, :]) + s * s * g0sq
        return min_norm_weights(shifted)

    def norm(w: np.ndarray) -> float:
        return float(np.sqrt(max(w @ Gn @ w, 0.0)))

    def kkt(w: np.ndarray, t: float) -> bool:
        grad = a + (rho / t) * (Gn @ w)
        on = w > 0
        level = grad[on].mean()
        slack = 1e3 * k * EPS * (np.abs(a).max() + rho)
        return bool(np.abs(grad[on] - level).max() <= slack and (grad[~on] >= level - slack).all())

    # G fixes |g_w|^2 only to ~K eps (relative to the largest |g_i|^2), so |g_w| below
    # ~sqrt(K eps) is indistinguishable from 0: the case g_w = 0 below
    tiny = float(np.sqrt(64 * k * EPS))
    lo, hi = tiny, 1.0  # |g_w(t)| / t >= 1 at lo, <= 1 at hi (every |g_i| <= 1)
    w_lo = inner(lo)
    if norm(w_lo) < lo:
        return dual_cone_weights(G, u)
    t = np.sqrt(lo * hi)
    w = w_lo
    for _ in range(200):  # bisection alone would need ~60 steps to reach rounding
        w = inner(t)
        candidate = _cagrad_on_support(Gn, a, rho, w > 0)
        if candidate is not None:
            wc, tc = candidate
            if tc > tiny and (wc >= 0).all() and kkt(wc, tc):
                return u + (rho / tc) * wc
        if norm(w) >= t:
            lo = t
        else:
            hi = t
        if hi - lo <= 4 * EPS * hi:
            break
        # the support's fixed point is the next guess when it lies in the bracket
        inside = candidate is not None and lo < candidate[1] < hi
        t = candidate[1] if inside else np.sqrt(lo * hi)
    return u + (rho / max(norm(w), tiny)) * w


def _cagrad_on_support(
    G: np.ndarray, a: np.ndarray, rho: float, support: np.ndarray
) -> tuple[np.ndarray, float] | None:
    """The stationary point of CAGrad's dual on the affine hull of ``support``, or None."""
    idx = np.flatnonzero(support)
    n = idx.size
    kkt = np.zeros((n + 1, n + 1))
    kkt[:n, :n] = G[np.ix_(idx, idx)]
    kkt[:n, n] = kkt[n, :n] = 1.0
    rhs = np.zeros((n + 1, 2))
    rhs[n, 0] = 1.0  # m: G m + mu 1 = 0, 1^T m = 1
    rhs[:n, 1] = -a[idx]  # q: G q + eta 1 = -a, 1^T q = 0
    sol = np.linalg.lstsq(kkt, rhs, rcond=None)[0]
    m, q = sol[:n, 0], sol[:n, 1]
    Gs = G[np.ix_(idx, idx)]
    mm, qq = float(m @ Gs @ m), float(q @ Gs @ q)
    denom = 1.0 - qq / rho**2
    if not (mm > 0 and denom > 0):
        return None
    t = float(np.sqrt(mm / denom))
    w = np.zeros(G.shape[0])
    w[idx] = m + (t / rho) * q
    return w, t
