"""The configured optimizer runs its fused kernel and updates like the reference one."""

from __future__ import annotations

import pytest
import torch

from scenemtl.engine.module import MultiTaskModule

NET = {"architecture": "joint", "encoder": "resnet18", "channels": 16, "skip_channels": 8}
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
