"""A stand-in for ``scenemtl.balancing.graddrop.Draws`` that hands out given draws, for
the GradDrop tests that compare with an exact solution (test_graddrop.py,
test_jacobian.py)."""

from __future__ import annotations

import torch


class GivenDraws:
    """Hands out ``draws`` in column order, in the types ``Draws`` gives: float64 for
    float64 rows, float32 for any other (half rows included)."""

    def __init__(self, draws: torch.Tensor) -> None:
        self.draws, self.used = draws, 0

    def __call__(self, device: torch.device | str = "cpu") -> GivenDraws:
        return self

    def take(self, n: int, dtype: torch.dtype) -> torch.Tensor:
        out = self.draws[self.used : self.used + n].to(
            torch.float64 if dtype == torch.float64 else torch.float32
        )
        self.used += n
        return out
