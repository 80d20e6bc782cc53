"""Interrupted work leaves no debris: Ctrl-C stops a long data command within about a
second with status 130, and what a killed run left is removed by the next run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from scenemtl.data.cityscapes import convert_cityscapes
from scenemtl.data.staging import is_dead, partials, remove_dead_partials, staging
from tests.data.test_cityscapes import _write_fake_cityscapes
from tests.helpers import default_sigint

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO)])}


def _wait_for(predicate, timeout: float) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.05)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(os, "killpg"), reason="POSIX process groups")
def test_ctrl_c_stops_data_synth_within_a_second_and_leaves_nothing(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    # far more images than it renders before the signal: it must stop, not finish
    argv = ["data", "synth", "--root", str(root), "--train", "20000", "--val", "0"]
    argv += ["--test", "0", "--size", "32x64", "--workers", "2"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "scenemtl", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=ENV,
        start_new_session=True,  # a process group of its own, like a shell job
        preexec_fn=default_sigint,
    )

    def rendering() -> bool:
        return any(any((p / "data" / "train" / "rgb").glob("*.jpg")) for p in partials(root))

    try:
        _wait_for(rendering, timeout=120)
        sent = time.monotonic()
        os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
        proc.wait(timeout=30)
        elapsed = time.monotonic() - sent
        err = proc.stderr.read().decode()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.stdout.close()
        proc.stderr.close()
    assert proc.returncode == 130, err
    assert "Traceback" not in err, err
    assert err.strip().splitlines()[-1] == "scenemtl: interrupted"
    # a second, not more; on two shared cores the exit itself can take a few tenths
    assert elapsed < 1.5, f"took {elapsed:.2f} s"
    assert list(partials(root)) == [] and not root.exists()
    _wait_for(lambda: not _group_alive(proc.pid), timeout=5)  # no worker left behind


def _stage_and_die(target: Path) -> None:
    """A child process that stages for ``target`` and is killed (SIGKILL) mid-way."""
    code = (
        "import os, signal, sys\n"
        "from pathlib import Path\n"
        "from scenemtl.data.staging import staging\n"
        "with staging(Path(sys.argv[1])) as d:\n"
        "    (d / 'half.txt').write_text('half')\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    run = subprocess.run([sys.executable, "-c", code, str(target)], env=ENV, check=False)
    assert run.returncode == -signal.SIGKILL


@pytest.mark.slow
def test_a_killed_conversion_is_cleaned_by_the_next_one_a_live_one_is_not(tmp_path: Path) -> None:
    src, out = tmp_path / "cs", tmp_path / "out"
    _write_fake_cityscapes(src, splits=("val",))
    _stage_and_die(out)
    (dead,) = partials(out)
    assert is_dead(dead, out) and (dead / "data" / "half.txt").is_file()
    foreign = tmp_path / ".out.partial-mine"  # the pattern, but no marker: not ours
    foreign.mkdir()
    with staging(tmp_path / "out") as live:  # another conversion, still running
        convert_cityscapes(src, out, classes=7, workers=1)
        assert not dead.exists()
        assert live.is_dir() and not is_dead(live.parent, out)
        assert foreign.is_dir()
    assert (out / "dataset.json").is_file()  # and the live staging went when it ended
    assert sorted(p.name for p in tmp_path.iterdir()) == [".out.partial-mine", "cs", "out"]


def test_staging_removes_its_folder_on_ctrl_c(tmp_path: Path) -> None:
    target = tmp_path / "t"
    with pytest.raises(KeyboardInterrupt), staging(target) as data:
        (data / "x").write_text("x")
        raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []
    assert remove_dead_partials(target) == []
