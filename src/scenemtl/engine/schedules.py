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
