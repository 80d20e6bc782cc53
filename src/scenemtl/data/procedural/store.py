"""Putting a generated dataset on disk safely: one writer per root, never a half-written
root, never a file the generator did not write deleted.

* **Lock.** Whoever renders into ``ROOT`` holds an exclusive ``flock`` on
  ``.<name>.lock`` beside it (it stays there, empty but for the holder's pid). A second
  ``data synth`` (or a second ``fit`` rendering the default dataset) waits, then finds
  the finished dataset. The lock dies with its process, so a killed run never leaves it
  held. flock works on local file systems and, on Linux, on NFS (not on Windows,
  where concurrent runs on one root are not serialized).
* **Staging.** Images are rendered into a private folder beside the root,
  ``.<name>.partial-XXXX/data``, and renamed to ``ROOT`` only once ``dataset.json`` is
  written: ``ROOT`` is always absent, complete, or the previous complete dataset.
  Partial folders of killed runs are removed by the next run
  (:mod:`scenemtl.data.staging`, shared with ``data cityscapes``, decides which are dead).
* **Ownership.** A dataset the generator wrote is recognised by its ``dataset.json``
  (``source.generator``) and by holding nothing but the files the generator and
  ``data stats`` write. Only such a root (or an empty folder) is ever replaced; anything
  else is refused with one line and left byte for byte as it was.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from scenemtl.atomic import is_leftover
from scenemtl.data.format import INDEX_NAME, MODALITIES, SPLITS, TASK_NAME, info_path
from scenemtl.data.procedural.params import GENERATOR_NAME
from scenemtl.errors import UserError

try:
    import fcntl
except ImportError:  # Windows: no flock; runs on one root are then not serialized
    fcntl = None  # type: ignore[assignment]

STATS_FILES = ("depth_hist_meters.png", "depth_hist_log.png")
"""What ``scenemtl data stats`` writes into ``ROOT/stats`` by default."""


def lock_path(root: Path) -> Path:
    return root.parent / f".{root.name}.lock"


@contextmanager
def root_lock(root: Path, on_wait: Callable[[str], None] | None = None) -> Iterator[None]:
    """Hold the exclusive lock of ``root`` for the block (waiting for it if another
    process holds it; ``on_wait`` is told who that is)."""
    root.parent.mkdir(parents=True, exist_ok=True)
    if fcntl is None:
        yield
        return
    path = lock_path(root)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
    except PermissionError:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)  # someone else's lock file
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if on_wait is not None:
                holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
                on_wait(f"pid {holder}" if holder.isdigit() else "another process")
            fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError:
            pass  # read-only lock file: the pid is only informative
        yield
    finally:
        os.close(fd)  # releases the lock


def foreign_content(root: Path) -> str | None:
    """Something in ``root`` the generator did not write (a relative path), or None if
    ``root`` is missing, empty, or a generated dataset with nothing added."""
    if not root.exists():
        return None
    if not root.is_dir():
        raise UserError(f"dataset root {root} exists and is not a directory")
    entries = sorted(p.name for p in root.iterdir())
    if not entries:
        return None
    if not _generated_info(root):
        return "dataset.json" if "dataset.json" in entries else _first_file(root)
    folders = (*MODALITIES, *_extra_task_names(root))
    for name in entries:
        path = root / name
        if name == "dataset.json" or _atomic_leftover(name, "dataset.json"):
            continue
        if name == "stats" and path.is_dir() and not path.is_symlink():
            for f in sorted(os.listdir(path)):
                if f not in STATS_FILES and not any(_atomic_leftover(f, s) for s in STATS_FILES):
                    return f"stats/{f}"
            continue
        if name not in SPLITS or not path.is_dir() or path.is_symlink():
            return name
        for modality in sorted(os.listdir(path)):
            folder = path / modality
            if modality not in folders or not folder.is_dir() or folder.is_symlink():
                return f"{name}/{modality}"
            with os.scandir(folder) as files:
                for f in files:
                    if not (INDEX_NAME.match(f.name) and f.is_file(follow_symlinks=False)):
                        return f"{name}/{modality}/{f.name}"
    return None


def _extra_task_names(root: Path) -> tuple[str, ...]:
    """The extra task folders a generated dataset.json declares (e.g. ``normals``)."""
    try:
        data = json.loads(info_path(root).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return ()
    extra = data.get("extra_tasks") if isinstance(data, dict) else None
    if not isinstance(extra, dict):
        return ()
    return tuple(n for n in extra if isinstance(n, str) and TASK_NAME.match(n))


def _first_file(root: Path) -> str:
    """The first file (in sorted order) below ``root``, else its first entry."""
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        if files:
            return str((Path(folder) / min(files)).relative_to(root))
    return min(os.listdir(root))


def _atomic_leftover(name: str, target: str) -> bool:
    """A temporary file of :func:`scenemtl.atomic.atomic_output` for ``target``."""
    return is_leftover(name, target)


def _generated_info(root: Path) -> bool:
    try:
        data = json.loads(info_path(root).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    source = data.get("source") if isinstance(data, dict) else None
    return isinstance(source, dict) and source.get("generator") == GENERATOR_NAME


def refuse_foreign(root: Path) -> None:
    """UserError (one line) unless ``root`` may be replaced by a generated dataset."""
    found = foreign_content(root)
    if found is None:
        return
    if found == "dataset.json":
        what = "a dataset this generator did not make (its dataset.json)"
    else:
        what = f"files this generator did not write (e.g. {found})"
    raise UserError(
        f"{root} holds {what}; nothing was changed: choose another root, or move them away yourself"
    )


def publish(data: Path, root: Path) -> None:
    """Rename the staged dataset ``data`` (from :func:`staging`) to ``root``, replacing
    what is there only if it is empty or generated (the replaced dataset goes into the
    partial folder, removed when :func:`~scenemtl.data.staging.staging` ends). Call
    with the lock held."""
    partial = data.parent
    refuse_foreign(root)  # again: rendering took a while
    replaced = partial / "replaced"
    if root.exists():
        os.rename(root, replaced)
    try:
        os.rename(data, root)
    except BaseException:
        if replaced.exists():
            os.rename(replaced, root)  # put the previous dataset back
        raise
