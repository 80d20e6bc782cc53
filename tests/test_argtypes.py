import argparse

import pytest

from scenemtl.argtypes import int_at_least, positive_float, size_hw


@pytest.mark.parametrize(("text", "expected"), [("256x512", (256, 512)), (" 100X203 ", (100, 203))])
def test_size_hw(text, expected):
    assert size_hw(text) == expected


@pytest.mark.parametrize("text", ["256", "0x5", "256x", "axb", "-1x3", "1x2x3"])
def test_size_hw_rejects(text):
    with pytest.raises(argparse.ArgumentTypeError, match="HxW"):
        size_hw(text)


def test_int_at_least_and_positive_float():
    assert int_at_least(0)("0") == 0
    with pytest.raises(argparse.ArgumentTypeError, match=">= 1"):
        int_at_least(1)("0")
    with pytest.raises(argparse.ArgumentTypeError, match="integer"):
        int_at_least(1)("1.5")
    assert positive_float("0.5") == 0.5
    for bad in ("0", "-1", "inf", "nan", "x"):
        with pytest.raises(argparse.ArgumentTypeError):
            positive_float(bad)
