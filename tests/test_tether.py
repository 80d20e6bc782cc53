"""A study's run dies with its worker (scenemtl.tether), an ordinary command never."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from scenemtl.tether import PARENT_PID_ENV, child_env

CODE = "from scenemtl.tether import tie_to_parent; tie_to_parent(); print('alive')"


def _run(env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, env=env)


def test_child_env_names_this_process():
    assert child_env({"A": "1"}) == {"A": "1", PARENT_PID_ENV: str(os.getpid())}


@pytest.mark.slow
def test_a_child_of_its_parent_lives_and_an_ordinary_process_is_untouched():
    assert _run(child_env()).stdout == "alive\n"
    plain = {k: v for k, v in os.environ.items() if k != PARENT_PID_ENV}
    assert _run(plain).stdout == "alive\n"


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux")
def test_a_child_whose_parent_is_gone_exits_at_once():
    # the variable names another process than the actual parent: that parent has died
    proc = _run({**os.environ, PARENT_PID_ENV: str(os.getpid() + 1_000_000)})
    assert proc.returncode == 1 and proc.stdout == ""
