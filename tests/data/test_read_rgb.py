"""User images by bit depth: one reader (scenemtl.data.format.read_rgb) for predict and
the Cityscapes converter. Expected values are computed here in exact integer/float64
arithmetic from the stored values."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from scenemtl.data.format import read_rgb
from scenemtl.errors import DataFormatError

# every 16-bit value class: 0, white, exact 8-bit-in-16 (257 k), the halfway neighbours
V16 = np.array([[0, 65535, 257 * 100, 128, 129, 257 * 200 + 128, 257 * 200 + 129, 1000]])


def test_16_bit_grey_png_is_scaled_by_257_with_rounding(tmp_path):
    path = tmp_path / "g16.png"
    Image.fromarray(V16.astype(np.uint16)).save(path)
    assert Image.open(path).mode == "I;16"
    rgb = read_rgb(path)
    expected = np.array([round(v / 257) for v in V16.ravel().tolist()])  # float64, no ties
    assert rgb.dtype == np.uint8 and rgb.shape == (*V16.shape, 3)
    assert (rgb[0, :, 0] == expected).all() and (rgb[..., 0] == rgb[..., 2]).all()
    assert expected.max() == 255 and expected[2] == 100  # not clipped, not all white


def test_float_tiff_in_unit_range_is_scaled_and_others_refused(tmp_path):
    ok = np.array([[0.0, 0.5, 1.0, 0.2]], np.float32)
    Image.fromarray(ok).save(tmp_path / "f.tif")
    rgb = read_rgb(tmp_path / "f.tif")
    assert (rgb[0, :, 1] == np.rint(ok.astype(np.float64) * 255)[0]).all()
    for bad in (np.array([[0.0, 2.0]], np.float32), np.array([[np.nan, 0.5]], np.float32)):
        Image.fromarray(bad).save(tmp_path / "bad.tif")
        with pytest.raises(DataFormatError, match=r"bad\.tif: float image"):
            read_rgb(tmp_path / "bad.tif")


def test_int32_tiff_is_refused_in_one_line(tmp_path):
    Image.fromarray(np.array([[0, 70000]], np.int32)).save(tmp_path / "i.tif")
    with pytest.raises(DataFormatError, match=r"i\.tif: I image .*no known white level"):
        read_rgb(tmp_path / "i.tif")


def test_8_bit_modes_are_unchanged(tmp_path):
    grey = np.arange(0, 256, 17, dtype=np.uint8)[None]
    Image.fromarray(grey).save(tmp_path / "l.png")
    assert (read_rgb(tmp_path / "l.png")[..., 0] == grey).all()


def test_cityscapes_converter_reads_16_bit_rgb_like_predict(tmp_path):
    from scenemtl.data.cityscapes import convert_cityscapes
    from scenemtl.data.format import rgb_path
    from tests.data.test_cityscapes import H, W, _write_fake_cityscapes

    src, out = tmp_path / "cs", tmp_path / "out"
    _write_fake_cityscapes(src, splits=("val",))
    first = sorted((src / "leftImg8bit" / "val").rglob("*.png"))[0]
    values = (np.arange(H * W, dtype=np.int64).reshape(H, W) * 97) % 65536
    Image.fromarray(values.astype(np.uint16)).save(first)  # a 16-bit grey leftImg8bit
    convert_cityscapes(src, out, classes=7, workers=1)
    written = np.asarray(Image.open(rgb_path(out, "val", 0, ".png")))
    assert (written[..., 0] == (2 * values + 257) // 514).all()  # = round(v / 257)
