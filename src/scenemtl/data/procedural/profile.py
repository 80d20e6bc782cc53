"""Per-stage timing of the generator (``data synth --bench N --profile``).

The stages partition the work of one image: ``layout`` (the random scene),
``raycast`` (primary rays and hit-point geometry), ``shadows`` (sun shadow rays),
``shading`` (materials, light, haze, sky), ``camera`` (exposure, tone curve, blur,
noise, quantization), ``encode`` (JPEG/PNG encoding in memory) and ``write`` (files).
Timing is the worker's CPU time (``time.process_time``), summed over images: what the
stage costs, whatever else the machine runs (wall-clock stage times grow with the
load); a few hundred nanoseconds per stage, so it is always on.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

STAGES = ("layout", "raycast", "shadows", "shading", "camera", "encode", "write")


class StageTimes:
    """Seconds spent per stage, summed over the images timed."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = dict.fromkeys(STAGES, 0.0)
        self.images = 0

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Add the time spent inside the block to ``name``."""
        t0 = time.process_time()
        try:
            yield
        finally:
            self.seconds[name] += time.process_time() - t0

    def laps(self) -> Callable[[str], None]:
        """A stopwatch: each call ``lap(name)`` adds the time since the previous call (or
        since ``laps()``) to ``name``; for stages that follow one another in one function."""
        last = time.process_time()

        def lap(name: str) -> None:
            nonlocal last
            now = time.process_time()
            self.seconds[name] += now - last
            last = now

        return lap

    def add(self, other: StageTimes) -> None:
        """Accumulate another worker's times into these."""
        for name, s in other.seconds.items():
            self.seconds[name] = self.seconds.get(name, 0.0) + s
        self.images += other.images

    def table(self) -> str:
        """A Markdown table: ms per image and share of the timed total per stage."""
        total = sum(self.seconds.values())
        n = max(self.images, 1)
        lines = ["| stage | ms/image | share |", "|---|---:|---:|"]
        for name, s in self.seconds.items():
            lines.append(f"| {name} | {1000 * s / n:.1f} | {100 * s / max(total, 1e-12):.0f}% |")
        lines.append(f"| total | {1000 * total / n:.1f} | 100% |")
        return "\n".join(lines)
