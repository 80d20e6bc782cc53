"""What every architecture declares it shares (the contract the balancing methods use)."""

from __future__ import annotations

import pytest
import torch

from scenemtl.models import ARCHITECTURES, ModelConfig, build_model

HEADS = {"semseg": 5, "depth": 1}


def small(architecture: str, **kw: object) -> ModelConfig:
    base = dict(
        architecture=architecture, encoder="resnet18", channels=8, skip_channels=4, se_reduction=2
    )
    base.update(kw)
    return ModelConfig(**base)


CONFIGS = {
    "plain": {},
    "se-extra-skips": {"squeeze_excitation": True, "extra_skips": True},
    "template": {"aspp": False, "skip": False},
}


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_forward_is_decode_of_shared_forward(architecture: str, config: str) -> None:
    torch.manual_seed(0)
    model = build_model(small(architecture, **CONFIGS[config]), HEADS).eval()
    x = torch.randn(2, 3, 40, 56)
    with torch.no_grad():
        direct = model(x)
        split = model.resize_outputs(model.decode(model.shared_forward(x)), x.shape[-2:])
    for task in HEADS:
        for a, b in zip(direct[task], split[task], strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_shared_and_task_parameters_partition_the_network(architecture: str, config: str) -> None:
    model = build_model(small(architecture, **CONFIGS[config]), HEADS)
    shared = {id(p) for p in model.shared_parameters()}
    own = {id(p) for p in model.task_parameters()}
    assert shared and not shared & own
    assert shared | own == {id(p) for p in model.parameters()}


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_shared_representation_is_all_the_tasks_read(architecture: str, config: str) -> None:
    """Gradients reach the shared parameters only through the shared representation, and
    every shared parameter takes part in it."""
    model = build_model(small(architecture, **CONFIGS[config]), HEADS).train()
    if not model.has_shared_representation:
        pytest.skip("no shared representation by design")
    x = torch.randn(2, 3, 40, 56)
    shared = model.shared_forward(x)
    detached = {k: v.detach().requires_grad_() for k, v in shared.items()}
    outputs = model.decode(detached)
    loss = sum(o.square().mean() for outs in outputs.values() for o in outs)
    loss.backward()
    assert all(p.grad is None for p in model.shared_parameters())
    assert any(v.grad is not None and v.grad.abs().sum() > 0 for v in detached.values())
    reached = sum(v.square().sum() for v in shared.values())
    reached.backward()
    missing = [
        name
        for name, p in model.named_parameters()
        if id(p) in {id(q) for q in model.shared_parameters()} and p.grad is None
    ]
    assert not missing, missing
