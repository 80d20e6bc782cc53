"""What every architecture declares it shares (the contract the balancing methods use)."""

from __future__ import annotations

import pytest
import torch

from scenemtl.models import ARCHITECTURES, build_model
from tests.models.nets import HEADS, small

CONFIGS = {
    "plain": {},
    "se-extra-skips": {"squeeze_excitation": True, "extra_skips": True},
    "template": {"aspp": False, "skip": False},
    "vortex-attention-skips": {"pooling": "vortex", "attention_skips": True},
}
CASES = [(a, c) for a in ARCHITECTURES for c in CONFIGS] + [
    # MTAN's per-task refinement blocks keep the encoder's features the one representation
    ("mtan", "per-task-refinement")
]
CONFIGS["per-task-refinement"] = {"mtan_refinement": "per_task"}
# the DPT head as every task's decoder, where an architecture takes it
CASES += [(a, "dpt") for a in ("joint", "branched", "distillation", "task_specific")]
CONFIGS["dpt"] = {
    "decoder": "dpt",
    "decoder_options": {"features": 8, "head": "segmentation"},
}


@pytest.mark.parametrize(("architecture", "config"), CASES)
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


NOTHING_SHARED = {"task_specific"}
"""Architectures whose tasks share no parameter at all."""


@pytest.mark.parametrize(("architecture", "config"), CASES)
def test_shared_and_task_parameters_partition_the_network(architecture: str, config: str) -> None:
    model = build_model(small(architecture, **CONFIGS[config]), HEADS)
    shared = {id(p) for p in model.shared_parameters()}
    own = {id(p) for p in model.task_parameters()}
    assert bool(shared) == (architecture not in NOTHING_SHARED)
    assert not shared & own
    assert shared | own == {id(p) for p in model.parameters()}


def test_nothing_shared_means_the_image_passes_through() -> None:
    model = build_model(small("task_specific"), HEADS)
    assert not model.has_shared_representation
    assert model.shared_modules() == [] and model.shared_parameters() == []
    x = torch.randn(1, 3, 24, 24)
    assert model.shared_forward(x)["image"] is x


@pytest.mark.parametrize(("architecture", "config"), CASES)
def test_decode_uses_task_parameters_only(architecture: str, config: str) -> None:
    """Gradients reach the shared parameters only through ``shared_forward``'s output
    (the shared representation, or the mixed per-task trunks of architectures without
    one), and every shared parameter takes part in it."""
    model = build_model(small(architecture, **CONFIGS[config]), HEADS).train()
    x = torch.randn(2, 3, 40, 56)
    shared = model.shared_forward(x)
    detached = {k: v.detach().requires_grad_() for k, v in shared.items()}
    outputs = model.decode(detached)
    loss = sum(o.square().mean() for outs in outputs.values() for o in outs)
    loss.backward()
    assert all(p.grad is None for p in model.shared_parameters())
    assert any(v.grad is not None and v.grad.abs().sum() > 0 for v in detached.values())
    # every task-specific parameter is reached from the detached input of decode
    unreached = [n for n, p in model.named_parameters() if p.grad is None]
    shared_ids = {id(p) for p in model.shared_parameters()}
    assert {id(p) for n, p in model.named_parameters() if n in unreached} <= shared_ids
    if not shared_ids:
        return
    reached = sum(v.square().sum() for v in shared.values())
    reached.backward()
    missing = [
        name
        for name, p in model.named_parameters()
        if id(p) in {id(q) for q in model.shared_parameters()} and p.grad is None
    ]
    assert not missing, missing
