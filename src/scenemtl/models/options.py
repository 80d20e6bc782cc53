"""Options that a plug-in (an architecture, an encoder family) declares in its own file.

A plug-in declares its options as a dataclass, ``Options``, whose ``__post_init__``
checks each value with the ``check_*`` helpers below; :func:`parse_options` builds it
from the plain mapping of a config (``model.net.options``, ``model.net.encoder_options``)
and turns any problem into one :class:`~scenemtl.errors.UserError` line that names the
option as the user wrote it::

    @dataclass
    class Options:
        final_decoder_convs: int = 2

        def __post_init__(self) -> None:
            check_int(self, "final_decoder_convs", 0, 8)

This module imports nothing of scenemtl but the errors, so that the configuration, the
encoders and the architectures can all use it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from scenemtl.errors import UserError

T = TypeVar("T")


class OptionError(UserError):
    """A bad value of option ``key``; :func:`parse_options` adds where the option lives."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"{key}: {problem}")
        self.key = key
        self.problem = problem


@dataclass(frozen=True)
class NoOptions:
    """The options of a plug-in that has none."""


def option_names(options_type: type) -> list[str]:
    """The option names of an ``Options`` dataclass, in declaration order."""
    return [f.name for f in dataclasses.fields(options_type)]


def option_defaults(options_type: type) -> dict[str, Any]:
    """Option name -> default value of an ``Options`` dataclass (every field has one)."""
    return dataclasses.asdict(options_type())


def parse_options(
    options_type: type[T],
    values: Mapping[str, Any],
    owner: str,
    path: Callable[[str], str],
) -> T:
    """``options_type(**values)``, or one :class:`UserError` line.

    Args:
        options_type: the plug-in's ``Options`` dataclass.
        values: option name -> value, as read from a config (lists for tuples).
        owner: the plug-in as the error line names it ("mtan", "the resnet encoders").
        path: option name -> its place in the config as the user wrote it
            (``model.net.options.x``, or a flat ``model.net.x`` kept for compatibility).
    """
    known = option_names(options_type)
    for key in values:
        if key not in known:
            listed = ", ".join(known) if known else "none"
            raise UserError(f"{path(key)}: {owner} has no such option (its options: {listed})")
    try:
        return options_type(**values)
    except OptionError as e:
        raise UserError(f"{path(e.key)}: {e.problem}") from None


# --------------------------------------------------------------------------------------
# checks for ``Options.__post_init__``; each raises OptionError naming the option


def check_bool(options: object, key: str) -> None:
    value = getattr(options, key)
    if not isinstance(value, bool):
        raise OptionError(key, f"expected true or false, got {value!r}")


def check_choice(options: object, key: str, choices: Sequence[str]) -> None:
    value = getattr(options, key)
    if not isinstance(value, str) or value not in choices:
        raise OptionError(key, f"expected one of {', '.join(choices)}, got {value!r}")


def check_int(options: object, key: str, low: int, high: int) -> None:
    value = getattr(options, key)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise OptionError(key, f"expected an integer {low}..{high}, got {value!r}")


def check_positive_or_none(options: object, key: str) -> None:
    value = getattr(options, key)
    if value is not None and (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not 0 < value < float("inf")
    ):
        raise OptionError(key, f"expected a positive number or null, got {value!r}")


def check_flags(options: object, key: str, n: int, what: str) -> None:
    """``n`` true/false flags (a list from YAML becomes a tuple)."""
    value = getattr(options, key)
    if isinstance(value, list):
        value = tuple(value)
        object.__setattr__(options, key, value)
    if (
        not isinstance(value, tuple)
        or len(value) != n
        or not all(isinstance(v, bool) for v in value)
    ):
        raise OptionError(key, f"expected {n} true/false flags for {what}, got {value!r}")
