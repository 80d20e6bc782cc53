"""Value types of command-line options, shared by every ``scenemtl`` subcommand.

Each raises ``argparse.ArgumentTypeError``, which argparse turns into one usage line.
"""

from __future__ import annotations

import argparse
import math
import re
from collections.abc import Callable

MAX_WORKERS = 256
"""Most worker threads or processes a command starts (``--workers``, ``data.num_workers``):
each costs memory, a process a whole interpreter."""

_SIZE = re.compile(r"\s*(\d+)\s*[xX]\s*(\d+)\s*")


def size_hw(text: str) -> tuple[int, int]:
    """``"128x256"`` -> ``(128, 256)``: height, then width, both >= 1."""
    m = _SIZE.fullmatch(text)
    if not m or int(m.group(1)) < 1 or int(m.group(2)) < 1:
        raise argparse.ArgumentTypeError(f"size must be HxW, e.g. 128x256, got {text!r}")
    return int(m.group(1)), int(m.group(2))


def size_at_most(max_pixels: int) -> Callable[[str], tuple[int, int]]:
    """:func:`size_hw` with at most ``max_pixels`` pixels (H x W), e.g. for the size of
    images a command will allocate: refused while parsing, before anything is made."""

    def parse(text: str) -> tuple[int, int]:
        h, w = size_hw(text)
        if h * w > max_pixels:
            raise argparse.ArgumentTypeError(
                f"size {h}x{w} has {h * w} pixels, more than the maximum {max_pixels}"
            )
        return h, w

    parse.__name__ = f"size<={max_pixels}px"
    return parse


def int_between(low: int, high: int) -> Callable[[str], int]:
    """An integer type with both bounds (a count that sizes work or memory)."""
    at_least = int_at_least(low)

    def parse(text: str) -> int:
        value = at_least(text)
        if value > high:
            raise argparse.ArgumentTypeError(f"expected an integer <= {high}, got {value}")
        return value

    parse.__name__ = f"int in {low}..{high}"
    return parse


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
