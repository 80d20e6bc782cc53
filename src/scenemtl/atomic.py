"""Atomic file writes: readers see the old file or the complete new one, never half of it.

Every file the package writes in place of another (``run.json``, ``dataset.json``, the
statistics, a submission zip, an ONNX model, report files, prediction PNGs) goes through
this module. A new file is written under a temporary name in the target's folder
(``.<name>.<random>.tmp``, so it lies on the same file system and ``os.replace`` is
atomic), flushed to disk, given the permissions an ordinary file of the user would get
(``mkstemp`` makes it private), and then renamed over the target. On an error the target
stays as it was and the temporary file is removed.

Torch-free and free of any other scenemtl module: every layer may use it.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

TMP_SUFFIX = ".tmp"


def is_leftover(name: str, target: str) -> bool:
    """Whether the file ``name`` is a temporary file of a write of ``target`` (one that a
    killed process left behind)."""
    return name.startswith(f".{target}.") and name.endswith(TMP_SUFFIX)


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _temporary(path: Path) -> tuple[int, Path]:
    """A new private file next to ``path`` (fd, path), made as readable as any file the
    user writes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TMP_SUFFIX)
    try:
        os.fchmod(fd, 0o666 & ~_current_umask())
    except BaseException:
        os.close(fd)
        Path(tmp).unlink(missing_ok=True)
        raise
    return fd, Path(tmp)


@contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """A binary file that replaces ``path`` only when the block ends without error."""
    path = Path(path)
    fd, tmp = _temporary(path)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike, payload: bytes) -> None:
    """Write ``payload`` to ``path`` atomically (see :func:`atomic_output`)."""
    with atomic_output(path) as f:
        f.write(payload)


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path that replaces ``path`` when the block ends without error, for
    writers that take a file name rather than a file object (e.g. ONNX export). The
    block may read the file back (to check it) before it is published."""
    path = Path(path)
    fd, tmp = _temporary(path)
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_current_umask())  # in case the writer made a new file
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
