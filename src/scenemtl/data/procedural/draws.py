"""Discrete random draws, as ``numpy.random.Generator.choice`` makes them but cheaper.

``Generator.choice`` validates its arguments on every call (~15-20 us), which adds up
over the few hundred draws of a scene. These functions consume the generator's stream
exactly as ``choice`` does (``tests/data/test_procedural.py`` checks it), so scenes stay
the same:

- with probabilities, ``choice`` draws one ``random()`` and searches it in the
  normalized cumulative sum of ``p`` (``cumsum``, then divided by its last entry);
- without, it draws ``integers(0, len(options))``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

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
