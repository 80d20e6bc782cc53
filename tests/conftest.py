"""Shared fixtures: small datasets written by the tests themselves."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

# Lightning gives its loggers a StreamHandler bound to sys.stderr when it is first imported.
# Imported inside a test that captures stderr (capsys), the handler would keep that test's
# stream, closed once the test ends, and every later test's Lightning log line would print a
# "--- Logging error ---" traceback. Imported here, it binds to the session's stderr.
import lightning.pytorch  # noqa: F401
import numpy as np
import pytest

from scenemtl.data.format import DISPARITY8, DatasetInfo, encodable_range, write_info, write_sample


def write_random_dataset(
    root: Path,
    sizes: dict[str, int] | None = None,
    image_size: tuple[int, int] = (24, 40),
    depth_encoding: str = DISPARITY8,
    test_gt: bool = True,
    seed: int = 0,
    num_classes: int = 19,
) -> DatasetInfo:
    """A tiny dataset with random RGB, labels (incl. ignore) and depth (incl. invalid).

    ``num_classes`` other than 19 writes a class table of that many made-up classes.
    """
    sizes = sizes or {"train": 4, "val": 2, "test": 2}
    rng = np.random.default_rng(seed)
    h, w = image_size
    lo, hi = encodable_range(depth_encoding)
    hi = min(hi, 300.0)
    for split, n in sizes.items():
        gt = test_gt or split != "test"
        for i in range(n):
            rgb = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            semseg = rng.integers(0, num_classes, (h, w)).astype(np.uint8)
            semseg[rng.random((h, w)) < 0.1] = 255
            depth = np.exp(rng.uniform(np.log(max(lo, 4.0)), np.log(hi), (h, w)))
            depth[: h // 6] = 0.0  # "sky"
            write_sample(
                root,
                split,
                i,
                rgb,
                semseg if gt else None,
                depth if gt else None,
                depth_encoding=depth_encoding,
                rgb_extension=".png",
                num_classes=num_classes,
            )
    info = DatasetInfo(
        name="random",
        image_size=image_size,
        splits={s: {"size": n, "gt": test_gt or s != "test"} for s, n in sizes.items()},
        depth_encoding=depth_encoding,
        depth_range_m=(max(lo, 4.0) if depth_encoding == DISPARITY8 else lo, hi),
        rgb_extension=".png",
        classes=[]
        if num_classes == 19
        else [
            {"name": f"class{i}", "color": [37 * i % 256, 91 * i % 256, 53 * i % 256]}
            for i in range(num_classes)
        ],
    )
    write_info(root, info)
    return info


@pytest.fixture
def random_dataset(tmp_path: Path) -> Path:
    root = tmp_path / "ds"
    write_random_dataset(root)
    return root


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory) -> Path:
    """A tiny dataset with statistics, shared by the tests that train or benchmark."""
    from scenemtl.data.stats import write_stats

    root = tmp_path_factory.mktemp("tiny") / "ds"
    write_random_dataset(root, sizes={"train": 8, "val": 4, "test": 4}, image_size=(32, 48))
    write_stats(root)
    return root


@pytest.fixture(scope="session", autouse=True)
def private_user_cache(tmp_path_factory) -> Iterator[Path]:
    """The suite's runs (and their child processes) cache into a folder of their own, not
    the user's ~/.cache (the bf16 probe of scenemtl.engine.precision writes there)."""
    cache = tmp_path_factory.mktemp("user-cache")
    old = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(cache)
    yield cache
    if old is None:
        os.environ.pop("XDG_CACHE_HOME", None)
    else:
        os.environ["XDG_CACHE_HOME"] = old
