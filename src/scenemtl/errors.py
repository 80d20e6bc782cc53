"""Errors caused by user input.

The CLI turns every :class:`UserError` into one line on stderr and exit status 1;
anything else is a bug and keeps its traceback.
"""


class UserError(Exception):
    """Bad input from the user: a path, a file's content, a config value."""


class DataFormatError(UserError):
    """A dataset on disk does not follow the MiniScapes layout."""
