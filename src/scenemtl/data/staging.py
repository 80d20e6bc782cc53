"""Staging folders: build a whole output tree beside its target, rename it into place.

``staging(target)`` makes ``.<name>.partial-XXXX/`` beside ``target`` and yields its
``data/`` folder; the caller fills it and renames it to ``target``; the partial folder
goes when the block ends. The target is never half written.

A run that is killed (SIGKILL, power loss) cannot clean up, so its partial folder stays.
The next run for the same target removes it with :func:`remove_dead_partials`. How a
partial folder is known to be dead: its marker file ``scenemtl-partial.json`` (naming the
target) is ``flock``-ed by the writing process for as long as the folder is in use; the
kernel drops that lock when the process dies, however it dies. A partial folder whose
marker is not locked is dead; one without a readable marker naming the target is not
provably ours and is left alone. Processes forked while the lock is held share it:
their pools must not outlive the writer (see the synth pool's initializer).
Without ``fcntl`` (Windows) the marker's pid is checked instead.

``data synth`` and ``data cityscapes`` both stage through here.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shutil
import signal
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]

PARTIAL_TAG = ".partial-"
MARKER = "scenemtl-partial.json"
LEGACY_MARKERS = ("scenemtl-synth-partial.json",)
"""Markers of earlier versions (never locked: removed like a dead one)."""
_PR_SET_PDEATHSIG = 1


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def partials(target: Path) -> Iterator[Path]:
    """The partial folders beside ``target`` made for it (by name; alive or dead)."""
    prefix = f".{target.name}{PARTIAL_TAG}"
    if target.parent.is_dir():
        for p in sorted(target.parent.iterdir()):
            if p.name.startswith(prefix) and p.is_dir() and not p.is_symlink():
                yield p


def _pid_alive(pid: object) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    if os.name == "nt":
        # os.kill(pid, 0) terminates the process on Windows: never probe a writer there;
        # its folder counts as alive (left for the user) rather than risk killing it
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # exists, someone else's
    return True


def is_dead(partial: Path, target: Path) -> bool:
    """True if ``partial`` was staged for ``target`` and its writer is gone."""
    for name in (MARKER, *LEGACY_MARKERS):
        marker = partial / name
        try:
            data = json.loads(marker.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            continue
        if not (isinstance(data, dict) and data.get("root") == target.name):
            return False
        if name != MARKER:
            return True
        if fcntl is None:
            return not _pid_alive(data.get("pid"))
        try:
            fd = os.open(marker, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return False  # locked: its writer is alive
        finally:
            os.close(fd)
        return True
    return False  # no marker (yet, or not ours)


def remove_dead_partials(target: Path) -> list[Path]:
    """Remove the partial folders of ``target`` whose writer is gone; returns them."""
    removed = []
    for p in partials(target):
        if is_dead(p, target):
            _rmtree_uninterrupted(p)
            removed.append(p)
    return removed


def _rmtree_uninterrupted(path: Path) -> None:
    """``rmtree`` with Ctrl-C held back until it is done (a second Ctrl-C during the
    cleanup of the first must not leave half a folder); the signal is delivered after."""
    main = threading.current_thread() is threading.main_thread()
    if main and hasattr(signal, "pthread_sigmask"):
        old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            shutil.rmtree(path, ignore_errors=True)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)
    else:
        shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def staging(target: Path) -> Iterator[Path]:
    """A fresh ``data`` folder inside a locked partial folder beside ``target``.

    The caller renames ``data`` to ``target`` when complete. When the block ends, in any
    way (an error, Ctrl-C), the partial folder is removed with whatever is left in it.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f".{target.name}{PARTIAL_TAG}", dir=target.parent))
    fd = -1
    try:
        fd = os.open(partial / MARKER, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX)
        # written only once locked: a marker that names the target is always locked
        record = {"root": target.name, "pid": os.getpid()}
        os.write(fd, (json.dumps(record) + "\n").encode())
        data = partial / "data"
        data.mkdir()
        # mkdtemp makes 0700; the output should be as readable as anything the user writes
        os.chmod(data, 0o777 & ~_umask())
        yield data
    finally:
        _rmtree_uninterrupted(partial)
        if fd >= 0:
            os.close(fd)


def pool_worker_init(parent: int) -> None:
    """Initializer of the worker processes of a writer that stages: Ctrl-C is the
    parent's to handle (it terminates the pool; workers print no traceback), and on
    Linux a worker dies with its parent, so a killed writer's workers do not keep its
    staging lock (inherited across fork) alive."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        except (OSError, AttributeError):
            return
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)
