"""`data synth`, `data check`, `data stats` under hostile input, through the command line.

Each broken dataset is refused with one line naming the culprit (``data check`` lists
every problem on stdout and sums them up in one line on stderr), a non-zero exit status,
no traceback, and the dataset byte for byte as it was. Refusals of ``data synth`` for
roots it did not write are in test_synth_safety.py, claims of absurd split sizes in
test_split_sizes.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from scenemtl.data.format import label_path, rgb_path
from tests.helpers import write_random_dataset
from tests.hostile import assert_refused, run, snapshot


def _json(root: Path, text: str) -> Path:
    (root / "dataset.json").write_text(text)
    return root / "dataset.json"


def _claim(root: Path, split: str, size: int) -> Path:
    info = json.loads((root / "dataset.json").read_text())
    info["splits"][split]["size"] = size
    return _json(root, json.dumps(info))


def _truncate_rgb(root: Path) -> Path:
    path = rgb_path(root, "train", 1, ".png")
    path.write_bytes(path.read_bytes()[:60])
    return path


def _label(root: Path, value: int = 77) -> Path:
    path = label_path(root, "train", "semseg", 0)
    labels = np.asarray(Image.open(path)).copy()
    labels[2, 3] = value
    Image.fromarray(labels).save(path)
    return path


def _depth_as_rgb(root: Path) -> Path:
    path = label_path(root, "train", "depth", 1)
    Image.new("RGB", (40, 24)).save(path)
    return path


def _delete_depth(root: Path) -> Path:
    path = label_path(root, "train", "depth", 2)
    path.unlink()
    return path


# (id, damage -> the path that must be named)
DAMAGE = [
    ("json garbage", lambda r: _json(r, "{not json")),
    ("json list", lambda r: _json(r, "[1, 2]")),
    ("json absurd size", lambda r: _claim(r, "train", 10**12)),
    ("truncated rgb", _truncate_rgb),
    ("label outside table", _label),
    ("depth RGB", _depth_as_rgb),
    ("missing depth", _delete_depth),
]
# damages `data stats` does not read (it reads dataset.json and the train labels)
NOT_READ_BY_STATS = {"truncated rgb"}


@pytest.fixture
def root(tmp_path) -> Path:
    root = tmp_path / "ds"
    write_random_dataset(root)
    return root


@pytest.mark.parametrize("damage", [d[1] for d in DAMAGE], ids=[d[0] for d in DAMAGE])
def test_data_check_lists_the_file_and_sums_up_in_one_line(root, capsys, damage):
    culprit = damage(root)
    before = snapshot(root)
    result = run(["data", "check", "--root", root], capsys)
    assert result.code == 1 and "Traceback" not in result.err
    assert str(culprit) in result.out
    assert result.err.strip() == f"{len(result.out.splitlines())} problem(s) in {root}"
    assert snapshot(root) == before  # read-only


@pytest.mark.parametrize(
    "damage",
    [d[1] for d in DAMAGE if d[0] not in NOT_READ_BY_STATS],
    ids=[d[0] for d in DAMAGE if d[0] not in NOT_READ_BY_STATS],
)
def test_data_stats_refuses_in_one_line_and_writes_nothing(root, capsys, damage):
    culprit = damage(root)
    assert_refused(["data", "stats", "--root", root], capsys, str(culprit), watch=[root.parent])


@pytest.mark.parametrize("command", ["check", "stats"])
@pytest.mark.parametrize("make", ["missing", "file", "empty folder"])
def test_a_root_that_is_no_dataset_is_one_line(tmp_path, capsys, command, make):
    root = tmp_path / "ds"
    if make == "file":
        root.write_text("x")
    elif make == "empty folder":
        root.mkdir()
    result = run(["data", command, "--root", root], capsys)
    assert result.code == 1 and "Traceback" not in result.err
    # check reports on stdout and sums up on stderr; stats says it on stderr
    if command == "check":
        assert str(root) in result.out and len(result.err.strip().splitlines()) == 1
    else:
        assert_refused(["data", command, "--root", root], capsys, str(root), watch=[tmp_path])


@pytest.mark.parametrize(
    "argv, culprits",
    [
        (["--train", "20000000"], ["train", "10000000"]),
        (["--root", "{file}"], ["{file}"]),
        (["--root", "{inside_file}"], ["{file}"]),
    ],
)
def test_data_synth_refuses_bad_requests_in_one_line(tmp_path, capsys, argv, culprits):
    (tmp_path / "file").write_text("mine")
    fill = {"file": tmp_path / "file", "inside_file": tmp_path / "file" / "ds"}
    argv = [a.format(**fill) for a in argv]
    culprits = [c.format(**fill) for c in culprits]
    base = ["data", "synth", "--train", "1", "--val", "0", "--test", "0", "--size", "32x64"]
    if "--root" not in argv:
        base += ["--root", str(tmp_path / "new")]
    assert_refused([*base, *argv, "--workers", "1"], capsys, culprits, watch=[tmp_path])
