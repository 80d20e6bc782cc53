"""The configured optimizer runs its fused kernel and updates like the reference one."""

from __future__ import annotations

import pytest
import torch

from scenemtl.engine.module import MultiTaskModule

# 16-wide encoders, as the tiny runs have (tests/helpers.py): the same optimizer paths over
# 0.8 M instead of 11 M parameters
NET = {
    "architecture": "joint",
    "encoder": "resnet18",
    "encoder_width": 16,
    "channels": 16,
    "skip_channels": 8,
}
KINDS = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW}


@pytest.mark.float_paths
@pytest.mark.parametrize("name", sorted(KINDS))
def test_optimizer_is_fused_and_steps_like_the_reference(name):
    torch.manual_seed(0)
    module = MultiTaskModule(
        net=NET, optimizer=name, lr=1e-2, weight_decay=1e-4, loss_weighting="uncertainty"
    )
    fused = module.make_optimizer()
    assert all(group["fused"] for group in fused.param_groups)
    params = [p for group in fused.param_groups for p in group["params"]]
    assert len(params) == sum(1 for p in module.parameters() if p.requires_grad)
    start = [p.detach().clone() for p in params]
    copies = [p.detach().clone().requires_grad_() for p in params]
    first = len(fused.param_groups[0]["params"])
    groups = [
        {"params": copies[:first]},
        {"params": copies[first:], "weight_decay": fused.param_groups[1]["weight_decay"]},
    ]
    defaults = {
        k: v
        for k, v in fused.defaults.items()
        if k not in ("fused", "foreach", "decoupled_weight_decay")
    }
    reference = KINDS[name](groups, **defaults, foreach=False)
    for _ in range(5):
        for p, q in zip(params, copies, strict=True):
            p.grad = torch.randn_like(p)
            q.grad = p.grad.clone()
        fused.step()
        reference.step()
    # Same formula, another order of float32 operations: each step may differ by a few
    # units in the last place of the parameter and of its update (|p| < 10, update
    # <= lr): 5 steps x 4 ulp x 2^-23 x 10 < 3e-5.
    worst = max((p - q).abs().max().item() for p, q in zip(params, copies, strict=True))
    assert worst < 3e-5
    moved = min((p - s).abs().max().item() for p, s in zip(params, start, strict=True))
    assert moved > 1e-3  # every parameter tensor took steps of about lr


MIXED = {"encoder": "resnet18", "encoder_width": 16, "channels": 8, "skip_channels": 4}


@pytest.mark.parametrize("architecture", ["cross_stitch", "nddr"])
@pytest.mark.parametrize(("multiplier", "expected"), [(None, 100.0), (3, 3.0)])
def test_mixing_parameters_learn_at_a_multiple_of_the_rate(architecture, multiplier, expected):
    net = {**MIXED, "architecture": architecture, "mixing_lr_multiplier": multiplier}
    module = MultiTaskModule(net=net, optimizer="sgd", lr=1e-3, weight_decay=1e-4)
    optimizer = module.make_optimizer(fused=False)
    mixing = {id(p) for p in module.net.mixers.parameters()}
    assert mixing  # cross-stitch alphas; NDDR's convs and BatchNorms
    groups = optimizer.param_groups
    assert [{id(p) for p in g["params"]} == mixing for g in groups] == [False, False, True]
    assert groups[0]["lr"] == 1e-3 and groups[2]["lr"] == pytest.approx(1e-3 * expected)
    # the authors decay the mixing units like every other weight
    assert groups[2]["weight_decay"] == groups[0]["weight_decay"] == 1e-4
    every = [id(p) for g in groups for p in g["params"]]
    assert sorted(every) == sorted(id(p) for p in module.parameters() if p.requires_grad)
    # the schedules scale each group's own initial rate
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5)
    optimizer.step()  # no gradients: no update, but the order the scheduler expects
    schedule.step()
    assert groups[2]["lr"] == pytest.approx(0.5e-3 * expected)


def test_architectures_without_mixing_units_keep_two_groups():
    module = MultiTaskModule(net={**MIXED, "architecture": "mtan"})
    assert module.net.mixing_parameters() == []
    assert len(module.make_optimizer(fused=False).param_groups) == 2
