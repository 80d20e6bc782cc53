"""Fixed weights: ``total = sum_k w_k L_k`` (the course's loss, and the baseline of all)."""

from __future__ import annotations

from scenemtl.balancing.base import LossBalancer


class FixedWeighting(LossBalancer):
    """``total = sum_k w_k L_k`` with the configured weights (default 1)."""
