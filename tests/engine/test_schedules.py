"""Learning-rate schedules against their closed forms at known steps, and the warm-up
options refused in one line."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from scenemtl.engine.module import MultiTaskModule
from scenemtl.engine.schedules import CosineFactor, PolyFactor, check_warmup, warmup_steps
from scenemtl.errors import UserError

NET = {"architecture": "joint", "encoder": "resnet18", "encoder_width": 16, "channels": 8}

# warm-up W = 10 steps of a T = 110-step run: the decay phase is 100 steps long
W, T, FLOOR = 10, 110, 0.01


@pytest.mark.parametrize(
    ("step", "expected"),
    [
        (0, 0.0),  # MAE's and transformers' warm-up starts at 0
        (4, 0.4),
        (9, 0.9),
        (10, 1.0),  # cos 0 = 1: the base rate
        (35, FLOOR + (1 - FLOOR) * (1 + math.sqrt(0.5)) / 2),  # a quarter: cos(pi/4)
        (60, FLOOR + (1 - FLOOR) / 2),  # half way: cos(pi/2) = 0
        (110, FLOOR),  # cos(pi) = -1: the floor
        (500, FLOOR),  # Lightning may step once past the estimate: stays at the floor
    ],
)
def test_cosine_with_warmup_matches_the_closed_form(step, expected):
    # each value is a few float64 operations from its exact value: 1e-12 is 4500 ulp
    assert CosineFactor(T, FLOOR, W)(step) == pytest.approx(expected, rel=1e-12, abs=1e-15)


@pytest.mark.parametrize(
    ("step", "expected"),
    [
        (5, 0.5),
        (10, 1.0),
        (35, 0.75**0.9),  # a quarter of the decay phase
        (60, 0.5**0.9),
        (109, 0.01**0.9),  # 0.0158 > the floor
        (110, FLOOR),
    ],
)
def test_poly_with_warmup_matches_the_closed_form(step, expected):
    assert PolyFactor(T, 0.9, FLOOR, W)(step) == pytest.approx(expected, rel=1e-12)


def test_poly_without_warmup_is_the_old_schedule_and_old_state_keeps_it():
    old = PolyFactor(100, 0.9, 1e-3)
    for step in (0, 1, 37, 99, 100, 150):
        assert old(step) == pytest.approx(max((1 - min(step / 100, 1)) ** 0.9, 1e-3), rel=1e-12)
    # a checkpoint from before warm-up holds {total, power, floor}: loading it keeps the
    # built warm-up (0 for such a run's hyper-parameters)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, PolyFactor(5, 1.0, 0.0))
    state = sched.state_dict()
    state["lr_lambdas"][0] = {"total": 100, "power": 0.9, "floor": 1e-3}
    sched.load_state_dict(state)
    assert vars(sched.lr_lambdas[0]) == {"total": 100, "power": 0.9, "floor": 1e-3, "warmup": 0}


def _configured(module: MultiTaskModule, total: int):
    """configure_optimizers with a stand-in for the trainer's three attributes it reads."""
    module.trainer = SimpleNamespace(  # type: ignore[assignment]
        gradient_clip_val=None, precision_plugin=None, estimated_stepping_batches=total
    )
    return module.configure_optimizers()


def test_configured_cosine_warmup_scales_every_group():
    module = MultiTaskModule(
        net=NET, optimizer="adamw", lr=1e-3, lr_floor=1e-5, lr_schedule="cosine",
        lr_warmup_fraction=0.1, loss_weighting="uncertainty",
    )  # fmt: skip
    conf = _configured(module, 200)
    opt, sched = conf["optimizer"], conf["lr_scheduler"]["scheduler"]
    assert conf["lr_scheduler"]["interval"] == "step"
    assert sched.lr_lambdas[0].warmup == 20  # 10% of 200
    seen = []
    for _ in range(120):
        seen.append([g["lr"] for g in opt.param_groups])
        opt.step()
        sched.step()
    # step 10: half the warm-up; step 110: half the decay phase, cos(pi/2) = 0
    assert seen[10] == pytest.approx([0.5e-3, 0.5e-3], rel=1e-12)
    assert seen[110][0] == pytest.approx(1e-5 + (1e-3 - 1e-5) / 2, rel=1e-12)
    assert seen[110][1] == pytest.approx(seen[110][0], rel=1e-12)


@pytest.mark.parametrize(
    ("options", "culprit"),
    [
        ({"lr_warmup_steps": -1}, "lr_warmup_steps must be an integer >= 0"),
        ({"lr_warmup_steps": 2.5}, "lr_warmup_steps must be an integer"),
        ({"lr_warmup_fraction": 1.0}, "lr_warmup_fraction must be in [0, 1)"),
        ({"lr_warmup_fraction": "a"}, "lr_warmup_fraction must be a number"),
        ({"lr_warmup_steps": 5, "lr_warmup_fraction": 0.1}, "give one, not both"),
        ({"lr_warmup_steps": 5, "lr_schedule": "step"}, "not the per-epoch step schedule"),
        ({"lr_schedule": "linear"}, "lr_schedule 'linear' unknown"),
    ],
)
def test_bad_warmup_is_refused_in_one_line(options, culprit):
    with pytest.raises(UserError) as err:
        MultiTaskModule(net=NET, **options)
    assert culprit in str(err.value) and "\n" not in str(err.value)


def test_warmup_longer_than_the_run_is_refused():
    check_warmup("poly", 50, 0.0)
    assert warmup_steps(0, 0.25, 40) == 10
    with pytest.raises(UserError, match="50 warm-up steps leave none of the run's 50"):
        warmup_steps(50, 0.0, 50)
