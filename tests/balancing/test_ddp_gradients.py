"""DDP semantics of the gradient-level methods: two gloo processes, each with half of a
batch, make the update one process makes on the whole batch."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from scenemtl.balancing import build_balancer
from scenemtl.losses import MultiTaskLoss
from scenemtl.models import ModelConfig, build_model
from scenemtl.tasks import build_tasks, legacy_task_specs

# l1 depth and labels without ignored pixels: each loss is then a plain mean over pixels,
# so the whole batch's loss is the mean of the halves' (the definition being tested).
TASKS = build_tasks(legacy_task_specs(), {"depth": {"loss": "l1"}})
CASES = [("mean", "parameters"), ("pcgrad", "parameters"), ("upgrad", "representation")]


def whole_batch():
    gen = torch.Generator().manual_seed(3)
    return {
        "image": torch.randn(4, 3, 32, 48, generator=gen),
        "semseg": torch.randint(0, 19, (4, 32, 48), generator=gen),
        "depth": torch.rand(4, 32, 48, generator=gen) * 50 + 5,
    }


def step_gradients(method: str, wrt: str, batch: dict, drift: int = 0) -> list[torch.Tensor]:
    """One step's gradients; ``drift`` numbers are drawn from the global generator after
    the network is built (processes whose generators went apart)."""
    torch.manual_seed(0)
    cfg = ModelConfig(architecture="branched", encoder="resnet18", channels=8, skip_channels=4)
    net = build_model(cfg, {"semseg": 19, "depth": 1}).eval()  # BN without batch statistics
    torch.rand(drift)
    balancer = build_balancer(method, tasks=TASKS, wrt=wrt)
    crit = MultiTaskLoss(TASKS, balancer)
    shared = net.shared_forward(batch["image"])
    cut = {k: v.detach().requires_grad_() for k, v in shared.items()}
    out = crit(net.resize_outputs(net.decode(cut), batch["image"].shape[-2:]), batch)
    balancer.backward(
        torch.stack([out.tasks[t.name] for t in TASKS]),
        list(shared.values()),
        list(cut.values()),
        net.shared_parameters(),
        net.task_parameters(),
    )
    return [p.grad.clone() for p in net.parameters()]


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    torch.set_num_threads(1)
    try:
        half = {k: v[2 * rank : 2 * rank + 2] for k, v in whole_batch().items()}
        for method, wrt in CASES:
            grads = step_gradients(method, wrt, half)
            torch.save(grads, Path(out_dir) / f"{method}-{wrt}-rank{rank}.pt")
        grads = step_gradients("graddrop", "parameters", half, drift=rank)
        torch.save(grads, Path(out_dir) / f"graddrop-rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.float_paths
def test_two_processes_make_the_update_of_one_on_the_union(tmp_path):
    mp.start_processes(
        _worker,
        args=(str(tmp_path / "init"), str(tmp_path)),
        nprocs=2,
        join=True,
        start_method="spawn",
    )
    for method, wrt in CASES:
        single = step_gradients(method, wrt, whole_batch())
        ranks = [torch.load(tmp_path / f"{method}-{wrt}-rank{r}.pt") for r in range(2)]
        for a, b in zip(*ranks, strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=0)  # every process: the same update
        # float32 sums over the same terms in another grouping (halves, then their mean):
        # a few ulp per reduction over <= 1e4 terms, ~1e-3 of the largest entry at most.
        for ddp, one in zip(ranks[0], single, strict=True):
            scale = float(one.abs().max()) + 1e-12
            torch.testing.assert_close(ddp, one, rtol=0, atol=1e-3 * scale, msg=f"{method} {wrt}")
    # GradDrop's draws: rank 0's seed on both, though their global generators differ
    # (without it the ranks drop other entries and their replicas part)
    ranks = [torch.load(tmp_path / f"graddrop-rank{r}.pt") for r in range(2)]
    for a, b in zip(*ranks, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    # the comparison can fail: one half alone (no averaging) is not the union's update
    alone = step_gradients("upgrad", "parameters", {k: v[:2] for k, v in whole_batch().items()})
    single = step_gradients("upgrad", "parameters", whole_batch())
    assert any(
        not torch.allclose(a, b, atol=1e-3 * float(b.abs().max()))
        for a, b in zip(alone, single, strict=True)
    )


pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch.distributed missing")
