"""Task balancing: how the per-task losses (or their gradients) become one update.

A method is one file with a :class:`~scenemtl.balancing.base.LossBalancer` subclass plus one
line in :data:`BALANCERS`; the gradient-level methods are torchjd aggregators and take one
line each. ``build_balancer(name, weights, tasks, **options)`` makes one, checking the
options. docs/balancing.md has the table (papers, cost, state, options).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any

from scenemtl.balancing import exact
from scenemtl.balancing.base import GRADIENT_LEVEL, LOSS_LEVEL, LossBalancer
from scenemtl.balancing.dwa import DynamicWeightAveraging
from scenemtl.balancing.famo import FAMOWeighting
from scenemtl.balancing.fixed import FixedWeighting
from scenemtl.balancing.gls import GeometricLossStrategy
from scenemtl.balancing.graddrop import GradDrop
from scenemtl.balancing.gradient import (
    SUM_SCALE,
    Aggregation,
    GradientBalancer,
    gradvac_subset,
    nash_solution,
    nash_subset,
)
from scenemtl.balancing.imtl_l import ImpartialLossScaling
from scenemtl.balancing.rlw import RandomLossWeighting
from scenemtl.balancing.scale_invariant import ScaleInvariantLoss
from scenemtl.balancing.uncertainty import UncertaintyWeighting
from scenemtl.errors import UserError

if TYPE_CHECKING:
    from scenemtl.tasks.base import Task


def _gradient(aggregation: Aggregation) -> Callable[..., GradientBalancer]:
    return partial(GradientBalancer, aggregation=aggregation)


def _rebuild_nash_problem(aggregator: Any) -> None:
    # torchjd builds Nash-MTL's convex problem from its state at the first step only; a
    # restored state past that step needs the problem built now (from the restored state).
    if aggregator.weighting.step:
        aggregator.weighting._init_optim_problem()


BALANCERS: dict[str, Callable[..., LossBalancer]] = {
    # loss level
    "fixed": FixedWeighting,
    "uncertainty": UncertaintyWeighting,
    "dwa": DynamicWeightAveraging,
    "rlw": RandomLossWeighting,
    "gls": GeometricLossStrategy,
    "scale_invariant": ScaleInvariantLoss,
    "imtl_l": ImpartialLossScaling,
    "famo": FAMOWeighting,
    # gradient level (torchjd aggregators; exact.* solve their problem exactly)
    "mean": _gradient(Aggregation("Mean", through_gramian=True)),
    "mgda": _gradient(Aggregation(exact.MGDA)),
    "pcgrad": _gradient(Aggregation("PCGrad", scale=SUM_SCALE)),
    "cagrad": _gradient(
        Aggregation(exact.CAGrad, {"c": 0.4}, scale=lambda k, o: k / (1 + float(o["c"])))
    ),
    "imtl_g": _gradient(Aggregation("IMTLG")),
    "graddrop": _gradient(Aggregation(GradDrop, {"generator": "pcg64"}, scale=SUM_SCALE)),
    "gradvac": _gradient(
        Aggregation(
            "GradVac",
            {"beta": 0.5},
            scale=SUM_SCALE,
            state=("gramian_weighting._phi_t", "gramian_weighting._state_key"),
            subset=gradvac_subset,
        )
    ),
    "aligned_mtl": _gradient(Aggregation("AlignedMTL", {"scale_mode": "min"})),
    "nash_mtl": _gradient(
        Aggregation(
            "NashMTL",
            {"max_norm": 1.0, "update_weights_every": 1, "optim_niter": 20},
            scale=SUM_SCALE,
            through_gramian=True,
            state=(
                "weighting.prvs_alpha",
                "weighting.step",
                "weighting.normalization_factor",
                "weighting.init_gtg",
            ),
            takes_num_tasks=True,
            extra="solvers",
            restored=_rebuild_nash_problem,
            task_weights=nash_solution,
            subset=nash_subset,
        )
    ),
    "upgrad": _gradient(Aggregation(exact.UPGrad)),
    "dualproj": _gradient(Aggregation(exact.DualProj)),
    "config": _gradient(Aggregation(exact.ConFIG, scale=SUM_SCALE)),
}

BALANCING_METHODS: tuple[str, ...] = tuple(BALANCERS)

TASK_GRADS_OF_AUTHORS: dict[str, str] = {"mgda": "weighted", "nash_mtl": "weighted"}
"""Default ``task_grads`` of the gradient-level methods whose authors' code gives the
task-specific parameters the method's weights (``sum_k alpha_k L_k``); the others'
authors give them the plain gradient. docs/balancing.md has the table with the sources."""


def accepted_options(method: str) -> dict[str, Any]:
    """Option name -> default of a method (``wrt`` and ``task_grads`` for every
    gradient-level one)."""
    factory = BALANCERS[method]
    if isinstance(factory, partial):
        return {
            **factory.keywords["aggregation"].options,
            "wrt": "parameters",
            "task_grads": TASK_GRADS_OF_AUTHORS.get(method, "plain"),
        }
    params = list(inspect.signature(factory).parameters.values())[2:]  # after weights, tasks
    return {
        p.name: p.default for p in params if p.kind is p.KEYWORD_ONLY or p.default is not p.empty
    }


def method_level(method: str) -> str:
    """``"loss"`` or ``"gradient"``."""
    factory = BALANCERS[method]
    return GRADIENT_LEVEL if isinstance(factory, partial) else LOSS_LEVEL


def build_balancer(
    method: str,
    weights: Mapping[str, float] | None = None,
    tasks: Sequence[Task] = (),
    **options: Any,
) -> LossBalancer:
    """Make a balancing method by name.

    Args:
        method: a key of :data:`BALANCERS`.
        weights: task name -> constant weight (missing = 1.0).
        tasks: the tasks.
        **options: the method's options (see :func:`accepted_options`).

    Raises:
        UserError: unknown method, an option the method does not take, a bad value.
    """
    if method not in BALANCERS:
        raise UserError(
            f"unknown loss weighting {method!r}; choose one of {', '.join(BALANCING_METHODS)}"
        )
    accepted = accepted_options(method)
    extra = sorted(set(options) - set(accepted))
    if extra:
        allowed = ", ".join(accepted) or "none"
        raise UserError(
            f"loss weighting {method!r} does not take option(s) {extra} (accepted: {allowed})"
        )
    if method_level(method) == GRADIENT_LEVEL:
        options.setdefault("task_grads", accepted["task_grads"])
    return BALANCERS[method](weights, tasks, **options)


__all__ = [
    "BALANCERS",
    "BALANCING_METHODS",
    "GRADIENT_LEVEL",
    "LOSS_LEVEL",
    "TASK_GRADS_OF_AUTHORS",
    "DynamicWeightAveraging",
    "FixedWeighting",
    "GradientBalancer",
    "LossBalancer",
    "UncertaintyWeighting",
    "accepted_options",
    "build_balancer",
    "method_level",
]
