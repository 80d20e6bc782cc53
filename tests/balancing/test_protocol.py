"""The hooks the engine calls on every balancing method (balancing/base.py), on a small
real network, each against an independent computation: the update of a weighted sum,
and the Gram matrix of per-task gradients taken one task at a time."""

from __future__ import annotations

import pytest
import torch

from scenemtl.balancing import build_balancer
from scenemtl.balancing.base import TrainingStep
from scenemtl.losses import MultiTaskLoss
from scenemtl.models import ModelConfig, build_model
from scenemtl.tasks import build_tasks, legacy_task_specs

TASKS = build_tasks(legacy_task_specs())
WEIGHTS = {"semseg": 0.7, "depth": 2.0}


def small_net():
    torch.manual_seed(0)
    cfg = ModelConfig(
        architecture="joint", encoder="resnet18", encoder_width=16, channels=8, skip_channels=4
    )
    return build_model(cfg, {"semseg": 19, "depth": 1}).eval()  # eval: BN without batch stats


def batch():
    gen = torch.Generator().manual_seed(0)
    return {
        "image": torch.randn(2, 3, 32, 48, generator=gen),
        "semseg": torch.randint(0, 19, (2, 32, 48), generator=gen),
        "depth": torch.rand(2, 32, 48, generator=gen) * 50 + 5,
    }


def engine_step(net, method: str, monitor: bool, weights=WEIGHTS, **options):
    """One step the way engine/module.py runs it: (grads, zeros where a parameter got
    none; result)."""
    net.zero_grad(set_to_none=True)
    crit = MultiTaskLoss(TASKS, build_balancer(method, weights, tasks=TASKS, **options))
    b = batch()
    shared = net.shared_forward(b["image"])
    cut = crit.weighting.cut(shared)
    out = crit(net.resize_outputs(net.decode(cut), b["image"].shape[-2:]), b)
    step = TrainingStep(
        losses=crit.weighting.weighted_losses(out.tasks),
        representation=list(shared.values()),
        cut=list(cut.values()),
        monitor=monitor,
    )
    result = crit.weighting.backward_step(out.total, step, net)
    grads = [torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in net.parameters()]
    return grads, result


def reference(net):
    """The weighted sum's update, and the Gram matrix [2, 2] of w_k grad L_k on the
    shared parameters, each task's gradient taken on its own (float64)."""
    net.zero_grad(set_to_none=True)
    b = batch()
    out = MultiTaskLoss(TASKS)(net(b["image"]), b)  # unweighted L_k
    losses = [WEIGHTS[t.name] * out.tasks[t.name] for t in TASKS]
    shared = net.shared_parameters()
    rows = []
    for loss in losses:
        grads = torch.autograd.grad(loss, shared, retain_graph=True, allow_unused=True)
        rows.append(
            torch.cat(
                [
                    (g if g is not None else torch.zeros_like(p)).flatten().double()
                    for g, p in zip(grads, shared, strict=True)
                ]
            )
        )
    sum(losses).backward()
    jac = torch.stack(rows)
    return [p.grad.clone() for p in net.parameters()], jac @ jac.T


@pytest.mark.float_paths
@pytest.mark.parametrize("method, options", [("fixed", {}), ("mean", {"wrt": "parameters"})])
def test_backward_step_is_the_weighted_sum_and_measures_the_conflict(method, options):
    """Tolerance: float32 sums of the same per-task gradients in another order, at most
    ~1e4 terms per entry of a few ulp each: ~1e-3 of the largest entry bounds the update;
    the Gram matrix sums the float64 squares of those float32 gradients, ~1e-4 relative."""
    net = small_net()
    want, gramian = reference(net)
    got, result = engine_step(net, method, monitor=True, **options)
    for a, b in zip(want, got, strict=True):
        torch.testing.assert_close(b, a, rtol=0, atol=1e-3 * (float(a.abs().max()) + 1e-12))
    assert result.gramian is not None and result.gramian.dtype == torch.float64
    torch.testing.assert_close(result.gramian, gramian, rtol=1e-4, atol=1e-8 * float(gramian.max()))
    assert float(gramian[0, 1]) != 0.0  # a real pair of gradients, not a vacuous match


def test_loss_level_measures_nothing_off_the_monitored_steps():
    _, result = engine_step(small_net(), "fixed", monitor=False)
    assert result.gramian is None and result.weights is None


def test_gradient_level_reports_its_weights():
    """mean's weights are a_k = 1 at the sum scale, times the constant weights."""
    _, result = engine_step(small_net(), "mean", monitor=False)
    torch.testing.assert_close(result.weights, torch.tensor([0.7, 2.0]))


def test_setup_hooks_of_both_levels():
    fixed = build_balancer("fixed", tasks=TASKS)
    fixed.check_setup(4, "16-mixed", has_representation=False)  # loss level: anything goes
    assert not fixed.averages_gradients
    assert build_balancer("upgrad", tasks=TASKS).averages_gradients
    shared = {"a": torch.ones(2, requires_grad=True) * 2}
    assert fixed.cut(shared)["a"] is shared["a"]
    leaf = build_balancer("upgrad", tasks=TASKS).cut(shared)["a"]
    assert leaf.is_leaf and leaf.requires_grad and leaf is not shared["a"]
