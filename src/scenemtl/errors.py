"""Errors caused by user input.

The CLI turns every :class:`UserError` into one line on stderr and exit status 1 (2 for a
:class:`UsageError`); anything else is a bug and keeps its traceback.
"""


class UserError(Exception):
    """Bad input from the user: a path, a file's content, a config value."""


class DataFormatError(UserError):
    """A dataset on disk does not follow the MiniScapes layout."""


class UsageError(UserError):
    """A command line that does not parse (unknown option, a value of the wrong type):
    exit status 2, as for argparse's usage errors."""

    exit_status = 2


class TrainingDiverged(UserError):
    """Training produced a non-finite loss, weight or prediction; the message names the
    step and what went non-finite. ``run.json`` records the run as ``diverged``."""


def raised_in(error: BaseException, packages: tuple[str, ...]) -> bool:
    """Whether the innermost frame of ``error``'s traceback lies in one of the top-level
    ``packages`` (e.g. ``("lightning",)``): a library's ValueError about the arguments it
    was handed means bad input, the same error from scenemtl's code a bug."""
    import traceback
    from pathlib import Path

    frames = traceback.extract_tb(error.__traceback__)
    if not frames:
        return False
    parts = Path(frames[-1].filename).parts
    return any(p in parts for p in packages)


def one_line(exc: BaseException) -> str:
    """The message of ``exc`` as the one line the CLI prints.

    A DataLoader worker re-raises an exception in the main process with the worker's
    formatted traceback as its message ("Caught DataFormatError in DataLoader worker
    process 0. Original Traceback ..."): the original message is recovered from its last
    line. Any remaining line breaks become "; ".
    """
    text = str(exc)
    if "\nOriginal Traceback" in text:
        prefix = f"{type(exc).__module__}.{type(exc).__qualname__}: "
        at = text.rfind("\n" + prefix)
        text = text[at + 1 + len(prefix) :] if at >= 0 else text.rstrip().splitlines()[-1]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return "; ".join(lines) if lines else type(exc).__name__
