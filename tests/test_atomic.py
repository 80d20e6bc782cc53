"""Atomic writes (scenemtl.atomic): all or nothing, ordinary permissions, no leftovers."""

from __future__ import annotations

import os
import stat

import pytest

from scenemtl.atomic import atomic_output, atomic_path, atomic_write_bytes, is_leftover


def _mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def umask():
    old = os.umask(0o027)
    yield 0o027
    os.umask(old)


def test_write_replaces_with_ordinary_permissions(tmp_path, umask):
    target = tmp_path / "deep" / "run.json"  # the folder is made
    atomic_write_bytes(target, b"one")
    atomic_write_bytes(target, b"two")
    assert target.read_bytes() == b"two"
    assert _mode(target) == 0o666 & ~umask  # not mkstemp's 0600
    assert os.listdir(target.parent) == ["run.json"]


def test_an_error_keeps_the_old_file_and_leaves_nothing(tmp_path):
    target = tmp_path / "dataset.json"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_output(target) as f:
        f.write(b"half")
        names = os.listdir(tmp_path)
        assert any(is_leftover(n, "dataset.json") for n in names)  # how store.py spots them
        raise RuntimeError
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["dataset.json"]


def test_atomic_path_publishes_only_a_finished_file(tmp_path, umask):
    target = tmp_path / "model.onnx"
    with atomic_path(target) as tmp:
        assert tmp.parent == tmp_path and not target.exists()
        tmp.unlink()  # a writer that makes a new file under the name it is given
        tmp.write_bytes(b"model")
        assert tmp.read_bytes() == b"model"  # readable before it is published
    assert target.read_bytes() == b"model" and _mode(target) == 0o666 & ~umask
    with pytest.raises(ValueError), atomic_path(target) as tmp:
        tmp.write_bytes(b"bad model")
        raise ValueError("onnxruntime disagrees")
    assert target.read_bytes() == b"model"
    assert os.listdir(tmp_path) == ["model.onnx"]


def test_leftover_names():
    assert is_leftover(".stats.json.abc123.tmp", "stats.json")
    assert not is_leftover("stats.json", "stats.json")
    assert not is_leftover(".other.json.abc.tmp", "stats.json")
