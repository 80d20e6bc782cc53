"""Names a user gives that become a folder or file name: one rule, checked in one place.

A run name (``--run.name``, or a config file's stem), a study's name, its presets, its
variants and its baseline tasks each become one path component below a root the user
chose (``--run.root``, ``--runs``). :func:`check_name` keeps them one component: a name is
1 to :data:`NAME_MAX` characters from ``A-Z a-z 0-9 _ - . = + , @ %``, starting with a
letter, a digit or ``_`` (names like ``lr=0.01``, ``exp+aug``, ``_base`` are common). So no
``/`` or ``\\``, no ``..`` or ``.``, no absolute path, no hidden file, no option-like
leading ``-``, no space or line break, no character a shell or a file system treats
specially. Anything else is
refused in one line; nothing is created first.
"""

from __future__ import annotations

import re
from typing import Any

from scenemtl.errors import UserError

NAME_MAX = 100
"""Longest name (a path component may have 255 bytes; a run folder adds ``version_N``)."""

_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.=+,@%-]*")


def is_name(value: Any) -> bool:
    """Whether ``value`` is a name by the rule of this module."""
    return isinstance(value, str) and len(value) <= NAME_MAX and _NAME.fullmatch(value) is not None


def check_name(value: Any, what: str) -> str:
    """``value`` if it is a name (see the module docstring).

    Args:
        value: what the user gave.
        what: how the error line calls it, e.g. ``--run.name`` or ``study.yaml: variants[0].name``.

    Raises:
        UserError: ``<what> <value> is not a name (...)``, one line.
    """
    if not is_name(value):
        shown = (
            repr(value) if not isinstance(value, str) or len(value) <= 120 else f"{value[:60]!r}..."
        )
        raise UserError(
            f"{what} {shown} is not a name: 1 to {NAME_MAX} letters, digits or any of _-.=+,@%, "
            "starting with a letter, digit or _ (a name becomes one folder below its root)"
        )
    return value
