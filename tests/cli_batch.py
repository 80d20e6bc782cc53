"""Run several ``scenemtl`` command lines in ONE child process, one after the other, as
the command would run each (``scenemtl.cli.main``): ``python -m tests.cli_batch FILE``
with FILE a JSON list of argument lists. Prints one JSON list of ``{"argv", "code",
"stdout", "stderr"}``, in order, on its last line of output.

For tests that run a whole sequence of commands on a package copy (tests/test_plugins.py):
one interpreter imports torch and Lightning once instead of once per command. A command
that raises instead of exiting has its traceback in its ``stderr``.
"""

from __future__ import annotations

import contextlib
import io
import json
import sys
import traceback


def run_batch(commands: list[list[str]]) -> list[dict]:
    from scenemtl.cli import main

    results = []
    for argv in commands:
        out, err = io.StringIO(), io.StringIO()
        code: object = 0
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                main(argv)
            except SystemExit as e:
                code = e.code
            except BaseException:  # a bug: the caller sees it as a traceback
                traceback.print_exc()
                code = "raised"
        results.append(
            {"argv": argv, "code": code, "stdout": out.getvalue(), "stderr": err.getvalue()}
        )
        if code != 0:
            break  # the next commands build on this one
    return results


if __name__ == "__main__":
    with open(sys.argv[1], encoding="utf-8") as f:
        batch = json.load(f)
    print("\n" + json.dumps(run_batch(batch)))
