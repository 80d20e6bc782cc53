"""dataset.json, mtan.json and images: sizes from a file are bounded before allocation."""

from __future__ import annotations

import json
import struct
import tracemalloc
import zlib
from pathlib import Path

import pytest

from scenemtl.data.format import (
    MAX_CLASSES,
    MAX_IMAGE_PIXELS,
    MAX_JSON_BYTES,
    info_path,
    open_image,
    read_info,
    read_json_file,
)
from scenemtl.data.mtan import read_mtan_info
from scenemtl.data.procedural.params import MAX_SIDE, MAX_SPLIT, MIN_SIDE, SynthParams
from scenemtl.errors import DataFormatError, UserError
from tests.data.mtan_trees import write_mtan_tree


def png_header_only(path: Path, width: int, height: int) -> None:
    """A PNG whose IHDR declares ``width`` x ``height`` RGB and that holds no pixel data:
    what a decompression bomb's header looks like to the reader."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))


def test_an_image_is_refused_from_its_header(tmp_path):
    path = tmp_path / "bomb.png"
    png_header_only(path, 9000, 9000)  # 81 M pixels: below Pillow's own error (179 M)
    tracemalloc.start()
    try:
        with pytest.raises(DataFormatError, match=f"9000x9000 image, more than {MAX_IMAGE_PIXELS}"):
            open_image(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20


def test_dataset_json_image_size_is_bounded(random_dataset):
    data = json.loads(info_path(random_dataset).read_text())
    data["image_size"] = [100_000, 100_000]
    info_path(random_dataset).write_text(json.dumps(data))
    with pytest.raises(DataFormatError, match="'image_size'.*more than"):
        read_info(random_dataset)
    data["image_size"] = [True, 4]
    info_path(random_dataset).write_text(json.dumps(data))
    with pytest.raises(DataFormatError, match="positive ints"):
        read_info(random_dataset)


def test_a_large_json_file_is_refused_before_it_is_read(random_dataset):
    path = info_path(random_dataset)
    with open(path, "r+b") as f:
        f.truncate(MAX_JSON_BYTES + 1)  # sparse: only its size is large
    tracemalloc.start()
    try:
        with pytest.raises(DataFormatError, match=f"larger than {MAX_JSON_BYTES}"):
            read_info(random_dataset)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20


@pytest.mark.parametrize("name", ["dataset.json", "mtan.json"])
def test_deeply_nested_json_is_one_line(tmp_path, name):
    deep = "[" * 100_000 + "]" * 100_000  # the C decoder recurses: RecursionError
    if name == "dataset.json":
        (tmp_path / name).write_text(deep)
        with pytest.raises(DataFormatError, match="nested too deeply"):
            read_json_file(tmp_path / name)
    else:
        root = write_mtan_tree(tmp_path / "m", sizes={"val": 1})
        (root / name).write_text(deep)
        with pytest.raises(DataFormatError, match="nested too deeply"):
            read_mtan_info(root)


def test_dataset_json_class_count_is_bounded(random_dataset):
    data = json.loads(info_path(random_dataset).read_text())
    data["classes"] = [{"name": f"c{i}", "color": [0, 0, 0]} for i in range(MAX_CLASSES)]
    info_path(random_dataset).write_text(json.dumps(data))
    with pytest.raises(DataFormatError, match=f"at most {MAX_CLASSES - 1} classes"):
        read_info(random_dataset)


@pytest.mark.parametrize("size", [(MAX_SIDE + 1, 8), (8, MAX_SIDE + 1), (10**12, 10**12)])
def test_synth_sizes_are_bounded(size):
    with pytest.raises(UserError, match=f"sides in {MIN_SIDE}..{MAX_SIDE}"):
        SynthParams(size=size)
    with pytest.raises(UserError, match=f"0..{MAX_SPLIT}"):
        SynthParams(train=MAX_SPLIT + 1)
