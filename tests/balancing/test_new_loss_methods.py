"""The loss-level methods beyond fixed/uncertainty/DWA: what they compute, the weights they
report, their state across checkpoints."""

from __future__ import annotations

import io

import pytest
import torch

from scenemtl.balancing import BALANCERS, build_balancer, method_level
from scenemtl.errors import UserError
from scenemtl.tasks import build_tasks, legacy_task_specs

TASKS = build_tasks(legacy_task_specs())
LOSS_METHODS = [m for m in BALANCERS if method_level(m) == "loss"]


def as_losses(values) -> dict[str, torch.Tensor]:
    return {
        t.name: torch.as_tensor(v, dtype=torch.float32) for t, v in zip(TASKS, values, strict=True)
    }


@pytest.mark.parametrize("method", LOSS_METHODS)
def test_reported_weights_are_the_derivative_of_the_total(method):
    """What is logged as a task's weight is d total / d L_k, for every method."""
    weights = None if method == "famo" else {"semseg": 0.5, "depth": 2.0}
    balancer = build_balancer(method, weights, tasks=TASKS).eval()
    losses = {
        t.name: torch.tensor(v, requires_grad=True) for t, v in zip(TASKS, (1.7, 0.3), strict=True)
    }
    total, reported = balancer(losses)
    grads = torch.autograd.grad(total, list(losses.values()))
    for (name, _), g in zip(losses.items(), grads, strict=True):
        assert float(reported[name]) == pytest.approx(float(g), rel=1e-5), name


def test_log_methods_are_invariant_to_a_loss_scale():
    """scale_invariant: multiplying a loss by c changes the total by a constant only, so
    the update does not change; gls: the update is scaled, its direction kept."""
    si = build_balancer("scale_invariant", tasks=TASKS)
    a, _ = si(as_losses([2.0, 0.5]))
    b, _ = si(as_losses([2.0, 50.0]))
    assert float(b - a) == pytest.approx(float(torch.log(torch.tensor(100.0))), rel=1e-6)
    gls = build_balancer("gls", tasks=TASKS)
    _, w1 = gls(as_losses([2.0, 0.5]))
    _, w2 = gls(as_losses([2.0, 50.0]))
    # effective weight ratio semseg/depth follows 1/L: depth's weight drops by 100
    r1 = float(w1["semseg"] / w1["depth"])
    r2 = float(w2["semseg"] / w2["depth"])
    assert r2 / r1 == pytest.approx(100.0, rel=1e-5)


def test_rlw_draws_are_a_function_of_the_seed_and_the_step():
    a = build_balancer("rlw", tasks=TASKS, seed=3).train()
    draws = [a(as_losses([1.0, 1.0]))[1] for _ in range(5)]
    assert all(float(sum(d.values())) == pytest.approx(2.0, rel=1e-6) for d in draws)  # mean 1
    assert len({round(float(d["semseg"]), 6) for d in draws}) == 5
    b = build_balancer("rlw", tasks=TASKS, seed=3).train()
    b(as_losses([1.0, 1.0]))
    b(as_losses([1.0, 1.0]))
    c = build_balancer("rlw", tasks=TASKS, seed=3).train()
    c.load_state_dict(b.state_dict())  # resumed after two steps
    resumed = [c(as_losses([1.0, 1.0]))[1] for _ in range(3)]
    for x, y in zip(draws[2:], resumed, strict=True):
        assert float(x["semseg"]) == float(y["semseg"])
    other = build_balancer("rlw", tasks=TASKS, seed=4).train()
    assert float(other(as_losses([1.0, 1.0]))[1]["semseg"]) != float(draws[0]["semseg"])


def famo_run(balancer, sequence):
    out = []
    for values in sequence:
        balancer.train()
        _, w = balancer(as_losses(values))
        out.append([float(w[t.name]) for t in TASKS])
    return out


def test_famo_moves_weight_to_the_task_that_improves_slower_and_resumes_exactly():
    # semseg's loss falls fast, depth's hardly: FAMO shifts weight towards depth
    sequence = [(2.0 * 0.7**i, 1.0 * 0.99**i) for i in range(12)]
    famo = build_balancer("famo", tasks=TASKS)
    straight = famo_run(famo, sequence)
    z = torch.softmax(famo.famo._w.detach(), dim=0)  # the task weights before the 1/L factor
    assert float(z[1]) > 0.5 > float(z[0])
    first = build_balancer("famo", tasks=TASKS)
    famo_run(first, sequence[:5])
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)
    buffer.seek(0)
    resumed = build_balancer("famo", tasks=TASKS)
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    assert famo_run(resumed, sequence[5:]) == straight[5:]
    fresh = famo_run(build_balancer("famo", tasks=TASKS), sequence[5:])
    assert fresh != straight[5:]


def test_famo_ignores_validation_losses():
    sequence = [(2.0 * 0.7**i, 1.0) for i in range(4)]
    a = build_balancer("famo", tasks=TASKS)
    b = build_balancer("famo", tasks=TASKS)
    famo_run(a, sequence[:2])
    famo_run(b, sequence[:2])
    b.eval()
    b(as_losses([100.0, 0.01]))  # a validation batch in between
    assert famo_run(a, sequence[2:]) == famo_run(b, sequence[2:])


def test_famo_refuses_constant_weights():
    with pytest.raises(UserError, match="famo"):
        build_balancer("famo", {"depth": 2.0}, tasks=TASKS)
