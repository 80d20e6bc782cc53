"""Shared fixtures (small datasets written by the tests themselves); the plain helpers
they use are in tests/helpers.py."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

# Lightning gives its loggers a StreamHandler bound to sys.stderr when it is first imported.
# Imported inside a test that captures stderr (capsys), the handler would keep that test's
# stream, closed once the test ends, and every later test's Lightning log line would print a
# "--- Logging error ---" traceback. Imported here, it binds to the session's stderr.
import lightning.pytorch  # noqa: F401
import pytest

from tests.helpers import write_random_dataset


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
