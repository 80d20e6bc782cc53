"""Value types of command-line options, shared by every ``scenemtl`` subcommand.

Each raises ``argparse.ArgumentTypeError``, which argparse turns into one usage line.
"""

from __future__ import annotations

import argparse
import math
import re
from collections.abc import Callable

_SIZE = re.compile(r"\s*(\d+)\s*[xX]\s*(\d+)\s*")


def size_hw(text: str) -> tuple[int, int]:
    """``"128x256"`` -> ``(128, 256)``: height, then width, both >= 1."""
    m = _SIZE.fullmatch(text)
    if not m or int(m.group(1)) < 1 or int(m.group(2)) < 1:
        raise argparse.ArgumentTypeError(f"size must be HxW, e.g. 128x256, got {text!r}")
    return int(m.group(1)), int(m.group(2))


def int_at_least(low: int) -> Callable[[str], int]:
    """An integer type with a lower bound, e.g. ``int_at_least(0)`` for counts."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {value}")
        return value

    parse.__name__ = f"int>={low}"
    return parse


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value
