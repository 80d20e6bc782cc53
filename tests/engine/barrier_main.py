"""``python -m tests.engine.barrier_main READY GO ARGV...``: ``scenemtl ARGV`` behind a
start line.

Imports everything first, creates the file READY, waits for the file GO, then runs
:func:`scenemtl.cli.main`: processes started this way begin their commands within
milliseconds of each other, whatever their import times.
"""

import sys
import time
from pathlib import Path

import scenemtl.commands.lightning  # noqa: F401  (the slow imports, before the line)
from scenemtl.cli import main

if __name__ == "__main__":
    ready, go, *argv = sys.argv[1:]
    Path(ready).touch()
    deadline = time.monotonic() + 300
    while not Path(go).exists():
        if time.monotonic() > deadline:
            sys.exit("barrier_main: no start signal")
        time.sleep(0.005)
    main(argv)
