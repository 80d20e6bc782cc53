"""Learning-rate schedules, stepped once per optimizer step."""

from __future__ import annotations


class PolyFactor:
    """``max((1 - step / total) ** power, floor)``: the multiplier LambdaLR applies.

    A callable object rather than a closure so that LambdaLR stores its state (``total``
    among it) in checkpoints and a resumed run keeps the schedule it started with.

    Args:
        total: number of optimizer steps of the whole run
            (``trainer.estimated_stepping_batches``).
        power: poly exponent (0.9 in DeepLab).
        floor: smallest multiplier, i.e. ``lr_floor / lr``.
    """

    def __init__(self, total: int, power: float, floor: float) -> None:
        self.total = max(int(total), 1)
        self.power = float(power)
        self.floor = float(floor)

    def __call__(self, step: int) -> float:
        progress = min(step / self.total, 1.0)
        return max((1.0 - progress) ** self.power, self.floor)


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
