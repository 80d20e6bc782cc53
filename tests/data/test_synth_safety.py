"""`data synth` on disk: statistics included, concurrent runs, killed runs, and never a
file it did not write deleted or changed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from scenemtl.cli import main
from scenemtl.data import format as fmt
from scenemtl.data.check import check_dataset
from scenemtl.data.procedural import SynthParams, cached_dataset, default_root, synthesize
from scenemtl.data.procedural import generate as gen
from scenemtl.data.procedural.store import root_lock
from scenemtl.data.staging import MARKER
from scenemtl.data.stats import compute_stats
from scenemtl.errors import UserError

TINY = SynthParams(train=4, val=2, test=2, size=(32, 64), seed=1)
TINY_ARGS = ["--train", "4", "--val", "2", "--test", "2", "--size", "32x64", "--seed", "1"]
REPO = Path(__file__).resolve().parents[2]


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def _run(argv: list[str], capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    out, err = capsys.readouterr()
    return exc.value.code, out, err


# --------------------------------------------------------------------------------------
# statistics


def test_synth_writes_the_statistics_data_stats_computes(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    info = synthesize(root, TINY, workers=1, progress=False)
    assert info.stats == compute_stats(root)[0]  # the same code, the same numbers
    assert fmt.read_info(root).stats == info.stats
    assert info.stats["split"] == "train" and info.stats["num_images"] == 4
    assert set(info.source["software"]) == {"python", "numpy", "pillow"}


def test_synth_then_the_datamodule_needs_no_stats_step(tmp_path: Path) -> None:
    from scenemtl.data.datamodule import SceneDataModule

    root = tmp_path / "ds"
    synthesize(root, TINY, workers=1, progress=False)
    dm = SceneDataModule(root=str(root), crop_size=None, num_workers=0)
    dm.setup("fit")  # used to say: run `scenemtl data stats` first
    assert len(dm.dataset("train")) == 4


def test_stats_of_the_first_labelled_split_without_train(tmp_path: Path) -> None:
    params = SynthParams(train=0, val=2, test=0, size=(32, 64))
    info = synthesize(tmp_path / "v", params, workers=1, progress=False)
    assert info.stats["split"] == "val"
    params = SynthParams(train=0, val=0, test=2, size=(32, 64), test_gt=False)
    assert synthesize(tmp_path / "t", params, workers=1, progress=False).stats == {}


def test_a_cached_dataset_without_stats_gets_them_in_place(tmp_path: Path, monkeypatch) -> None:
    root = tmp_path / "ds"
    synthesize(root, TINY, workers=1, progress=False, stats=False)
    assert fmt.read_info(root).stats == {}
    images = {p: p.stat().st_mtime_ns for p in root.rglob("*.png")}

    def fail(*args, **kwargs):
        raise AssertionError("rendered although cached")

    monkeypatch.setattr(gen, "_render_chunk", fail)
    info = synthesize(root, TINY, workers=1, progress=False)
    assert info.stats == compute_stats(root)[0] == fmt.read_info(root).stats
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*.png")} == images


# --------------------------------------------------------------------------------------
# never touching what the generator did not write


def _miniscapes_tree(root: Path) -> None:
    """A user's dataset before `data stats`: split folders, no dataset.json."""
    rng = np.random.default_rng(0)
    for split in ("train", "val", "test"):
        for modality, ext in (("rgb", "jpg"), ("semseg", "png"), ("depth", "png")):
            folder = root / split / modality
            folder.mkdir(parents=True)
            for i in range(2):
                (folder / f"{i}.{ext}").write_bytes(rng.bytes(100))


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(_miniscapes_tree, id="miniscapes-tree"),
        pytest.param(lambda r: (r.mkdir(), (r / ".DS_Store").write_bytes(b"x")), id="hidden"),
        pytest.param(
            lambda r: fmt.write_info(
                r, fmt.DatasetInfo(name="real", image_size=(32, 64), splits={"train": {"size": 0}})
            ),
            id="another-dataset",
        ),
    ],
)
def test_foreign_roots_are_refused_byte_for_byte(tmp_path: Path, capsys, make) -> None:
    root = tmp_path / "mine"
    make(root)
    before = _snapshot(root)
    code, _, err = _run(["data", "synth", "--root", str(root), *TINY_ARGS], capsys)
    assert code == 1
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(f"scenemtl: error: {root} holds ")
    assert "nothing was changed" in err
    assert _snapshot(root) == before
    assert [p.name for p in tmp_path.iterdir()] == ["mine"]  # not even a lock file


def test_a_file_added_to_a_generated_dataset_blocks_replacing_it(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    synthesize(root, TINY, workers=1, progress=False)
    (root / "train" / "rgb" / "notes.txt").write_text("mine")
    before = _snapshot(root)
    other = SynthParams(train=2, val=1, test=0, size=(32, 64))
    with pytest.raises(UserError, match=r"e.g. train/rgb/notes.txt"):
        synthesize(root, other, workers=1, progress=False)
    assert _snapshot(root) == before


def test_generated_datasets_with_their_stats_plots_are_replaced(tmp_path: Path) -> None:
    from scenemtl.data.stats import write_stats

    root = tmp_path / "ds"
    synthesize(root, TINY, workers=1, progress=False)
    write_stats(root)  # ROOT/stats/*.png: written by scenemtl too
    other = SynthParams(train=2, val=1, test=0, size=(32, 64))
    info = synthesize(root, other, workers=1, progress=False)
    assert info.source["params"] == other.to_json()
    assert sorted(p.name for p in root.iterdir()) == ["dataset.json", "train", "val"]
    assert check_dataset(root) == []


def test_a_symlinked_root_is_rendered_where_it_points(tmp_path: Path) -> None:
    target = tmp_path / "big-disk" / "ds"
    target.mkdir(parents=True)
    link = tmp_path / "ds"
    link.symlink_to(target)
    synthesize(link, TINY, workers=1, progress=False)
    assert link.is_symlink() and (target / "dataset.json").is_file()


def test_partial_folders_of_killed_runs_are_cleaned_up_only_if_marked(tmp_path: Path) -> None:
    stale = tmp_path / ".ds.partial-dead"
    (stale / "data" / "train").mkdir(parents=True)
    (stale / MARKER).write_text(json.dumps({"root": "ds", "pid": 1}))
    unmarked = tmp_path / ".ds.partial-user"  # same name pattern, but not provably ours
    unmarked.mkdir()
    (unmarked / "keep.txt").write_text("mine")
    other_root = tmp_path / ".ds.partial-other"
    other_root.mkdir()
    (other_root / MARKER).write_text(json.dumps({"root": "ds2", "pid": 1}))
    synthesize(tmp_path / "ds", TINY, workers=1, progress=False)
    assert not stale.exists()
    assert (unmarked / "keep.txt").read_text() == "mine" and other_root.is_dir()


# --------------------------------------------------------------------------------------
# concurrent and killed runs, for real: separate processes


def _env(data_home: Path) -> dict[str, str]:
    return {**os.environ, "SCENEMTL_DATA": str(data_home)}


class _Proc:
    """A child process whose output lines (stdout and stderr) are collected as they come."""

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "scenemtl", *argv],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
            cwd=REPO,
        )
        self.lines: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    def wait_for(self, text: str, timeout: float = 120) -> None:
        end = time.monotonic() + timeout
        while not any(text in line for line in self.lines):
            assert self.proc.poll() is None, "".join(self.lines)
            assert time.monotonic() < end, f"no {text!r} in: {''.join(self.lines)}"
            time.sleep(0.05)

    def finish(self, timeout: float = 300) -> tuple[int, str]:
        self.proc.wait(timeout=timeout)
        self.reader.join(timeout=10)
        return self.proc.returncode, "".join(self.lines)


@pytest.mark.slow
def test_two_synths_on_one_cache_wait_for_each_other(tmp_path: Path, capsys) -> None:
    """Two `data synth` without --root (the path two `fit` with data.root null take):
    with the lock held, both wait; released, one renders and the other finds the
    finished dataset. Before the lock, the second deleted the first's split folders."""
    home = tmp_path / "cache"
    root = home / TINY.name()
    root.parent.mkdir(parents=True)
    with root_lock(root):
        procs = [_Proc(["data", "synth", *TINY_ARGS, "--workers", "1"], _env(home)) for _ in "ab"]
        for p in procs:
            p.wait_for("waiting for it")
    results = [p.finish() for p in procs]
    assert [code for code, _ in results] == [0, 0], results
    logs = [log for _, log in results]
    assert sum("synth: 8/8 images" in log for log in logs) == 1, logs
    assert sum("already holds this dataset (cached)" in log for log in logs) == 1, logs
    code, out, _ = _run(["data", "check", "--root", str(root)], capsys)
    assert code == 0 and out.strip() == f"{root}: OK"
    assert sorted(p.name for p in home.iterdir()) == [f".{root.name}.lock", root.name]


@pytest.mark.slow
def test_a_killed_synth_leaves_nothing_a_later_one_trips_over(tmp_path: Path, capsys) -> None:
    root = tmp_path / "ds"
    big = ["--root", str(root), "--train", "400", "--val", "0", "--test", "0", "--size", "32x64"]
    victim = _Proc(["data", "synth", *big, "--workers", "1"], _env(tmp_path))
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob(".ds.partial-*/data/train/rgb/*.jpg")):
        assert victim.proc.poll() is None and time.monotonic() < deadline, victim.lines
        time.sleep(0.05)
    victim.proc.send_signal(signal.SIGKILL)
    victim.finish()
    assert not root.exists() and list(tmp_path.glob(".ds.partial-*"))
    code, _, err = _run(["data", "synth", "--root", str(root), *TINY_ARGS], capsys)
    assert code == 0, err
    assert not list(tmp_path.glob(".ds.partial-*"))
    code, out, _ = _run(["data", "check", "--root", str(root)], capsys)
    assert code == 0 and out.strip() == f"{root}: OK"


def test_cached_dataset_renders_once(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("SCENEMTL_DATA", str(tmp_path))
    root = cached_dataset(TINY, workers=1)
    assert root == default_root(TINY) and fmt.read_info(root).stats
    monkeypatch.setattr(gen, "_render_chunk", lambda *a: pytest.fail("rendered twice"))
    assert cached_dataset(TINY, workers=1) == root


@pytest.mark.slow
def test_synth_then_fit(tmp_path: Path, capsys) -> None:
    """`data synth` and then `fit`, with no `data stats` in between."""
    from tests.helpers import read_metrics, tiny_config

    root = tmp_path / "ds"
    code, _, err = _run(["data", "synth", "--root", str(root), *TINY_ARGS], capsys)
    assert code == 0, err
    config = tiny_config(tmp_path, root, **{"trainer.max_epochs": 1})
    code, _, err = _run(["fit", "--config", str(config)], capsys)
    assert code == 0, err
    rows = read_metrics(tmp_path / "runs" / "tiny" / "version_0")
    assert any(row.get("val/grader") for row in rows)
