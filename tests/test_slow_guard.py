"""The guard that keeps `make test-fast` free of fits and processes (tests/conftest.py),
run on small test files of its own (pytester, in this process). A stand-in for a fit is
watched instead of Trainer.fit, so nothing here trains or starts a process."""

from __future__ import annotations

import pytest

CONFTEST = """
from tests.conftest import (
    _watched,
    pytest_collection_modifyitems,
    pytest_fixture_setup,
    pytest_runtest_makereport,
    pytest_runtest_protocol,
)


class StandIn:
    @staticmethod
    def fit():
        return "fitted"


def pytest_configure(config):
    _watched(StandIn, "fit", "trains a stand-in")
"""

DECLARED = """
import pytest
from conftest import StandIn
from tests.helpers import slow_fixture


@slow_fixture(scope="module")
def checkpoint():
    return StandIn.fit()


@pytest.fixture
def folder(checkpoint):
    return checkpoint + "/folder"


def test_direct(checkpoint):
    assert checkpoint == "fitted"


def test_through_another_fixture(folder):
    assert folder == "fitted/folder"


def test_without_it():
    pass
"""

UNDECLARED = """
import pytest
from conftest import StandIn


@pytest.fixture(scope="module")
def checkpoint():
    return StandIn.fit()


@pytest.mark.slow
def test_first_user_marked(checkpoint):
    pass


def test_second_user_unmarked(checkpoint):
    pass
"""

BODY = """
import pytest
from conftest import StandIn


def test_fits_unmarked():
    StandIn.fit()


@pytest.mark.slow
def test_fits_marked():
    StandIn.fit()
"""


@pytest.fixture
def files(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_declared=DECLARED, test_undeclared=UNDECLARED, test_body=BODY)
    return pytester


def test_the_fast_tier_runs_no_fit_whoever_sets_a_fixture_up(files):
    """``-m "not slow"``: the users of a declared fixture are deselected, directly or
    through another fixture; an undeclared fitting fixture fails its unmarked user even
    though a marked test is its first user (the hole the guard had: the later users ran
    on the cached fit in the fast tier, unflagged); an unmarked test body that fits fails
    naming what it did."""
    fast = files.runpytest_inprocess("-m", "not slow", "-v")
    fast.assert_outcomes(passed=1, failed=1, errors=1, deselected=4)
    fast.stdout.fnmatch_lines_random(
        [
            "*test_declared.py::test_without_it PASSED*",
            "*test_undeclared.py::test_second_user_unmarked ERROR*",
            "*test_body.py::test_fits_unmarked FAILED*",
            "*fixture 'checkpoint' trains a stand-in but is not declared slow*",
            "*test_fits_unmarked trains a stand-in*not marked slow*",
        ]
    )


def test_the_whole_suite_runs_the_declared_fits_and_refuses_undeclared_ones(files):
    every = files.runpytest_inprocess("-v")
    every.assert_outcomes(passed=4, failed=1, errors=2)
    every.stdout.fnmatch_lines_random(
        [
            "*test_declared.py::test_direct PASSED*",
            "*test_declared.py::test_through_another_fixture PASSED*",
            "*test_body.py::test_fits_marked PASSED*",
            "*test_undeclared.py::test_first_user_marked ERROR*",
            "*test_undeclared.py::test_second_user_unmarked ERROR*",
        ]
    )
