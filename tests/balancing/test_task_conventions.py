"""Gradient-level methods and the parts the papers leave to the code: tasks of weight 0,
and what the task-specific parameters get (``task_grads``), on hand-made Jacobians and a
tiny two-task network with independent closed-form solutions."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from scenemtl.balancing import (
    BALANCERS,
    TASK_GRADS_OF_AUTHORS,
    accepted_options,
    build_balancer,
    method_level,
)
from scenemtl.errors import UserError
from scenemtl.tasks import build_tasks, legacy_task_specs

TWO = build_tasks(legacy_task_specs())
THREE = build_tasks({**legacy_task_specs(), "normals": {"kind": "normals", "encoding": "rgb8"}})
GRADIENT_METHODS = [m for m in BALANCERS if method_level(m) == "gradient"]


def aggregate(method, tasks, matrix, weights=None, seed=0, **options):
    """(update, logged weights, Gram matrix) of the method for the Jacobian ``matrix``
    [K, n] of the constant-weighted losses, on one shared parameter vector."""
    balancer = build_balancer(method, weights, tasks=tasks, **options)
    param = nn.Parameter(torch.zeros(matrix.shape[1], dtype=torch.float64))
    feature = param * 1.0
    cut = feature.detach().requires_grad_()
    torch.manual_seed(seed)  # GradDrop draws
    weights, gramian = balancer.backward(matrix @ cut, [feature], [cut], [param], [])
    return param.grad, weights, gramian


# -- tasks of weight 0 -----------------------------------------------------------------


@pytest.mark.parametrize("method", GRADIENT_METHODS)
def test_a_zero_weight_task_is_left_out_of_the_aggregation(method):
    """With ``normals: 0`` the update is the method's on the other two tasks (not the
    method's on a matrix with a zero row: MGDA's min-norm point would be 0).

    Tolerance: the same aggregator on the same two rows in float64; only the zero row's
    bookkeeping differs, so the results agree to rounding (1e-9 relative is ample).
    """
    gen = torch.Generator().manual_seed(3)
    g = torch.randn(2, 5, generator=gen, dtype=torch.float64)
    g[1] = -0.6 * g[0] + 0.5 * g[1]  # conflicting
    with_zero = torch.cat([g, torch.zeros(1, 5, dtype=torch.float64)])
    update, weights, gramian = aggregate(method, THREE, with_zero, {"normals": 0.0})
    expected, expected_weights, _ = aggregate(method, TWO, g)
    torch.testing.assert_close(update, expected, rtol=1e-9, atol=1e-12)
    if expected_weights is not None:
        torch.testing.assert_close(weights[:2], expected_weights, rtol=1e-6, atol=1e-9)
        assert float(weights[2]) == 0.0
    assert float(gramian[2].abs().sum() + gramian[:, 2].abs().sum()) == 0.0
    torch.testing.assert_close(gramian[:2, :2], g @ g.T)


@pytest.mark.parametrize("method", [m for m in GRADIENT_METHODS if m != "nash_mtl"])
def test_with_one_task_left_every_method_gives_its_gradient(method):
    """Known answer: ``depth: 0`` leaves one task, whose gradient is the update, as under
    fixed weights. (Nash-MTL normalises even one gradient, by its bargaining solution.)"""
    g = torch.tensor([[0.5, -2.0, 1.0, 3.0], [0.0, 0.0, 0.0, 0.0]], dtype=torch.float64)
    update, _, _ = aggregate(method, TWO, g, {"depth": 0.0})
    torch.testing.assert_close(update, g[0], rtol=1e-6, atol=1e-9)


# -- task-specific parameters ----------------------------------------------------------


class TinyNet(nn.Module):
    """A shared linear trunk and one linear head per task, float64."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.trunk = nn.Linear(4, 3).double()
        self.heads = nn.ModuleList([nn.Linear(3, 2).double(), nn.Linear(3, 1).double()])
        gen = torch.Generator().manual_seed(1)
        self.x = torch.randn(6, 4, generator=gen, dtype=torch.float64)
        self.y = [torch.randn(6, 2, generator=gen, dtype=torch.float64) for _ in range(2)]

    def losses(self, z: torch.Tensor) -> torch.Tensor:
        """[2] a squared and an absolute error of the heads on the features ``z``."""
        first = (self.heads[0](z) - self.y[0]).square().mean()
        second = (self.heads[1](z) - self.y[1][:, :1]).abs().mean()
        return torch.stack([first, second])

    def shared(self) -> list[nn.Parameter]:
        return list(self.trunk.parameters())

    def own(self) -> list[nn.Parameter]:
        return list(self.heads.parameters())


W = {"semseg": 0.7, "depth": 2.0}


def balancer_step(method, weights=W, **options):
    """(shared .grad, heads' .grad, logged weights) of one step of the balancer."""
    net = TinyNet()
    balancer = build_balancer(method, weights, tasks=TWO, **options)
    z = net.trunk(net.x)
    cut = z.detach().requires_grad_()
    w = torch.tensor([weights.get(t.name, 1.0) for t in TWO], dtype=torch.float64)
    logged, _ = balancer.backward(w * net.losses(cut), [z], [cut], net.shared(), net.own())
    flat = lambda ps: torch.cat([p.grad.flatten() for p in ps])  # noqa: E731
    return flat(net.shared()), flat(net.own()), logged


def per_task_gradients(weights=W):
    """Rows ``grad (w_k L_k)`` on the shared and on the heads' parameters, by autograd
    one task at a time (no balancer involved)."""
    net = TinyNet()
    w = [weights.get(t.name, 1.0) for t in TWO]
    losses = net.losses(net.trunk(net.x))
    shared, own = [], []
    for k in range(2):
        grads = torch.autograd.grad(w[k] * losses[k], net.shared() + net.own(), retain_graph=True)
        flat = [g.flatten() for g in grads]
        shared.append(torch.cat(flat[: len(net.shared())]))
        own.append(torch.cat(flat[len(net.shared()) :]))
    return torch.stack(shared), torch.stack(own)


def mgda_weights(g: torch.Tensor) -> torch.Tensor:
    """Min-norm point of the segment [g1, g2], at the sum scale (x K = 2)."""
    alpha = float((g[1] - g[0]) @ g[1] / ((g[0] - g[1]) @ (g[0] - g[1])))
    alpha = min(max(alpha, 0.0), 1.0)
    return 2 * torch.tensor([alpha, 1 - alpha], dtype=torch.float64)


def imtl_weights(g: torch.Tensor) -> torch.Tensor:
    """IMTL-G: the combination a g1 + (1 - a) g2 with equal projections on the unit
    gradients, at the sum scale."""
    u = g / g.norm(dim=1, keepdim=True)
    a2 = float(g[0] @ (u[0] - u[1]) / ((g[0] - g[1]) @ (u[0] - u[1])))
    return 2 * torch.tensor([1 - a2, a2], dtype=torch.float64)


def nash_weights(g: torch.Tensor) -> torch.Tensor:
    """Nash-MTL's bargaining solution ``G a = 1 / a`` (``G = g g^T``), by Newton in
    float64. (The authors normalise ``G`` for the solver and scale back inside its
    constraints: the solution is that of ``G`` itself.)"""
    gram = (g @ g.T).numpy()
    a = np.ones(2)
    for _ in range(100):
        residual = gram @ a - 1 / a
        a = a - np.linalg.solve(gram + np.diag(1 / a**2), residual)
    return torch.from_numpy(a)


@pytest.mark.parametrize(
    "method, closed_form", [("mean", None), ("mgda", mgda_weights), ("imtl_g", imtl_weights)]
)
def test_weighted_heads_get_the_shared_updates_weights(method, closed_form):
    """``task_grads: weighted``: the heads get ``sum_k a_k grad(w_k L_k)`` with the ``a_k``
    that make the shared update ``sum_k a_k g_k`` of the same step.

    Tolerance: float64 on a network of 25 parameters; the closed forms and the
    aggregators differ by rounding only (MGDA's Frank-Wolfe is exact on a segment),
    well below 1e-9 relative.
    """
    shared_rows, own_rows = per_task_gradients()
    a = torch.ones(2, dtype=torch.float64) if closed_form is None else closed_form(shared_rows)
    assert closed_form is None or not torch.allclose(a, torch.ones(2, dtype=torch.float64))
    shared, own, logged = balancer_step(method, task_grads="weighted")
    torch.testing.assert_close(shared, a @ shared_rows, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(own, a @ own_rows, rtol=1e-9, atol=1e-12)
    w = torch.tensor([W["semseg"], W["depth"]])
    torch.testing.assert_close(logged, a.float() * w, rtol=1e-6, atol=1e-9)
    _, plain_own, _ = balancer_step(method, task_grads="plain")
    torch.testing.assert_close(plain_own, own_rows.sum(0), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("method", GRADIENT_METHODS)
def test_plain_heads_get_the_gradient_of_the_weighted_sum(method):
    """``task_grads: plain``: the heads get ``sum_k grad(w_k L_k)`` whatever the method.

    Tolerance: float64, one backward of the sum against a sum of two backwards.
    """
    _, own_rows = per_task_gradients()
    _, own, _ = balancer_step(method, task_grads="plain")
    torch.testing.assert_close(own, own_rows.sum(0), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("task_grads", ["plain", "weighted"])
def test_mean_is_fixed_under_both_conventions(task_grads):
    """Tolerance: float64, the same sums in another order."""
    shared_rows, own_rows = per_task_gradients()
    shared, own, _ = balancer_step("mean", task_grads=task_grads)
    torch.testing.assert_close(shared, shared_rows.sum(0), rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(own, own_rows.sum(0), rtol=1e-9, atol=1e-12)


def test_nash_heads_get_the_solution_before_the_norm_clip():
    """The authors backpropagate ``sum_k a_k L_k`` into everything and then clip the
    shared parameters' gradient to ``max_norm``: the heads are not clipped.

    Tolerance: the solver's iterations stop when ``a`` moves by less than 1e-6 (the
    authors' criterion), so ``a`` is known to ~1e-6 (relative, ``a`` is O(1) here);
    1e-5 of the heads' rows' norms bounds the heads' error.
    """
    shared_rows, own_rows = per_task_gradients()
    a = nash_weights(shared_rows)
    max_norm = 0.5 * float((a @ shared_rows).norm())  # the clip is active
    shared, own, _ = balancer_step(
        "nash_mtl", task_grads="weighted", max_norm=max_norm, optim_niter=100
    )
    atol = 1e-5 * float(own_rows.norm(dim=1).sum())
    torch.testing.assert_close(own, a @ own_rows, rtol=0, atol=atol)
    assert float(shared.norm()) == pytest.approx(max_norm, rel=1e-6)
    cos = float(shared @ (a @ shared_rows) / (shared.norm() * (a @ shared_rows).norm()))
    assert cos == pytest.approx(1.0, abs=1e-4)
    # and the comparison can fail: the clipped weights would be half as large
    assert not torch.allclose(own, 0.5 * a @ own_rows, rtol=0, atol=atol)


def test_each_method_defaults_to_its_authors_convention():
    for method in GRADIENT_METHODS:
        expected = TASK_GRADS_OF_AUTHORS.get(method, "plain")
        assert accepted_options(method)["task_grads"] == expected
        assert build_balancer(method, tasks=TWO).task_grads == expected
    assert build_balancer("mgda", tasks=TWO, task_grads="plain").task_grads == "plain"


@pytest.mark.parametrize(
    "method, options, fragment",
    [
        ("graddrop", {"task_grads": "weighted"}, "does not combine"),
        ("config", {"task_grads": "weighted"}, "does not combine"),
        ("mgda", {"task_grads": "scaled"}, "task_grads must be one of"),
    ],
)
def test_bad_task_grads_is_one_line(method, options, fragment):
    with pytest.raises(UserError, match=fragment) as exc:
        build_balancer(method, tasks=TWO, **options)
    assert "\n" not in str(exc.value)


def test_tiny_net_losses_are_not_degenerate():
    """The fixtures above compare something: the tasks' shared gradients conflict."""
    shared_rows, _ = per_task_gradients()
    cos = float(shared_rows[0] @ shared_rows[1]) / float(shared_rows.norm(dim=1).prod())
    assert math.isfinite(cos) and cos < 0.5
