"""Tying a child process's life to its parent's (a study's runs to their worker).

A study runs each of its runs as ``python -m scenemtl fit ...`` with
:data:`PARENT_PID_ENV` set to the worker's pid (:func:`child_env`). Such a child, on
Linux, is then killed when the worker dies (``PR_SET_PDEATHSIG``): a retried trial must
never find the dead worker's run still training into the same folder. Without the
variable (every ordinary ``scenemtl`` command) nothing changes.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from collections.abc import Mapping

PARENT_PID_ENV = "SCENEMTL_PARENT_PID"
PR_SET_PDEATHSIG = 1


def child_env(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a child that should die with this process."""
    return {**(os.environ if base is None else base), PARENT_PID_ENV: str(os.getpid())}


def tie_to_parent() -> None:
    """If this process was started by :func:`child_env`'s parent, die with it (Linux;
    elsewhere nothing happens). Exits at once if the parent is already gone."""
    parent = os.environ.get(PARENT_PID_ENV)
    if not sys.platform.startswith("linux") or parent is None:
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        return
    if str(os.getppid()) != parent:  # the parent died before prctl took effect
        os._exit(1)
