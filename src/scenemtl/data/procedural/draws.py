"""Discrete random draws, as ``numpy.random.Generator.choice`` makes them but cheaper.

``Generator.choice`` validates its arguments on every call (~15-20 us), which adds up
over the few hundred draws of a scene. These functions consume the generator's stream
exactly as ``choice`` does (``tests/data/test_procedural.py`` checks it), so scenes stay
the same:

- with probabilities, ``choice`` draws one ``random()`` and searches it in the
  normalized cumulative sum of ``p`` (``cumsum``, then divided by its last entry);
- without, it draws ``integers(0, len(options))``.

:class:`Draws` does the same for the layout's ~1500 scalar ``uniform(low, high)`` draws
per image.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, TypeVar

import numpy as np

T = TypeVar("T")


class Weighted:
    """``options[i]`` with probability ``p[i]``: ``Weighted(options, p).draw(rng)`` is
    ``rng.choice(options, p=p)`` (as a plain Python value)."""

    def __init__(self, options: Sequence[T], p: Sequence[float] | np.ndarray) -> None:
        cdf = np.asarray(p, dtype=np.float64).cumsum()
        cdf /= cdf[-1]
        if len(cdf) != len(options):
            raise ValueError("options and p must have the same length")
        self.options = list(options)
        self.cdf = cdf

    def draw(self, rng: np.random.Generator) -> T:
        return self.options[int(self.cdf.searchsorted(rng.random(), side="right"))]


def uniform(rng: np.random.Generator, options: Sequence[T]) -> T:
    """``rng.choice(options)`` (as a plain Python value)."""
    return options[int(rng.integers(0, len(options)))]


_PLAIN = (float, int, np.float64)


class Draws(np.random.Generator):
    """A ``numpy.random.Generator`` whose scalar ``uniform(low, high)`` costs ~0.5 instead
    of ~1 us: NumPy converts both bounds to arrays first. NumPy computes it as
    ``low + (high - low) * next_double()`` (``random_uniform``), and ``random()`` is one
    ``next_double()``, so the values and the stream are the same (tested); every other
    call, and bounds that are arrays, empty or reversed, go to NumPy."""

    def uniform(self, low: Any = 0.0, high: Any = 1.0, size: Any = None) -> Any:
        if size is None and type(low) in _PLAIN and type(high) in _PLAIN:
            span = float(high) - float(low)
            if 0.0 < span < math.inf:
                return float(low) + span * self.random()
        return super().uniform(low, high, size)
