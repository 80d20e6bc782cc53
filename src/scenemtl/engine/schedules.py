"""Learning-rate schedules: factors LambdaLR multiplies every group's initial rate by.

The per-step schedules (:class:`PolyFactor`, :class:`CosineFactor`) start with an optional
linear warm-up, as MAE, BEiT and the Hugging Face schedules do: ``step / warmup`` for
``step < warmup`` (0 at the first step, the full rate after ``warmup`` steps), then the
decay over the remaining ``total - warmup`` steps.

They are callable objects holding plain numbers rather than closures, so that LambdaLR
stores their state in checkpoints (a resumed run keeps the schedule it started with) and a
weights-only load reads it back. A checkpoint written before warm-up existed has no
``warmup`` entry: the object keeps the one it was built with (0 for such a run's config).
"""

from __future__ import annotations

import math

from scenemtl.errors import UserError


def warmup_factor(step: int, warmup: int) -> float | None:
    """``step / warmup`` during the warm-up, None after it (and without one)."""
    return step / warmup if step < warmup else None


def decay_progress(step: int, warmup: int, total: int) -> float:
    """Fraction in [0, 1] of the decay phase (after ``warmup`` of ``total`` steps) done."""
    return min(max(step - warmup, 0) / max(total - warmup, 1), 1.0)


class PolyFactor:
    """``max((1 - p) ** power, floor)`` with ``p`` the fraction of the decay phase done,
    after a linear warm-up of ``warmup`` steps (``p = step / total`` without one).

    Args:
        total: number of optimizer steps of the whole run
            (``trainer.estimated_stepping_batches``).
        power: poly exponent (0.9 in DeepLab).
        floor: smallest multiplier, i.e. ``lr_floor / lr``.
        warmup: optimizer steps of linear warm-up (0 = none).
    """

    def __init__(self, total: int, power: float, floor: float, warmup: int = 0) -> None:
        self.total = max(int(total), 1)
        self.power = float(power)
        self.floor = float(floor)
        self.warmup = int(warmup)

    def __call__(self, step: int) -> float:
        warm = warmup_factor(step, self.warmup)
        if warm is not None:
            return warm
        progress = decay_progress(step, self.warmup, self.total)
        return max((1.0 - progress) ** self.power, self.floor)


class CosineFactor:
    """``floor + (1 - floor) * (1 + cos(pi * p)) / 2`` with ``p`` the fraction of the decay
    phase done, after a linear warm-up of ``warmup`` steps: MAE's and timm's half-cycle
    cosine from the base rate down to ``lr_floor`` at the last step (no restarts).

    Args:
        total: number of optimizer steps of the whole run.
        floor: the multiplier at the end, ``lr_floor / lr``.
        warmup: optimizer steps of linear warm-up (0 = none).
    """

    def __init__(self, total: int, floor: float, warmup: int = 0) -> None:
        self.total = max(int(total), 1)
        self.floor = float(floor)
        self.warmup = int(warmup)

    def __call__(self, step: int) -> float:
        warm = warmup_factor(step, self.warmup)
        if warm is not None:
            return warm
        progress = decay_progress(step, self.warmup, self.total)
        return self.floor + (1.0 - self.floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


class StepFactor:
    """``gamma ** (number of milestones <= epoch)``: the multiplier of a step schedule.

    The MTAN protocol (Liu et al. 2019, kept by Nash-MTL, CAGrad, FAMO): Adam at 1e-4,
    halved after 100 of 200 epochs, i.e. ``milestones=[100], gamma=0.5``. Stepped once
    per epoch; a callable object so that checkpoints keep it (see :class:`PolyFactor`).

    Args:
        milestones: epochs (0-based counts of finished epochs) at which the rate is
            multiplied by ``gamma``.
        gamma: the factor, in (0, 1].
    """

    def __init__(self, milestones: list[int], gamma: float) -> None:
        self.milestones = sorted(int(m) for m in milestones)
        self.gamma = float(gamma)

    def __call__(self, epoch: int) -> float:
        return self.gamma ** sum(1 for m in self.milestones if epoch >= m)


def check_warmup(schedule: str, steps: int, fraction: float) -> None:
    """``model.lr_warmup_steps`` (an integer >= 0) or ``model.lr_warmup_fraction`` (in
    [0, 1)), not both, and only before a per-step schedule. One UserError line."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise UserError(f"model.lr_warmup_steps must be an integer >= 0, got {steps!r}")
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)):
        raise UserError(f"model.lr_warmup_fraction must be a number in [0, 1), got {fraction!r}")
    if not 0 <= fraction < 1:
        raise UserError(f"model.lr_warmup_fraction must be in [0, 1), got {fraction!r}")
    if steps and fraction:
        raise UserError("model.lr_warmup_steps and model.lr_warmup_fraction: give one, not both")
    if (steps or fraction) and schedule == "step":
        raise UserError(
            "model.lr_warmup_*: warm-up is counted in optimizer steps; it precedes the poly "
            "or cosine schedule, not the per-epoch step schedule"
        )


def warmup_steps(steps: int, fraction: float, total: int) -> int:
    """The warm-up in optimizer steps for a run of ``total`` steps; refuses (one line) a
    warm-up that would leave no step of decay."""
    warmup = steps or round(fraction * total)
    if warmup >= total > 0:
        raise UserError(
            f"model.lr_warmup_*: {warmup} warm-up steps leave none of the run's {total} "
            "optimizer steps to decay; shorten the warm-up"
        )
    return warmup
