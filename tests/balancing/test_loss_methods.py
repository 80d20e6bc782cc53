import math

import numpy as np
import pytest
import torch

from scenemtl.balancing import (
    DynamicWeightAveraging,
    FixedWeighting,
    UncertaintyWeighting,
    build_balancer,
)
from scenemtl.errors import UserError
from scenemtl.tasks import build_task, build_tasks, legacy_task_specs

TASKS = build_tasks(legacy_task_specs())
SEMSEG, DEPTH = TASKS
TASK_NAMES = tuple(t.name for t in TASKS)


def weighting(method: str, weights=None, **kw):
    """``build_balancer`` for the course's two tasks."""
    return build_balancer(method, weights, tasks=TASKS, **kw)


def losses(sem: float, dep: float, requires_grad: bool = False) -> dict[str, torch.Tensor]:
    return {
        SEMSEG.name: torch.tensor(sem, requires_grad=requires_grad),
        DEPTH.name: torch.tensor(dep, requires_grad=requires_grad),
    }


def test_fixed_weights_sum_and_default_one():
    w = weighting("fixed", {DEPTH.name: 0.25})
    assert isinstance(w, FixedWeighting)
    total, weights = w(losses(2.0, 8.0))
    assert total.item() == pytest.approx(2.0 * 1.0 + 8.0 * 0.25)
    assert weights[SEMSEG.name].item() == 1.0
    assert weights[DEPTH.name].item() == 0.25


@pytest.mark.parametrize(
    "weights, fragment",
    [
        ({"normals": 1.0}, "unknown task"),
        ({DEPTH.name: -1.0}, ">= 0"),
        ({DEPTH.name: float("nan")}, ">= 0"),
        ({DEPTH.name: "heavy"}, "not a number"),
        ({SEMSEG.name: 0.0, DEPTH.name: 0.0}, "all loss weights are zero"),
    ],
)
def test_bad_weights_are_user_errors(weights, fragment):
    with pytest.raises(UserError, match=fragment):
        weighting("fixed", weights)


def test_unknown_method_and_option_are_user_errors():
    with pytest.raises(UserError, match="unknown loss weighting"):
        weighting("gradnorm")
    with pytest.raises(UserError, match="does not take"):
        weighting("fixed", temperature=2.0)
    with pytest.raises(UserError, match="does not take"):
        weighting("dwa", init_log_var=0.0)
    with pytest.raises(UserError, match="temperature"):
        weighting("dwa", temperature=0.0)


def test_weighting_needs_tasks():
    with pytest.raises(ValueError, match="at least one task"):
        build_balancer("fixed")


def test_missing_task_loss_is_an_error():
    w = weighting("fixed")
    with pytest.raises(KeyError):
        w({SEMSEG.name: torch.tensor(1.0)})


def test_uncertainty_total_and_gradients_match_kendall_formula():
    w = weighting("uncertainty", init_log_var={SEMSEG.name: 0.3, DEPTH.name: -0.2})
    assert isinstance(w, UncertaintyWeighting)
    # the optimizer of an owning module must see the log variances
    assert any(p is w.log_vars for p in w.parameters())
    ls, ld = 1.7, 0.6
    total, weights = w(losses(ls, ld))
    total.backward()
    s_s, s_d = 0.3, -0.2
    # classification: L/sigma^2 + log sigma (s = log sigma^2); the default depth loss is
    # L1, a Laplace likelihood: L/b + log b (s = log b)
    expected = math.exp(-s_s) * ls + 0.5 * s_s + math.exp(-s_d) * ld + s_d
    assert total.item() == pytest.approx(expected, rel=1e-6)
    grad = dict(zip(TASK_NAMES, w.log_vars.grad.tolist(), strict=True))
    assert grad[SEMSEG.name] == pytest.approx(-math.exp(-s_s) * ls + 0.5, rel=1e-5)
    assert grad[DEPTH.name] == pytest.approx(-math.exp(-s_d) * ld + 1.0, rel=1e-5)
    assert weights[SEMSEG.name].item() == pytest.approx(math.exp(-s_s), rel=1e-6)
    assert weights[DEPTH.name].item() == pytest.approx(math.exp(-s_d), rel=1e-6)
    assert not weights[SEMSEG.name].requires_grad


NORMALS_SPEC = {"kind": "normals", "encoding": "rgb8"}

# Each loss's likelihood, per pixel, in its natural scale parameter, and the scale that
# minimises it for a loss L (by d/d scale = 0), written out here from the densities:
#   Gaussian  L/(2 sigma^2) + log sigma        -> sigma^2 = L      weight 1/(2 sigma^2)
#   Laplace   L/b + log b                      -> b = L            weight 1/b
#   softmax   L/sigma^2 + log sigma (Kendall)  -> sigma^2 = 2 L    weight 1/sigma^2
#   vMF       kappa L - log kappa              -> kappa = 1/L      weight kappa
#   Laplace on the sphere  L/b + 2 log b       -> b = L/2          weight 1/b
# as (s at the optimum = log of the scale the implementation learns, weight there).
OPTIMA = {
    "gaussian": lambda L: (math.log(L), 1 / (2 * L)),
    "laplace": lambda L: (math.log(L), 1 / L),
    "softmax": lambda L: (math.log(2 * L), 1 / (2 * L)),
    "vmf": lambda L: (-math.log(1 / L), 1 / L),
    "sphere": lambda L: (math.log(L / 2), 2 / L),
}

LOSS_CASES = [
    # (spec, task options, likelihood of OPTIMA)
    (legacy_task_specs()["semseg"], {}, "softmax"),
    (legacy_task_specs()["depth"], {"loss": "l1"}, "laplace"),
    (legacy_task_specs()["depth"], {"loss": "l2"}, "gaussian"),
    (legacy_task_specs()["depth"], {"loss": "silog"}, "laplace"),  # degree 1, like L1
    (NORMALS_SPEC, {"loss": "l1"}, "sphere"),
    (NORMALS_SPEC, {"loss": "cosine"}, "vmf"),
]


@pytest.mark.parametrize("spec, options, likelihood", LOSS_CASES)
@pytest.mark.parametrize("loss", [0.05, 1.0, 7.5])
def test_uncertainty_optimum_of_the_log_scale_is_the_likelihoods(spec, options, likelihood, loss):
    """The per-task objective's minimiser over s (the zero of the implementation's
    gradient) is the maximum-likelihood scale of the loss's likelihood, and the effective
    weight there is the likelihood's.

    Tolerance: float64 throughout; at the closed-form s the gradient c exp(-s) L - r is a
    difference of two O(1) numbers, ~1e-15; 1e-9 leaves room and fails for any factor or
    regulariser off by more than that.
    """
    task = build_task("t", spec, options)
    w = build_balancer("uncertainty", tasks=[task]).double()
    s_opt, weight_opt = OPTIMA[likelihood](loss)
    with torch.no_grad():
        w.log_vars.fill_(s_opt)
    total, eff = w.combine(torch.tensor([loss], dtype=torch.float64))
    (grad,) = torch.autograd.grad(total, w.log_vars)
    assert abs(float(grad[0])) < 1e-9
    assert float(eff[0].detach()) == pytest.approx(weight_opt, rel=1e-9)
    # a minimum, not a maximum: the objective is larger on both sides
    for step in (-0.1, 0.1):
        with torch.no_grad():
            w.log_vars.fill_(s_opt + step)
        beside, _ = w.combine(torch.tensor([loss], dtype=torch.float64))
        assert float(beside.detach()) > float(total.detach())


def test_uncertainty_factor_follows_the_depth_loss_option():
    """The same task kind weighs differently under another configured loss."""
    l1, l2 = (
        build_tasks(legacy_task_specs(), {"depth": {"loss": k}})[1].likelihood for k in ("l1", "l2")
    )
    assert (l1.factor, l1.regulariser) == (1.0, 1.0)
    assert (l2.factor, l2.regulariser) == (0.5, 0.5)


def dwa_reference(history: list[list[float]], temperature: float, k: int = 2) -> np.ndarray:
    """Liu et al. 2019, eq. for lambda_k(t), written independently in numpy."""
    if len(history) < 2:
        return np.ones(k)
    r = np.asarray(history[-1]) / np.asarray(history[-2])
    e = np.exp(r / temperature)
    return k * e / e.sum()


def test_dwa_follows_formula_on_hand_example():
    w = weighting("dwa", temperature=2.0)
    assert isinstance(w, DynamicWeightAveraging)
    epochs = [[2.0, 4.0], [1.0, 3.0], [0.9, 1.5]]
    seen: list[list[float]] = []
    for epoch_means in epochs:
        # equal weights while fewer than two epochs are complete
        got = np.array([w.current_weights()[n] for n in TASK_NAMES])
        np.testing.assert_allclose(got, dwa_reference(seen, 2.0), rtol=1e-6)
        w.on_epoch_end(dict(zip(TASK_NAMES, epoch_means, strict=True)))
        seen.append(epoch_means)
    got = np.array([w.current_weights()[n] for n in TASK_NAMES])
    np.testing.assert_allclose(got, dwa_reference(seen, 2.0), rtol=1e-6)
    # hand check of the last step: r = (0.9, 0.5); the task whose loss fell least
    # (semseg) gets the larger weight, and the weights sum to K
    assert got[0] > 1 > got[1]
    assert got.sum() == pytest.approx(2.0)
    r = np.array([0.9 / 1.0, 1.5 / 3.0])
    assert got[0] == pytest.approx(2 * math.exp(r[0] / 2) / np.exp(r / 2).sum(), rel=1e-6)


def test_dwa_accumulates_training_losses_only():
    w = weighting("dwa", temperature=1.0)
    w.train()
    for ls, ld in [(2.0, 1.0), (4.0, 3.0)]:  # epoch 1 means (3, 2)
        w(losses(ls, ld))
    w.eval()
    w(losses(100.0, 100.0))  # validation must not count
    w.train()
    w.on_epoch_end()
    for ls, ld in [(1.5, 2.0), (1.5, 2.0), (1.5, 2.0)]:  # epoch 2 means (1.5, 2)
        w(losses(ls, ld))
    w(losses(float("nan"), 1.0))  # a non-finite step must not poison the averages
    w.on_epoch_end()
    got = np.array([w.current_weights()[n] for n in TASK_NAMES])
    np.testing.assert_allclose(got, dwa_reference([[3.0, 2.0], [1.5, 2.0]], 1.0), rtol=1e-6)
    # the weights are the ones forward applies
    total, _ = w(losses(1.0, 1.0))
    assert total.item() == pytest.approx(got.sum(), rel=1e-6)


def test_dwa_epoch_without_steps_is_ignored():
    w = weighting("dwa")
    w.on_epoch_end()
    assert int(w.epochs_done) == 0


def test_dwa_state_survives_state_dict_round_trip():
    a = weighting("dwa", temperature=2.0)
    a.on_epoch_end({SEMSEG.name: 2.0, DEPTH.name: 4.0})
    a.train()
    a(losses(1.0, 1.0))  # a partially accumulated epoch, as in a mid-epoch checkpoint
    b = weighting("dwa", temperature=2.0)
    b.load_state_dict(a.state_dict())
    for m in (a, b):
        m.on_epoch_end()
    assert a.current_weights() == b.current_weights()
    assert a.current_weights()[SEMSEG.name] != 1.0


def test_uncertainty_state_survives_state_dict_round_trip():
    a = weighting("uncertainty")
    with torch.no_grad():
        a.log_vars.copy_(torch.tensor([0.5, -1.0]))
    b = weighting("uncertainty")
    b.load_state_dict(a.state_dict())
    assert a.current_weights() == b.current_weights()
    assert b.current_weights()[SEMSEG.name] == pytest.approx(math.exp(-0.5), rel=1e-6)


def run_epoch(w, epoch: int, steps: list[tuple[float, float]], close: bool = True) -> None:
    w.train()
    w.on_epoch_start(epoch)
    for ls, ld in steps:
        w(losses(ls, ld))
    if close:
        w.on_epoch_end()


EPOCHS = [[(2.0, 1.0), (4.0, 3.0)], [(1.5, 2.0), (1.0, 2.5)], [(1.0, 1.0), (0.5, 2.0)]]


def reference_run() -> dict[str, float]:
    w = weighting("dwa")
    for e, steps in enumerate(EPOCHS):
        run_epoch(w, e, steps)
    return w.current_weights()


def test_dwa_resume_from_mid_epoch_checkpoint_is_exact():
    a = weighting("dwa")
    run_epoch(a, 0, EPOCHS[0])
    run_epoch(a, 1, EPOCHS[1][:1], close=False)  # killed mid-epoch 1
    b = weighting("dwa")
    b.load_state_dict(a.state_dict())
    run_epoch(b, 1, EPOCHS[1][1:])  # the resumed epoch 1 starts again at epoch index 1
    run_epoch(b, 2, EPOCHS[2])
    assert b.current_weights() == pytest.approx(reference_run(), rel=1e-12)


def test_dwa_resume_from_checkpoint_taken_before_epoch_end_hook_is_exact():
    a = weighting("dwa")
    run_epoch(a, 0, EPOCHS[0])
    run_epoch(a, 1, EPOCHS[1], close=False)  # saved after the last step, hook not yet run
    b = weighting("dwa")
    b.load_state_dict(a.state_dict())
    run_epoch(b, 2, EPOCHS[2])  # on_epoch_start(2) closes epoch 1 first
    assert b.current_weights() == pytest.approx(reference_run(), rel=1e-12)
    assert int(b.epochs_done) == 3
