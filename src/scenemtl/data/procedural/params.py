"""Parameters of a generated dataset, and where it is cached."""

from __future__ import annotations

import hashlib
import json
import numbers
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from scenemtl.data.format import (
    DEPTH_ENCODINGS,
    DISPARITY8,
    DISPARITY8_MAX_M,
    DISPARITY8_MIN_M,
    encodable_range,
)
from scenemtl.errors import UserError

GENERATOR_NAME = "scenemtl.data.procedural"
GENERATOR_VERSION = "4"
"""Bump whenever the images a given set of parameters produces change, so that cached
datasets made by an older generator are not reused."""

DEPTH_MIN_M = DISPARITY8_MIN_M
"""Nearer surfaces are clipped to this depth (MiniScapes' range starts at 4 m)."""

MIN_SIDE, MAX_SIDE = 8, 4096

BASE_TASKS: tuple[str, ...] = ("semseg", "depth")
"""What every generated dataset holds (the MiniScapes layout needs both)."""
OPTIONAL_TASKS: tuple[str, ...] = ("normals", "boundaries", "human_parts")
"""What a generated dataset may hold besides (``--tasks semseg depth normals boundaries
human_parts``)."""
MAX_SPLIT = 10_000_000


@dataclass(frozen=True)
class SynthParams:
    """What to generate. Everything that changes the output is here (and in the cache key).

    Attributes:
        train, val, test: number of images per split.
        size: (height, width) in pixels.
        seed: dataset seed; image i of split s is a pure function of (seed, s, i).
        depth_encoding: ``"disparity8"`` (MiniScapes code, 4-300 m) or ``"meters16"``.
        jpeg_quality: quality of the RGB JPEGs (1-100).
        test_gt: whether the test split gets labels and depth (a grader needs them).
        tasks: the targets rendered: ``semseg`` and ``depth`` always, ``normals``,
            ``boundaries`` and ``human_parts`` optionally; kept in that order. Part of the
            cache key, but left out of :meth:`to_json` when it is the default, so
            datasets without them keep the key (and cache folder) they had before
            they existed.
    """

    train: int = 2000
    val: int = 250
    test: int = 250
    size: tuple[int, int] = (128, 256)
    seed: int = 0
    depth_encoding: str = DISPARITY8
    jpeg_quality: int = 90
    test_gt: bool = True
    tasks: tuple[str, ...] = BASE_TASKS

    def __post_init__(self) -> None:
        for name in ("train", "val", "test"):
            n = getattr(self, name)
            if not _is_int(n) or not 0 <= n <= MAX_SPLIT:
                raise UserError(f"{name} must be an integer in 0..{MAX_SPLIT}, got {n!r}")
            object.__setattr__(self, name, int(n))
        if self.train + self.val + self.test == 0:
            raise UserError("nothing to generate: train, val and test are all 0")
        size = self.size
        if (
            not isinstance(size, (tuple, list))
            or len(size) != 2
            or not all(_is_int(v) and MIN_SIDE <= v <= MAX_SIDE for v in size)
        ):
            raise UserError(
                f"size must be (height, width) with sides in {MIN_SIDE}..{MAX_SIDE}, got {size!r}"
            )
        object.__setattr__(self, "size", (int(size[0]), int(size[1])))
        if not _is_int(self.seed) or self.seed < 0:
            raise UserError(f"seed must be a non-negative integer, got {self.seed!r}")
        object.__setattr__(self, "seed", int(self.seed))
        if self.depth_encoding not in DEPTH_ENCODINGS:
            known = ", ".join(DEPTH_ENCODINGS)
            raise UserError(f"depth encoding must be one of {known}, got {self.depth_encoding!r}")
        q = self.jpeg_quality
        if not _is_int(q) or not 1 <= q <= 100:
            raise UserError(f"jpeg_quality must be an integer in 1..100, got {q!r}")
        object.__setattr__(self, "jpeg_quality", int(q))
        if not isinstance(self.test_gt, bool):
            raise UserError(f"test_gt must be true or false, got {self.test_gt!r}")
        tasks = self.tasks
        known = (*BASE_TASKS, *OPTIONAL_TASKS)
        if isinstance(tasks, str) or not all(isinstance(t, str) for t in tasks):
            raise UserError(f"tasks must be a list of task names, got {tasks!r}")
        unknown = [t for t in tasks if t not in known]
        if unknown:
            raise UserError(f"the generator renders {', '.join(known)}; not {unknown[0]!r}")
        missing = [t for t in BASE_TASKS if t not in tasks]
        if missing:
            raise UserError(
                f"tasks must include {' and '.join(BASE_TASKS)} (the dataset layout holds "
                f"both); {missing[0]!r} is missing"
            )
        object.__setattr__(self, "tasks", tuple(t for t in known if t in tasks))

    @property
    def splits(self) -> dict[str, int]:
        return {"train": self.train, "val": self.val, "test": self.test}

    @property
    def depth_range_m(self) -> tuple[float, float]:
        """The depth range images are clipped to: [4, 300] m, or less if the encoding
        cannot represent 300 m."""
        return DEPTH_MIN_M, min(DISPARITY8_MAX_M, encodable_range(self.depth_encoding)[1])

    def has_gt(self, split: str) -> bool:
        return split != "test" or self.test_gt

    @property
    def extra_tasks(self) -> tuple[str, ...]:
        """The optional targets rendered (of :data:`OPTIONAL_TASKS`, e.g. ``()``)."""
        return tuple(t for t in self.tasks if t not in BASE_TASKS)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["size"] = list(self.size)
        if self.tasks == BASE_TASKS:
            del d["tasks"]  # the key of every dataset without normals stays as it was
        else:
            d["tasks"] = list(self.tasks)
        return d

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SynthParams:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise UserError(f"unknown generator parameter(s): {', '.join(sorted(unknown))}")
        d = dict(data)
        for key in ("size", "tasks"):
            if key in d and isinstance(d[key], list):
                d[key] = tuple(d[key])
        return cls(**d)

    def key(self) -> str:
        """Short hash of the parameters and the generator version (the cache key)."""
        blob = json.dumps(
            {"generator": GENERATOR_NAME, "version": GENERATOR_VERSION, "params": self.to_json()},
            sort_keys=True,
        )
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    def name(self) -> str:
        h, w = self.size
        return f"synth-{h}x{w}-{self.key()}"


def _is_int(v: object) -> bool:
    # numpy integers count (they register as Integral); booleans do not.
    return isinstance(v, numbers.Integral) and not isinstance(v, (bool, np.bool_))


def data_home() -> Path:
    """``$SCENEMTL_DATA``, or ``~/.cache/scenemtl``."""
    env = os.environ.get("SCENEMTL_DATA")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "scenemtl"


def default_root(params: SynthParams) -> Path:
    """Where the dataset of ``params`` is cached: one folder per parameter set."""
    return data_home() / params.name()
