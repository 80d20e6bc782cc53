"""Shared fixtures (small datasets written by the tests themselves), and the check that
keeps ``make test-fast`` fast; the plain helpers the tests use are in tests/helpers.py."""

from __future__ import annotations

import functools
import multiprocessing.process
import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

# Lightning gives its loggers a StreamHandler bound to sys.stderr when it is first imported.
# Imported inside a test that captures stderr (capsys), the handler would keep that test's
# stream, closed once the test ends, and every later test's Lightning log line would print a
# "--- Logging error ---" traceback. Imported here, it binds to the session's stderr.
import lightning.pytorch
import pytest

from tests.helpers import SLOW_FIXTURE, slow_fixture, tiny_config, write_random_dataset

pytest_plugins = ["pytester"]  # tests/test_slow_guard.py runs the guard on test files of its own


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


@slow_fixture(scope="session")
def tiny_fit(tmp_path_factory, tiny_root) -> tuple[Path, Path]:
    """(config, run folder) of one 1-epoch fit of the tiny config (a 16-wide ResNet-18
    joint model on ``tiny_root``), shared by every test that only reads a trained run:
    its checkpoint, metrics and config. A test may evaluate it into new versions of its
    run name; none changes ``version_0``."""
    from scenemtl.cli import main

    tmp = tmp_path_factory.mktemp("tiny_fit")
    cfg = tiny_config(tmp, tiny_root, **{"trainer.max_epochs": 1})
    with pytest.raises(SystemExit) as exc:
        main(["fit", "--config", str(cfg)])
    assert exc.value.code == 0
    return cfg, tmp / "runs" / "tiny" / "version_0"


@pytest.fixture(scope="session")
def tiny_ckpt(tiny_fit) -> Path:
    """best.ckpt of :func:`tiny_fit`."""
    return tiny_fit[1] / "checkpoints" / "best.ckpt"


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


# --------------------------------------------------------------------------------------
# The `slow` marker: every test that trains (Trainer.fit, also through `scenemtl fit`) or
# starts a process (subprocess, multiprocessing: DataLoader workers, DDP, `data synth`'s
# pool) carries it, and `make test-fast` runs the others. The watched calls are only
# recorded, never changed: the test runs as it would otherwise.
#
# - A test body that makes one without the marker fails, naming what it did.
# - A fixture that makes one must be declared with `tests.helpers.slow_fixture`, or its
#   setup fails, naming it (whichever test sets it up, marked or not: a module- or
#   session-scoped fixture is set up by its first user only, so watching the tests alone
#   would flag that one and let the later users run its fit in the fast tier).
# - Every test using a declared fixture, directly or through other fixtures, is marked
#   slow at collection (before `-m "not slow"` deselects).


class _Watch:
    """What the running unmarked test, and each fixture being set up, started."""

    item: pytest.Item | None = None
    seen: list[str] = []  # noqa: RUF012 (one list, reset per test)
    fixtures: list[list[str]] = []  # noqa: RUF012 (a stack: fixture setups nest)


def _watched(owner: type, name: str, what: str) -> None:
    original: Callable = getattr(owner, name)

    @functools.wraps(original)
    def watched(*args, **kwargs):
        seen = _Watch.fixtures[-1] if _Watch.fixtures else _Watch.seen
        if (_Watch.fixtures or _Watch.item is not None) and what not in seen:
            seen.append(what)
        return original(*args, **kwargs)

    setattr(owner, name, watched)


def _declared_slow(fixturedef: pytest.FixtureDef) -> bool:
    return bool(getattr(fixturedef.func, SLOW_FIXTURE, False))


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        info = getattr(item, "_fixtureinfo", None)
        defs = info.name2fixturedefs.values() if info is not None else ()
        if any(_declared_slow(d) for chain in defs for d in chain):
            item.add_marker(pytest.mark.slow)


@pytest.hookimpl(wrapper=True)
def pytest_fixture_setup(fixturedef: pytest.FixtureDef, request: pytest.FixtureRequest):
    _Watch.fixtures.append([])
    try:
        result = yield
    finally:
        seen = _Watch.fixtures.pop()
    if seen and not _declared_slow(fixturedef):
        try:
            pytest.fail(
                f"fixture {fixturedef.argname!r} {' and '.join(seen)} but is not declared "
                "slow: define it with @slow_fixture(...) from tests.helpers (its users are "
                "then marked slow)",
                pytrace=False,
            )
        except pytest.fail.Exception as e:
            # cached as a failed setup, so that every later user of a module or session
            # fixture fails the same way (not only the first)
            if fixturedef.cached_result is not None:
                key = fixturedef.cached_result[1]
                fixturedef.cached_result = (None, key, (e, e.__traceback__))
            raise
    return result


def pytest_configure(config: pytest.Config) -> None:
    _watched(lightning.pytorch.Trainer, "fit", "trains a model (Trainer.fit)")
    _watched(subprocess.Popen, "__init__", "starts a process (subprocess)")
    _watched(multiprocessing.process.BaseProcess, "start", "starts a process (multiprocessing)")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None):
    _Watch.item = None if item.get_closest_marker("slow") else item
    _Watch.seen = []
    yield
    _Watch.item = None


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    outcome = yield
    report = outcome.get_result()
    if _Watch.item is item and _Watch.seen and report.passed and call.when != "teardown":
        report.outcome = "failed"
        report.longrepr = (
            f"{item.nodeid} {' and '.join(_Watch.seen)} (maybe in a fixture it shares) but is "
            "not marked slow: add @pytest.mark.slow (make test-fast leaves such tests out)"
        )
        _Watch.seen = []
