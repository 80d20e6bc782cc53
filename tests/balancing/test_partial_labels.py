"""Every balancing method on a batch in which a task has no label (partial labels).

The engine's path (MultiTaskLoss with the batch's ``labelled`` masks, then the method's
backward step) on a three-task network whose normals have no labelled sample, against an
independent computation: the same method built for the two other tasks only, on the
same batch without masks (an unlabelled sample's target all fill, which every task's
loss ignores). Then the state of the stateful methods, hand computations for those whose
draw or history depends on the task count, and a batch without any label.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from scenemtl.balancing import BALANCERS, build_balancer, method_level
from scenemtl.balancing.base import TrainingStep
from scenemtl.losses import MultiTaskLoss
from scenemtl.tasks import build_tasks, legacy_task_specs
from scenemtl.tasks.labels import LABELLED

THREE = build_tasks({**legacy_task_specs(), "normals": {"kind": "normals", "encoding": "rgb8"}})
TWO = THREE[:2]
WEIGHTS = {"semseg": 0.7, "depth": 2.0, "normals": 1.5}
NORMALS_ROWS = slice(20, 23)  # of the 1x1 prediction: 19 semseg, 1 depth, 3 normals
METHODS = list(BALANCERS)


class SmallNet(nn.Module):
    """The split the methods see (a shared trunk, a 1x1 prediction of 19 + 1 + 3
    channels as the joint architecture's), small enough for every method's Jacobian with
    respect to the parameters in a fraction of a second."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.trunk = nn.Conv2d(3, 6, 3, padding=1)
        self.predict = nn.Conv2d(6, 23, 1)

    def shared_forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"features": torch.tanh(self.trunk(image))}

    def decode(self, shared: dict[str, torch.Tensor]) -> dict[str, list[torch.Tensor]]:
        out = self.predict(shared["features"])
        return {"semseg": [out[:, :19]], "depth": [out[:, 19:20]], "normals": [out[:, 20:]]}

    def resize_outputs(self, outputs, size):
        return outputs

    def forward(self, image: torch.Tensor) -> dict[str, list[torch.Tensor]]:
        return self.decode(self.shared_forward(image))

    def shared_parameters(self) -> list[nn.Parameter]:
        return list(self.trunk.parameters())

    def task_parameters(self) -> list[nn.Parameter]:
        return list(self.predict.parameters())


def small_net() -> SmallNet:
    torch.manual_seed(0)  # the same network whatever ran before (test order, -k)
    return SmallNet()


def partial_batch():
    """3 samples: semseg labelled on samples 0 and 2 (sample 1 holds the fill, 255),
    depth on all, normals on none (all fill, 0)."""
    gen = torch.Generator().manual_seed(0)
    semseg = torch.randint(0, 19, (3, 12, 16), generator=gen)
    semseg[1] = 255
    return {
        "image": torch.randn(3, 3, 12, 16, generator=gen),
        "semseg": semseg,
        "depth": torch.rand(3, 12, 16, generator=gen) * 50 + 5,
        "normals": torch.zeros(3, 3, 12, 16),
        LABELLED: {
            "semseg": torch.tensor([True, False, True]),
            "depth": torch.ones(3, dtype=torch.bool),
            "normals": torch.zeros(3, dtype=torch.bool),
        },
    }


def weights_for(method, tasks):
    return None if method == "famo" else {t.name: WEIGHTS[t.name] for t in tasks}


def step(net, method, tasks, batch, **options):
    """One training step as engine/module.py runs it: (grads by name, loss output, result)."""
    net.zero_grad(set_to_none=True)
    balancer = build_balancer(method, weights_for(method, tasks), tasks=tasks, **options)
    balancer.train()
    crit = MultiTaskLoss(tasks, balancer)
    shared = net.shared_forward(batch["image"])
    cut = balancer.cut(shared)
    out = crit(net.resize_outputs(net.decode(cut), batch["image"].shape[-2:]), batch)
    present = torch.tensor([out.present[t.name] for t in tasks])
    torch.manual_seed(1)  # GradDrop, GradVac and PCGrad draw from the global generator
    result = balancer.backward_step(
        out.total,
        TrainingStep(
            losses=balancer.weighted_losses(out.tasks),
            representation=list(shared.values()),
            cut=list(cut.values()),
            present=None if bool(present.all()) else present,
        ),
        net,
    )
    grads = {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}
    return grads, out, result, balancer


@pytest.mark.parametrize("method", [m for m in METHODS if m != "rlw"])
def test_an_unlabelled_task_is_left_out_of_every_method(method):
    """The update with normals unlabelled is the method's update on semseg and depth.

    Tolerance: both paths compute the same float32 rows (semseg's loss once on its two
    labelled samples, once on all three with the third all-ignore: the same terms summed
    in another order, a few ulp); the methods' weights are continuous in the rows at
    these non-degenerate gradients, so 1e-4 relative (1e-5 of the largest entry absolute)
    bounds the difference with a wide margin. GradDrop's decision is not continuous: a
    column whose purity lies within those few ulp of its draw keeps S+ on one path and
    S- on the other. It runs in float64, where the paths differ by ~1e-16 relative, so
    that a flip among its ~3500 columns has a probability of ~1e-12 (in float32 ~1e-3:
    it failed once in a few dozen runs with an unseeded network).
    """
    dtype = torch.float64 if method == "graddrop" else torch.float32
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        net = small_net()
        got, out, result, _ = step(net, method, THREE, partial_batch())
        plain = {k: v for k, v in partial_batch().items() if k != LABELLED}
        want, ref, ref_result, _ = step(net, method, TWO, plain)
    finally:
        torch.set_default_dtype(previous)
    assert got["trunk.weight"].dtype == dtype
    assert out.labelled == {"semseg": 2, "depth": 3, "normals": 0}
    assert torch.isfinite(out.total) and float(out.weights["normals"]) == 0.0
    head = got["predict.weight"][NORMALS_ROWS], got["predict.bias"][NORMALS_ROWS]
    assert all(float(g.abs().max()) == 0.0 for g in head)  # the unlabelled head: no gradient
    assert set(got) == set(want)
    for name, g in got.items():
        w = want[name]
        if name.startswith("predict"):
            g, w = g[:20], w[:20]  # the labelled tasks' rows
        assert torch.isfinite(g).all()
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-5 * float(w.abs().max()) + 1e-12)
    if method_level(method) == "gradient" and result.weights is not None:
        assert float(result.weights[2]) == 0.0
        torch.testing.assert_close(result.weights[:2], ref_result.weights, rtol=1e-4, atol=1e-6)
    for name in ("semseg", "depth"):
        torch.testing.assert_close(out.tasks[name], ref.tasks[name], rtol=1e-5, atol=0.0)


@pytest.mark.parametrize("method", METHODS)
def test_a_batch_without_any_label_changes_nothing(method):
    """No task labelled: a finite zero total, no gradient anywhere, no NaN."""
    batch = partial_batch()
    batch[LABELLED] = {t.name: torch.zeros(3, dtype=torch.bool) for t in THREE}
    grads, out, result, _ = step(small_net(), method, THREE, batch)
    assert float(out.total) == 0.0
    assert all(float(g.abs().max()) == 0.0 for g in grads.values())
    if result.weights is not None:
        assert float(result.weights.abs().sum()) == 0.0


def test_the_task_loss_is_the_mean_over_the_labelled_samples_only():
    """semseg labelled on samples 0 and 2: its loss is the cross-entropy of those two
    alone, even where sample 1's target holds real classes (the mask decides, not the
    fill). Tolerance: float32 mean over ~3000 pixels, two summation orders."""
    net = small_net()
    batch = partial_batch()
    batch["semseg"][1] = 3  # a real class, but the mask says unlabelled
    outputs = net(batch["image"])
    out = MultiTaskLoss(THREE)(outputs, batch)
    logits = outputs["semseg"][-1]
    want = torch.nn.functional.cross_entropy(logits[[0, 2]], batch["semseg"][[0, 2]])
    torch.testing.assert_close(out.tasks["semseg"], want, rtol=1e-5, atol=0.0)
    assert out.present == {"semseg": True, "depth": True, "normals": False}


# -- the methods whose weights depend on which tasks there are -----------------------------


def test_rlw_draws_the_softmax_over_the_present_tasks():
    """The step's z is the seeded draw of all three tasks; the weights are 2 softmax of
    the present two (mean weight 1, as over all tasks)."""
    balancer = build_balancer("rlw", tasks=THREE, seed=5)
    balancer.train()
    losses = {"semseg": torch.tensor(2.0), "depth": torch.tensor(3.0), "normals": torch.tensor(0.0)}
    total, eff = balancer(losses, {"normals": False})
    z = torch.randn(3, generator=torch.Generator().manual_seed(5 * 1_000_003 + 0)).double()
    lam = 2 * torch.exp(z[:2]) / torch.exp(z[:2]).sum()
    torch.testing.assert_close(torch.stack([eff["semseg"], eff["depth"]]).double(), lam)
    assert float(eff["normals"]) == 0.0
    torch.testing.assert_close(total.double(), lam[0] * 2.0 + lam[1] * 3.0, rtol=1e-6, atol=0)


def test_dwa_renormalises_over_the_present_tasks_and_keeps_the_absent_history():
    """Weights 2 softmax(r / T) over the present two; the absent task's epoch average
    and history are untouched by steps without it."""
    dwa = build_balancer("dwa", tasks=THREE, temperature=2.0)
    dwa.train()
    for means in ([1.0, 2.0, 4.0], [0.5, 1.5, 1.0]):  # two epochs of history
        dwa.on_epoch_end(dict(zip(["semseg", "depth", "normals"], means, strict=True)))
    r = torch.tensor([0.5 / 1.0, 1.5 / 2.0], dtype=torch.float64)
    lam = 2 * torch.softmax(r / 2.0, dim=0)
    losses = {"semseg": torch.tensor(1.0), "depth": torch.tensor(3.0), "normals": torch.tensor(0.0)}
    _, eff = dwa(losses, {"normals": False})
    torch.testing.assert_close(torch.stack([eff["semseg"], eff["depth"]]).double(), lam)
    assert float(eff["normals"]) == 0.0
    dwa(losses, {"normals": False})
    dwa.on_epoch_end()  # normals had no labelled step this epoch: its averages stay
    torch.testing.assert_close(dwa.history[:, 2], torch.tensor([4.0, 1.0], dtype=torch.float64))
    torch.testing.assert_close(dwa.history[1, :2], torch.tensor([1.0, 3.0], dtype=torch.float64))


def test_uncertainty_and_imtl_l_leave_the_absent_scale_alone():
    """The absent task's learned log-scale gets a zero gradient (its regulariser is left
    out too, which alone would push it)."""
    for method in ("uncertainty", "imtl_l"):
        balancer = build_balancer(method, tasks=THREE)
        balancer.train()
        losses = {
            "semseg": torch.tensor(2.0),
            "depth": torch.tensor(3.0),
            "normals": torch.tensor(0.0),
        }
        total, _ = balancer(losses, {"normals": False})
        (param,) = balancer.trainable_parameters()
        (grad,) = torch.autograd.grad(total, [param])
        assert float(grad[2]) == 0.0 and float(grad[:2].abs().min()) > 0.0


def test_famo_updates_the_present_logits_as_torchjds_famo_on_them():
    """After a step with all three tasks and one without normals, the normals logit and
    its Adam moments are as before; the two others moved as torchjd's FAMO on those two
    tasks moves them (its own code, from the same logits and losses).

    Tolerance: float32 logits after two Adam steps, the same operations on the same
    values in both: 1e-6 relative."""
    from torchjd.scalarization import FAMO

    famo = build_balancer("famo", tasks=THREE)
    famo.train()
    first = {"semseg": torch.tensor(2.0), "depth": torch.tensor(3.0), "normals": torch.tensor(1.0)}
    famo(first)
    second = {"semseg": torch.tensor(1.5), "depth": torch.tensor(3.3), "normals": torch.tensor(0.9)}
    famo(second)  # a full update: all three logits move
    logits = famo.famo._w.detach().clone()
    state = {k: v.clone() for k, v in famo.famo._optimizer.state[famo.famo._w].items()}
    third = {"semseg": torch.tensor(1.2), "depth": torch.tensor(3.0), "normals": torch.tensor(0.0)}
    famo(third, {"normals": False})
    assert float(famo.famo._w[2]) == float(logits[2])
    after = famo.famo._optimizer.state[famo.famo._w]
    for key in ("exp_avg", "exp_avg_sq"):
        assert float(after[key][2]) == float(state[key][2])
    ref = FAMO(2)
    with torch.no_grad():
        ref._w.copy_(logits[:2])
    ref._optimizer = torch.optim.Adam([ref._w], lr=ref.lr, weight_decay=ref.weight_decay)
    ref._optimizer.load_state_dict(
        {
            "state": {0: {k: (v[:2] if v.dim() else v) for k, v in state.items()}},
            "param_groups": ref._optimizer.state_dict()["param_groups"],
        }
    )
    ref._prev_losses = torch.tensor([1.5, 3.3])
    ref.update(torch.tensor([1.2, 3.0]))
    torch.testing.assert_close(famo.famo._w.detach()[:2], ref._w.detach(), rtol=1e-6, atol=1e-7)


def test_gradvac_keeps_the_running_cosines_of_pairs_with_an_absent_task():
    """The present pair's running cosines move as a two-task GradVac's from the same
    state; every pair with the absent task keeps its value."""
    from torchjd.aggregation import GradVac

    gen = torch.Generator().manual_seed(2)
    g = torch.randn(3, 6, generator=gen, dtype=torch.float64)
    balancer = build_balancer("gradvac", tasks=THREE)
    param = torch.nn.Parameter(torch.zeros(6, dtype=torch.float64))
    for present in (None, torch.tensor([True, True, False])):
        feature = param * 1.0
        cut = feature.detach().requires_grad_()
        losses = g @ cut
        if present is not None:
            losses = torch.where(present, losses, losses * 0)
            before = balancer.aggregator.gramian_weighting._phi_t.clone()
            ref = GradVac(beta=0.5)
            ref.gramian_weighting._phi_t = before[:2, :2].clone()
            ref.gramian_weighting._state_key = (2, torch.float64)
            torch.manual_seed(4)
            ref(g[:2])
        torch.manual_seed(4)
        balancer.backward(losses, [feature], [cut], [param], [], present=present)
    phi = balancer.aggregator.gramian_weighting._phi_t
    torch.testing.assert_close(phi[:2, :2], ref.gramian_weighting._phi_t, rtol=1e-12, atol=0)
    assert torch.equal(phi[2], before[2]) and torch.equal(phi[:, 2], before[:, 2])  # copies


def test_nash_keeps_its_last_full_solution_through_a_partial_step():
    balancer = build_balancer("nash_mtl", tasks=THREE)
    gen = torch.Generator().manual_seed(6)
    g = torch.randn(3, 5, generator=gen, dtype=torch.float64)
    param = torch.nn.Parameter(torch.zeros(5, dtype=torch.float64))
    for present in (None, torch.tensor([True, False, True])):
        feature = param * 1.0
        cut = feature.detach().requires_grad_()
        if present is not None:
            alpha = np.array(balancer.aggregator.weighting.prvs_alpha, copy=True)
        balancer.backward(g @ cut, [feature], [cut], [param], [], present=present)
    assert np.array_equal(balancer.aggregator.weighting.prvs_alpha, alpha)  # a copy, not math
    assert not math.isnan(float(param.grad.sum()))


def test_dwa_loads_a_state_from_before_partial_labels():
    """A checkpoint without ``task_count`` counted every step for every task."""
    old = build_balancer("dwa", tasks=THREE)
    old.train()
    old({"semseg": torch.tensor(1.0), "depth": torch.tensor(2.0), "normals": torch.tensor(3.0)})
    state = {k: v for k, v in old.state_dict().items() if k != "task_count"}
    new = build_balancer("dwa", tasks=THREE)
    new.load_state_dict(state, strict=True)
    assert new.task_count.tolist() == [1.0, 1.0, 1.0]
    new.on_epoch_end()
    assert new.history[1].tolist() == [1.0, 2.0, 3.0]


# -- DDP ------------------------------------------------------------------------------------

DDP_CASES = [("mean", "parameters"), ("mgda", "parameters"), ("upgrad", "representation")]


def ddp_batch():
    """4 samples, no ignored pixel and l1 depth (each loss a plain pixel mean); depth
    labelled on the first two only."""
    gen = torch.Generator().manual_seed(3)
    return {
        "image": torch.randn(4, 3, 12, 16, generator=gen),
        "semseg": torch.randint(0, 19, (4, 12, 16), generator=gen),
        "depth": torch.rand(4, 12, 16, generator=gen) * 50 + 5,
        LABELLED: {
            "semseg": torch.ones(4, dtype=torch.bool),
            "depth": torch.tensor([True, True, False, False]),
        },
    }


def shared_gradients(method, wrt, batch):
    grads, *_ = step(small_net(), method, TWO, batch, wrt=wrt)
    return [grads[n] for n in ("trunk.weight", "trunk.bias")]


def _ddp_worker(rank: int, init_file: str, out_dir: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    torch.set_num_threads(1)
    try:
        whole = ddp_batch()
        half = {k: v[2 * rank : 2 * rank + 2] for k, v in whole.items() if k != LABELLED}
        half[LABELLED] = {k: v[2 * rank : 2 * rank + 2] for k, v in whole[LABELLED].items()}
        for method, wrt in DDP_CASES:
            torch.save(shared_gradients(method, wrt, half), f"{out_dir}/{method}-{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_processes_one_without_a_task_make_the_update_of_one_on_the_union(tmp_path):
    """Process 1 has no depth label: depth's row is process 0's alone (averaged over the
    processes that have it), so the shared update is one process's on the whole batch.

    Tolerance: float32 sums of the same terms in another grouping (halves, then their
    mean), a few ulp per reduction over ~1e3 terms: 1e-4 of the largest entry."""
    import torch.multiprocessing as mp

    mp.start_processes(
        _ddp_worker,
        args=(str(tmp_path / "init"), str(tmp_path)),
        nprocs=2,
        join=True,
        start_method="spawn",
    )
    for method, wrt in DDP_CASES:
        single = shared_gradients(method, wrt, ddp_batch())
        ranks = [torch.load(tmp_path / f"{method}-{r}.pt") for r in range(2)]
        for a, b in zip(*ranks, strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=0)  # every process: the same update
        for ddp, one in zip(ranks[0], single, strict=True):
            scale = float(one.abs().max()) + 1e-12
            torch.testing.assert_close(ddp, one, rtol=0, atol=1e-4 * scale, msg=method)


def test_dwa_gives_a_task_without_two_averages_the_neutral_ratio():
    """normals has no label in the first epoch: after the third its one average gives no
    ratio, so it counts as r = 1 while the others have theirs."""
    dwa = build_balancer("dwa", tasks=THREE, temperature=2.0)
    dwa.train()
    steps = [
        ({"normals": False}, [1.0, 2.0, 0.0]),
        (None, [0.5, 1.0, 3.0]),
        (None, [0.25, 1.5, 2.0]),
    ]
    for present, values in steps:
        losses = dict(zip(["semseg", "depth", "normals"], map(torch.tensor, values), strict=True))
        dwa(losses, present)
        dwa.on_epoch_end()
    assert dwa.task_epochs.tolist() == [3, 3, 2]
    r = torch.tensor([0.25 / 0.5, 1.5 / 1.0, 2.0 / 3.0], dtype=torch.float64)
    torch.testing.assert_close(dwa.dwa_weights.double(), 3 * torch.softmax(r / 2.0, 0))
    dwa2 = build_balancer("dwa", tasks=THREE, temperature=2.0)
    dwa2.train()
    for present, values in steps[:2]:
        losses = dict(zip(["semseg", "depth", "normals"], map(torch.tensor, values), strict=True))
        dwa2(losses, present)
        dwa2.on_epoch_end()
    r = torch.tensor([0.5 / 1.0, 1.0 / 2.0, 1.0], dtype=torch.float64)  # normals: one average
    torch.testing.assert_close(dwa2.dwa_weights.double(), 3 * torch.softmax(r / 2.0, 0))
