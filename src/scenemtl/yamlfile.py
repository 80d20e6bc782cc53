"""Reading the YAML files users write (configs, study files): a missing file, text that
is not YAML or not UTF-8, and a top level that is not a mapping are each one line."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from scenemtl.errors import UserError


def read_yaml_mapping(path: str | os.PathLike, what: str = "config file") -> dict[str, Any]:
    """The top-level mapping of the YAML file ``path`` (an empty file gives ``{}``).

    Raises:
        UserError: ``<what> not found: <path>`` or ``<path>: <problem>``, one line.
    """
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{what} not found: {p}")
    try:
        doc = yaml.safe_load(p.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"{p}: not valid YAML ({first})") from None
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise UserError(f"{p}: expected a mapping at the top level, got {type(doc).__name__}")
    return doc
