"""MTAN-layout .npy files: the header is read and bounded before any data is allocated.

A header may declare any shape; the reader allocates nothing the file does not back
(the declared bytes must follow the header) and nothing above MAX_NPY_ELEMENTS values.
"""

from __future__ import annotations

import io
import math
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scenemtl.data.mtan import MAX_NPY_DIMS, MAX_NPY_ELEMENTS, _load, read_npy_header
from scenemtl.errors import DataFormatError
from tests.data.mtan_trees import write_mtan_tree
from tests.hostile import assert_refused, run


def write_header(path: Path, shape: tuple[int, ...], descr: str, payload: bytes = b"",
                 version: tuple[int, int] = (1, 0), fortran: bool = False) -> None:  # fmt: skip
    """A .npy file of this header (numpy's own writer) followed by ``payload``."""
    buf = io.BytesIO()
    header = {"descr": descr, "fortran_order": fortran, "shape": shape}
    write = {
        (1, 0): np.lib.format.write_array_header_1_0,
        (2, 0): np.lib.format.write_array_header_2_0,
    }
    write[version](buf, header)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buf.getvalue() + payload)


HUGE = (120_000, 250_000, 1)  # 30 G float64 values: 224 GiB, the example


@pytest.mark.parametrize("command", ["check", "stats"])
def test_a_huge_header_is_refused_without_allocating(tmp_path, capsys, command):
    # the same command on a sound tree first: imports and class tables are not measured
    warm = write_mtan_tree(tmp_path / "warm", sizes={"train": 2, "val": 1})
    assert run(["data", command, "--root", warm], capsys).code == 0
    root = write_mtan_tree(tmp_path / "mtan", sizes={"train": 2, "val": 1})
    bad = root / "train" / "depth" / "0.npy"
    write_header(bad, HUGE, "<f8", b"\0" * 64)
    tracemalloc.start()
    try:
        if command == "check":
            # `data check` lists every problem (one per line on stdout), then one summary
            result = run(["data", "check", "--root", root], capsys)
            assert result.code == 1 and "Traceback" not in result.err
            assert f"{bad}: shape {HUGE}" in result.out and str(MAX_NPY_ELEMENTS) in result.out
        else:
            assert_refused(["data", "stats", "--root", root], capsys, [str(bad)], watch=[root])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20  # the tree's files are a few KiB; the header claims 224 GiB


def test_header_declaring_more_than_the_file_holds(tmp_path):
    path = tmp_path / "t.npy"
    write_header(path, (40, 50, 3), "<f4", b"\0" * 100)
    with pytest.raises(DataFormatError, match=r"24000 bytes\), the file holds 100"):
        _load(path)


@pytest.mark.parametrize(
    ("shape", "descr", "message"),
    [
        ((2, 2), "|O", "not a numeric array"),  # object arrays: never unpickled
        ((2, 2), "<U3", "not a numeric array"),
        ((2, 2), "<c8", "not a numeric array"),
        ((2,), [("a", "<f4")], "not a numeric array"),
        ((1, 1, 1, 1), "<f4", "4 dimensions"),
        ((-1, 3), "<f4", "negative dimension"),
        ((MAX_NPY_ELEMENTS + 1,), "|u1", "more than"),
    ],
)
def test_refused_headers(tmp_path, shape, descr, message):
    path = tmp_path / "h.npy"
    write_header(path, shape, descr, b"\0" * 64)
    with pytest.raises(DataFormatError, match=message) as err:
        _load(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_fortran_order_and_versions_read_as_numpy_does(tmp_path):
    for version in ((1, 0), (2, 0)):
        a = np.arange(24, dtype=np.int16).reshape(2, 3, 4)
        path = tmp_path / f"v{version[0]}.npy"
        f_bytes = np.asfortranarray(a).tobytes(order="F")
        write_header(path, a.shape, "<i2", f_bytes, version=version, fortran=True)
        np.testing.assert_array_equal(_load(path), a)
        np.testing.assert_array_equal(_load(path), np.load(path))


DTYPES = ["<f4", ">f4", "<f8", "<f2", "|u1", "|i1", "<i2", ">i4", "<u8", "|b1", "<c8", "<U2", "|O"]


@settings(max_examples=150, deadline=None)
@given(
    shape=st.lists(st.integers(0, 9) | st.integers(-2, 1 << 40), max_size=5).map(tuple),
    descr=st.sampled_from(DTYPES),
    extra=st.integers(-64, 64),
    version=st.sampled_from([(1, 0), (2, 0)]),
)
def test_any_header_is_read_or_refused_in_one_line(tmp_path_factory, shape, descr, extra, version):
    """Contract: the array numpy would read, or DataFormatError; never another exception.
    Memory: the payload written is at most the declared size + 64 bytes, and the reader
    allocates no more than the bytes after the header (checked by tracemalloc)."""
    dtype = np.dtype(descr)
    declared = math.prod(shape) * dtype.itemsize if all(n >= 0 for n in shape) else 0
    payload_size = max(0, min(declared, 4096) + extra)
    payload = bytes(range(256)) * (payload_size // 256) + bytes(range(payload_size % 256))
    path = tmp_path_factory.mktemp("npy") / "x.npy"
    write_header(path, shape, descr, payload, version=version)
    tracemalloc.start()
    try:
        try:
            arr = _load(path)
        except DataFormatError as e:
            assert str(path) in str(e) and "\n" not in str(e)
            arr = None
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < payload_size + (1 << 16)
    ok = (
        dtype.kind in "fiub"
        and all(n >= 0 for n in shape)
        and len(shape) <= MAX_NPY_DIMS
        and math.prod(shape) <= MAX_NPY_ELEMENTS
        and declared <= payload_size
    )
    assert (arr is not None) == ok
    if ok:
        reference = np.load(path, allow_pickle=False)
        assert arr.shape == reference.shape and arr.dtype == reference.dtype
        assert arr.tobytes() == reference.tobytes()  # the same bytes read, not a float path


def test_header_reader_reads_only_the_header(tmp_path):
    path = tmp_path / "x.npy"
    np.save(path, np.zeros((3, 4), np.float32))
    with open(path, "rb") as f:
        shape, dtype, fortran = read_npy_header(f, path)
        assert (shape, dtype, fortran) == ((3, 4), np.dtype("<f4"), False)
        assert path.stat().st_size - f.tell() == 48
