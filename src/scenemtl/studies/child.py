"""``python -m scenemtl.studies.child fit ...``: a study's run, tied to its worker.

The same as ``scenemtl fit ...``, except that on Linux the run is killed when the worker
that started it dies (``PR_SET_PDEATHSIG``): a retried trial must never find the dead
worker's run still training into the same folder.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    parent = os.environ.get("SCENEMTL_PARENT_PID")
    if not sys.platform.startswith("linux") or parent is None:
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        return
    if str(os.getppid()) != parent:  # the worker died before prctl took effect
        os._exit(1)


if __name__ == "__main__":
    _die_with_parent()
    from scenemtl.cli import main

    main(sys.argv[1:])
