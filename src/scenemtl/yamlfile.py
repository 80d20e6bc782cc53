"""Reading the YAML files users write (configs, study files): a missing file, text that
is not YAML or not UTF-8, and a top level that is not a mapping are each one line.

Every YAML text a user gives is bounded before anything is built from it: at most
:data:`MAX_YAML_BYTES` bytes, :data:`MAX_YAML_NODES` nodes *after* expanding aliases
(an alias counts as the whole node it names, so the "billion laughs" document of nine
aliases of nine aliases is refused after a few hundred bytes of parsing, not expanded),
and :data:`MAX_YAML_DEPTH` levels of nesting (deeper documents would end in a
RecursionError in PyYAML's recursive composer). An alias inside the node it names (a
recursive document) is refused too. The counting happens while PyYAML composes the node
graph, in which an alias is a reference: the expanded document never exists in memory.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from yaml.events import AliasEvent
from yaml.nodes import MappingNode, Node, SequenceNode

from scenemtl.errors import UserError

MAX_YAML_BYTES = 1 << 20
"""Largest YAML file (1 MiB; the largest config or study file of the repository is
under 8 KiB)."""
MAX_YAML_NODES = 100_000
"""Most nodes (scalars, lists, mappings) a document may have with its aliases expanded."""
MAX_YAML_DEPTH = 64
"""Deepest nesting of lists and mappings."""


class _Bounded(Exception):
    """A bound of this module exceeded (turned into a UserError naming the file)."""


class BoundedSafeLoader(yaml.SafeLoader):
    """PyYAML's safe loader that counts the expanded size and depth of what it composes.

    ``_weight`` maps each composed node to (nodes with aliases expanded, depth); a node's
    weight is known once all its children are composed, so an alias (a reference to an
    earlier node) adds its target's weight without being expanded.
    """

    def __init__(self, stream: Any) -> None:
        super().__init__(stream)
        self._weight: dict[int, tuple[int, int]] = {}
        self._keep: list[Node] = []  # keeps ids unique while they are keys of _weight
        self._level = 0

    def compose_node(self, parent: Node | None, index: Any) -> Node:
        if self.check_event(AliasEvent):
            anchor = self.peek_event().anchor
            target = self.anchors.get(anchor)
            if target is not None and id(target) not in self._weight:
                raise _Bounded(f"the alias *{anchor} is inside the node it names (recursive)")
            return super().compose_node(parent, index)
        self._level += 1
        if self._level > MAX_YAML_DEPTH:
            raise _Bounded(f"nested deeper than {MAX_YAML_DEPTH} levels")
        try:
            node = super().compose_node(parent, index)
        finally:
            self._level -= 1
        if isinstance(node, SequenceNode):
            children = list(node.value)
        elif isinstance(node, MappingNode):
            children = [n for pair in node.value for n in pair]
        else:
            children = []
        size, depth = 1, 1
        for child in children:
            child_size, child_depth = self._weight[id(child)]
            size += child_size
            depth = max(depth, child_depth + 1)
        if size > MAX_YAML_NODES:
            raise _Bounded(f"more than {MAX_YAML_NODES} nodes with its aliases expanded")
        if depth > MAX_YAML_DEPTH:
            raise _Bounded(f"nested deeper than {MAX_YAML_DEPTH} levels with its aliases expanded")
        self._weight[id(node)] = (size, depth)
        self._keep.append(node)
        return node


def load_yaml_text(text: str | bytes, where: str) -> Any:
    """The Python value of the YAML document ``text``, within this module's bounds.

    Args:
        text: the document (bytes are decoded as UTF-8).
        where: the file or option it came from, for the error line.

    Raises:
        UserError: ``<where>: not valid YAML (...)`` or ``<where>: YAML ... (bound)``.
    """
    _check_size(text, where)
    try:
        if isinstance(text, bytes):
            text = text.decode("utf-8")
        loader = BoundedSafeLoader(text)
        try:
            return loader.get_single_data()
        finally:
            loader.dispose()
    except _Bounded as e:
        raise UserError(f"{where}: YAML refused: {e}") from None
    except RecursionError:
        raise UserError(f"{where}: YAML refused: nested too deeply") from None
    except (yaml.YAMLError, UnicodeDecodeError, ValueError, OverflowError) as e:
        # ValueError: a scalar PyYAML's resolver accepted but Python refuses to build
        # (an integer of more than 4300 digits, a timestamp like 2020-13-45)
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"{where}: not valid YAML ({first})") from None


def _check_size(text: str | bytes, where: str) -> None:
    if len(text) > MAX_YAML_BYTES:
        raise UserError(f"{where}: larger than {MAX_YAML_BYTES} bytes, not read as YAML")


def check_yaml_bounds(text: str | bytes, where: str) -> None:
    """Refuse ``text`` if it exceeds this module's bounds; say nothing about its syntax.

    For YAML that another library then parses with its own rules (jsonargparse reads
    ``--config`` files and option values): only the bounds are checked here, by composing
    the node graph without building any value.

    Raises:
        UserError: ``<where>: YAML refused: <bound>``.
    """
    _check_size(text, where)
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError:
            return  # not text: the other parser's business too
    loader = BoundedSafeLoader(text)
    try:
        loader.get_single_node()
    except _Bounded as e:
        raise UserError(f"{where}: YAML refused: {e}") from None
    except RecursionError:
        raise UserError(f"{where}: YAML refused: nested too deeply") from None
    except yaml.YAMLError:
        pass  # the syntax is the other parser's business
    finally:
        loader.dispose()


def check_yaml_file_bounds(path: str | os.PathLike) -> None:
    """:func:`check_yaml_bounds` of the file ``path``, if it is one (a missing file is
    the reader's to report). Its size is checked before it is read."""
    p = Path(path)
    if not p.is_file():
        return
    check_yaml_bounds(_read_bounded(p), str(p))


def bound_jsonargparse_yaml() -> None:
    """Make jsonargparse (LightningCLI's parser) check :func:`check_yaml_bounds` before it
    parses any YAML (config files and option values). Idempotent."""
    from jsonargparse import get_loader, set_loader

    original = get_loader("yaml")
    if getattr(original, "_scenemtl_bounded", False):
        return

    def bounded(stream: Any) -> Any:
        if isinstance(stream, str):
            check_yaml_bounds(stream, "a YAML config file or option value")
        return original(stream)

    bounded._scenemtl_bounded = True  # type: ignore[attr-defined]
    set_loader("yaml", bounded, (yaml.YAMLError,))


def config_files(argv: Sequence[str]) -> list[str]:
    """The values of ``--config`` options in a LightningCLI command line."""
    found = []
    for i, arg in enumerate(argv):
        if arg == "--config" and i + 1 < len(argv):
            found.append(argv[i + 1])
        elif arg.startswith("--config="):
            found.append(arg.partition("=")[2])
    return found


def bound_lightning_yaml(argv: Sequence[str]) -> None:
    """Before a LightningCLI parser reads ``argv``: :func:`check_yaml_file_bounds` of
    its config files (first, so that the error line names the file), then
    :func:`bound_jsonargparse_yaml` for everything it parses later."""
    for path in config_files(argv):
        check_yaml_file_bounds(path)
    bound_jsonargparse_yaml()


def read_yaml_file(path: str | os.PathLike, what: str = "config file") -> Any:
    """The value of the YAML file ``path``: its size is checked before it is read.

    Raises:
        UserError: ``<what> not found: <path>``, or a problem of :func:`load_yaml_text`.
    """
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{what} not found: {p}")
    return load_yaml_text(_read_bounded(p), str(p))


def _read_bounded(p: Path) -> bytes:
    """The bytes of ``p``, refused above :data:`MAX_YAML_BYTES` before reading them."""
    with open(p, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size > MAX_YAML_BYTES:
            raise UserError(f"{p}: {size} bytes, larger than {MAX_YAML_BYTES}: not read as YAML")
        return f.read(size + 1)  # a file grown since ends up cut, hence invalid


def read_yaml_mapping(path: str | os.PathLike, what: str = "config file") -> dict[str, Any]:
    """The top-level mapping of the YAML file ``path`` (an empty file gives ``{}``); its
    keys are strings.

    Raises:
        UserError: ``<what> not found: <path>`` or ``<path>: <problem>``, one line.
    """
    p = Path(path)
    doc = read_yaml_file(p, what)
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise UserError(f"{p}: expected a mapping at the top level, got {type(doc).__name__}")
    bad = [k for k in doc if not isinstance(k, str)]
    if bad:
        raise UserError(f"{p}: top-level key {bad[0]!r} is not a string")
    return doc
