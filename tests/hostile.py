"""The CLI contract under hostile input, shared by every command's tests.

A refused command exits non-zero, prints exactly one ``scenemtl: error:`` line on stderr
that names the culprit, no traceback, and leaves every file that existed before byte for
byte as it was. :func:`assert_refused` runs the command in this process (through
:func:`scenemtl.cli.main`, the console script's function) and checks all of that.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from scenemtl.cli import main

# Lightning's start-up report and status lines: printed before training, not errors
LIGHTNING_CHATTER = (
    "GPU available:",
    "TPU available:",
    "HPU available:",
    "Loading `train_dataloader`",
    "`Trainer.fit` stopped",
)


def snapshot(*roots: Path) -> dict[Path, bytes | None]:
    """Every file (its bytes), folder (None) and link (its target) below ``roots``."""
    found: dict[Path, bytes | None] = {}
    for root in roots:
        root = Path(root)
        if not root.exists() and not root.is_symlink():
            continue
        found[root] = None if root.is_dir() else root.read_bytes()
        if not root.is_dir():
            continue
        for dirpath, dirnames, filenames in os.walk(root):
            for name in [*dirnames, *filenames]:
                path = Path(dirpath) / name
                if path.is_symlink():
                    found[path] = os.readlink(path).encode()
                elif path.is_dir():
                    found[path] = None
                else:
                    found[path] = path.read_bytes()
    return found


def assert_unchanged(before: dict[Path, bytes | None], after: dict[Path, bytes | None]) -> None:
    """Every path of ``before`` is still there with the same bytes."""
    gone = sorted(str(p) for p in before if p not in after)
    changed = sorted(str(p) for p in before if p in after and after[p] != before[p])
    assert not gone, f"deleted: {gone[:5]}"
    assert not changed, f"changed: {changed[:5]}"


@dataclass
class Outcome:
    code: int
    out: str
    err: str

    @property
    def error(self) -> str:
        """The one ``scenemtl: error:`` line."""
        lines = [line for line in self.err.splitlines() if line.strip()]
        ours = [line for line in lines if line.startswith("scenemtl: ")]
        return ours[0] if len(ours) == 1 else ""


def run(argv: Sequence[str], capsys: pytest.CaptureFixture[str]) -> Outcome:
    """``scenemtl ARGV`` in this process: exit status, stdout, stderr."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in argv])
    out, err = capsys.readouterr()
    code = exc.value.code
    return Outcome(code if isinstance(code, int) else 1, out, err)


def check_one_line(result: Outcome, culprit: str | Iterable[str]) -> str:
    """Non-zero exit, no traceback, one error line on stderr naming every culprit; other
    stderr lines only Lightning's start-up report. Returns the error line."""
    assert result.code != 0, f"exit 0; stderr: {result.err[-2000:]}"
    assert "Traceback" not in result.err, result.err[-3000:]
    lines = [line for line in result.err.splitlines() if line.strip()]
    ours = [line for line in lines if line.startswith("scenemtl: ")]
    assert len(ours) == 1, f"expected one error line, got: {lines}"
    others = [
        line
        for line in lines
        if line not in ours and not line.removeprefix("INFO: ").startswith(LIGHTNING_CHATTER)
    ]
    assert not others, f"more than one line on stderr: {lines}"
    for name in [culprit] if isinstance(culprit, str) else culprit:
        assert str(name) in ours[0], f"{name!r} not named in: {ours[0]}"
    return ours[0]


def assert_refused(
    argv: Sequence[str],
    capsys: pytest.CaptureFixture[str],
    culprit: str | Iterable[str],
    watch: Iterable[Path] = (),
    new_files: bool = False,
) -> str:
    """Run ``scenemtl ARGV`` and check the contract (see the module docstring).

    Args:
        culprit: text(s) the error line must contain (a path, an option, a value).
        watch: trees whose files must be byte-identical afterwards.
        new_files: allow new files below ``watch`` (e.g. the folder of a run that
            started and then failed); by default nothing may be added either.

    Returns:
        The error line.
    """
    watch = [Path(p) for p in watch]
    before = snapshot(*watch)
    result = run(argv, capsys)
    line = check_one_line(result, culprit)
    after = snapshot(*watch)
    assert_unchanged(before, after)
    if not new_files:
        added = sorted(str(p) for p in after if p not in before)
        assert not added, f"new files: {added[:5]}"
    return line
