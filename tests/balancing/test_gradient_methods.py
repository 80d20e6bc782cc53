"""Gradient-level balancing: known answers on hand-made Jacobians, the sum-scale
convention, mean == fixed through a real network, and state across checkpoints."""

from __future__ import annotations

import pytest
import torch

from scenemtl.balancing import BALANCERS, build_balancer, method_level
from scenemtl.errors import UserError
from scenemtl.losses import MultiTaskLoss
from scenemtl.models import ModelConfig, build_model
from scenemtl.tasks import build_tasks, legacy_task_specs

TASKS = build_tasks(legacy_task_specs())
GRADIENT_METHODS = [m for m in BALANCERS if method_level(m) == "gradient"]


def aggregate(method: str, matrix: torch.Tensor, **options) -> torch.Tensor:
    """What the method makes of the Jacobian ``matrix`` [K, n] (rows: w_k grad L_k), on
    one shared parameter vector."""
    balancer = build_balancer(method, tasks=TASKS, **options)
    param = torch.nn.Parameter(torch.zeros(matrix.shape[1], dtype=torch.float64))
    feature = param * 1.0  # the "representation": identity of the parameters
    cut = feature.detach().requires_grad_()
    losses = matrix.to(torch.float64) @ cut  # linear losses: their Jacobian is `matrix`
    balancer.backward(losses, [feature], [cut], [param], [])
    return param.grad


@pytest.mark.parametrize("method", [m for m in GRADIENT_METHODS if m != "nash_mtl"])
def test_agreeing_tasks_give_the_sum_of_their_gradients(method):
    """The scale convention: identical task gradients g give K g, like fixed weights."""
    g = torch.tensor([0.5, -2.0, 1.0, 3.0])
    out = aggregate(method, torch.stack([g, g]))
    torch.testing.assert_close(out, 2 * g.double(), rtol=1e-5, atol=1e-6)


def test_pcgrad_projects_each_gradient_off_the_other_when_they_conflict():
    g1 = torch.tensor([1.0, 0.0, 1.0], dtype=torch.float64)
    g2 = torch.tensor([-1.0, 1.0, 0.0], dtype=torch.float64)  # g1.g2 = -1 < 0
    p1 = g1 - (g1 @ g2) / (g2 @ g2) * g2
    p2 = g2 - (g2 @ g1) / (g1 @ g1) * g1
    torch.testing.assert_close(aggregate("pcgrad", torch.stack([g1, g2])), p1 + p2)
    # no conflict: plain sum
    g3 = torch.tensor([1.0, 1.0, 0.0], dtype=torch.float64)
    torch.testing.assert_close(aggregate("pcgrad", torch.stack([g1, g3])), g1 + g3)


def test_mgda_two_tasks_closed_form():
    """Min-norm point of the segment [g1, g2]: alpha = (g2 - g1).g2 / |g1 - g2|^2."""
    g1 = torch.tensor([2.0, 0.0, 1.0], dtype=torch.float64)
    g2 = torch.tensor([-1.0, 1.5, 0.0], dtype=torch.float64)
    alpha = float((g2 - g1) @ g2 / ((g1 - g2) @ (g1 - g2)))
    assert 0 < alpha < 1
    expected = 2 * (alpha * g1 + (1 - alpha) * g2)  # K x the min-norm point
    # the solver is exact: agreement to float64 rounding (see test_exact_solutions.py)
    torch.testing.assert_close(
        aggregate("mgda", torch.stack([g1, g2])), expected, rtol=1e-10, atol=1e-12
    )


def small_net(architecture: str):
    torch.manual_seed(0)
    # 16 wide (0.7 M instead of 11 M encoder parameters): the same paths, and the Jacobian
    # of `mean` with respect to the parameters stays small
    cfg = ModelConfig(
        architecture=architecture, encoder="resnet18", encoder_width=16, channels=8, skip_channels=4
    )
    return build_model(cfg, {"semseg": 19, "depth": 1}).eval()  # eval: BN without batch stats


def batch(seed: int = 0, n: int = 2):
    gen = torch.Generator().manual_seed(seed)
    return {
        "image": torch.randn(n, 3, 32, 48, generator=gen),
        "semseg": torch.randint(0, 19, (n, 32, 48), generator=gen),
        "depth": torch.rand(n, 32, 48, generator=gen) * 50 + 5,
    }


def gradients(net, method: str, weights: dict | None = None, **options) -> list[torch.Tensor]:
    """One step's .grad of every parameter, through the path the module takes."""
    net.zero_grad(set_to_none=True)
    crit = MultiTaskLoss(TASKS, build_balancer(method, weights, tasks=TASKS, **options))
    b = batch()
    shared = net.shared_forward(b["image"])
    gradient_level = crit.weighting.level == "gradient"
    cut = {k: v.detach().requires_grad_() for k, v in shared.items()} if gradient_level else shared
    outputs = net.resize_outputs(net.decode(cut), b["image"].shape[-2:])
    out = crit(outputs, b)
    if gradient_level:
        weighted = torch.stack(
            [out.tasks[t.name] * w for t, w in zip(TASKS, crit.weighting.base_weights, strict=True)]
        )
        crit.weighting.backward(
            weighted,
            list(shared.values()),
            list(cut.values()),
            net.shared_parameters(),
            net.task_parameters(),
        )
    else:
        out.total.backward()
    return [p.grad.clone() for p in net.parameters()]


@pytest.mark.float_paths
@pytest.mark.parametrize("wrt", ["parameters", "representation"])
@pytest.mark.parametrize("architecture", ["joint", "branched", "distillation"])
def test_mean_is_fixed_weights(architecture, wrt):
    """``mean`` and ``fixed`` give the same update, for any constant weights.

    Tolerance: both are float32 sums of the same per-task gradients in another order (the
    fixed path backpropagates w1 L1 + w2 L2 at once); rounding of a few ulp per reduction
    over at most ~1e4 terms bounds the relative difference by ~1e-3 of the largest
    gradient entry, far below what a wrong weight or a missing task would change.
    """
    net = small_net(architecture)
    weights = {"semseg": 0.7, "depth": 2.0}
    fixed = gradients(net, "fixed", weights)
    mean = gradients(net, "mean", weights, wrt=wrt)
    for a, b in zip(fixed, mean, strict=True):
        scale = float(a.abs().max()) + 1e-12
        torch.testing.assert_close(b, a, rtol=0, atol=1e-3 * scale)
    # and the comparison can fail: another weight changes the update
    other = gradients(net, "fixed", {"semseg": 0.7, "depth": 1.0})
    assert any(
        not torch.allclose(a, b, atol=1e-3 * float(a.abs().max()))
        for a, b in zip(other, mean, strict=True)
    )


def test_representation_mode_needs_a_shared_representation():
    balancer = build_balancer("upgrad", tasks=TASKS, wrt="representation")
    with pytest.raises(UserError, match="no shared representation"):
        balancer.check_setup(1, "32-true", has_representation=False)
    with pytest.raises(UserError, match="16-mixed"):
        build_balancer("pcgrad", tasks=TASKS).check_setup(1, "16-mixed", True)
    build_balancer("pcgrad", tasks=TASKS).check_setup(1, "bf16-mixed", True)
    with pytest.raises(UserError, match="across processes"):
        build_balancer("graddrop", tasks=TASKS, wrt="representation").check_setup(
            2, "32-true", True
        )
    build_balancer("upgrad", tasks=TASKS, wrt="representation").check_setup(2, "32-true", True)


@pytest.mark.parametrize(
    "method, options, fragment",
    [
        ("pcgrad", {"wrt": "encoder"}, "wrt must be one of"),
        ("pcgrad", {"beta": 0.5}, "does not take"),
        ("cagrad", {"c": "x"}, "cagrad|CAGrad"),
        ("gradnorm", {}, "unknown loss weighting"),
    ],
)
def test_bad_methods_and_options_fail_in_one_line(method, options, fragment):
    with pytest.raises(UserError, match=fragment):
        build_balancer(method, tasks=TASKS, **options)


@pytest.mark.parametrize(
    "method, options", [("gradvac", {}), ("nash_mtl", {"update_weights_every": 3})]
)
def test_aggregator_state_survives_a_state_dict_round_trip(method, options):
    """Stateful aggregators continue where they were after a checkpoint (GradVac's running
    cosines; Nash-MTL's weights, reused between updates)."""
    gen = torch.Generator().manual_seed(1)
    steps = [torch.randn(2, 6, generator=gen, dtype=torch.float64) for _ in range(4)]

    def run(balancer, matrices):
        outs = []
        for m in matrices:
            p = torch.nn.Parameter(torch.zeros(6, dtype=torch.float64))
            feature = p * 1.0
            cut = feature.detach().requires_grad_()
            balancer.backward(m @ cut, [feature], [cut], [p], [])
            outs.append(p.grad)
        return outs

    straight = run(build_balancer(method, tasks=TASKS, **options), steps)
    first = build_balancer(method, tasks=TASKS, **options)
    run(first, steps[:2])
    resumed = build_balancer(method, tasks=TASKS, **options)
    resumed.load_state_dict(first.state_dict())
    for a, b in zip(straight[2:], run(resumed, steps[2:]), strict=True):
        torch.testing.assert_close(a, b)
    fresh = run(build_balancer(method, tasks=TASKS, **options), steps[2:])
    assert not all(torch.allclose(a, b) for a, b in zip(straight[2:], fresh, strict=True))
