"""The page's keys: each task's picture key (the class legend, the depth colour bar)
agrees with the pictures (each task's colorize), and the page draws every form of key
without knowing task kinds."""

from __future__ import annotations

import math

import numpy as np
import pytest

from scenemtl.page.keys import color_bar_html, keys_html, legend_html
from scenemtl.tasks.base import Task
from scenemtl.tasks.depth import DepthTask
from scenemtl.tasks.keys import (
    MIN_TICK_GAP,
    ColorBar,
    Legend,
    Tick,
    color_bar,
    log_ticks,
)
from scenemtl.tasks.normals import NormalsTask
from scenemtl.tasks.segmentation import SegmentationTask

TABLE = [
    {"name": "road", "color": [128, 64, 128]},
    {"name": "sky", "color": [70, 130, 180]},
    {"name": "<b>car</b>", "color": [0, 0, 142]},
]


def test_the_legend_is_the_class_table_in_order():
    key = SegmentationTask("semseg", TABLE).picture_key()
    assert isinstance(key, Legend) and key.title == "semseg classes"
    assert key.entries == [(c["name"], tuple(c["color"])) for c in TABLE]


def test_the_legend_colours_are_those_of_the_pictures():
    task = SegmentationTask("semseg", TABLE)
    labels = np.array([[2, 0], [1, 2]])
    picture = task.colorize(labels)
    colours = dict(enumerate(c for _, c in task.picture_key().entries))
    for (i, j), label in np.ndenumerate(labels):
        assert tuple(picture[i, j]) == colours[int(label)]


def test_legend_html_escapes_the_names_and_shows_each_colour():
    text = legend_html(SegmentationTask("semseg", TABLE).picture_key())
    assert "&lt;b&gt;car&lt;/b&gt;" in text and "<b>car" not in text
    assert "rgb(128, 64, 128)" in text and "rgb(0, 0, 142)" in text
    assert ">semseg classes<" in text


@pytest.mark.parametrize("range_m", [(4.0, 300.0), (0.5, 10.0), (1e-3, 80.0)])
def test_the_bar_spans_the_range_on_a_log_scale(range_m):
    lo, hi = range_m
    bar = DepthTask("depth", range_m=range_m).picture_key(width=300)
    x = np.arange(300, dtype=np.float64)
    expected = np.exp(math.log(lo) + x / 299 * (math.log(hi) - math.log(lo)))
    # two float64 evaluations of lo * (hi/lo)^t: a few ulps of |log| <= 7 apart, << 1e-12
    np.testing.assert_allclose(bar.values, expected, rtol=1e-12)
    assert bar.colors.shape == (300, 3) and bar.colors.dtype == np.uint8


@pytest.mark.parametrize("range_m", [(4.0, 300.0), (0.5, 10.0)])
def test_each_depth_has_its_picture_colour_at_its_place_on_the_bar(range_m):
    """colorize(d) is the colour of one of the two columns around d's position.

    The position of d in the test's own closed form: x = (W-1) log(d/lo) / log(hi/lo).
    The colormap has 256 levels indexed by floor(256 t), monotone in t; with W = 512
    columns, neighbours are 1/511 < 1/256 apart in t, so d's level is the level of the
    column left or right of it."""
    lo, hi = range_m
    task = DepthTask("depth", range_m=range_m)
    width = 512
    bar = task.picture_key(width=width)
    for d in np.geomspace(lo * 1.001, hi * 0.999, 37):
        x = (width - 1) * math.log(d / lo) / math.log(hi / lo)
        colour = tuple(task.colorize(np.array([[d]]))[0, 0])
        around = {tuple(bar.colors[math.floor(x)]), tuple(bar.colors[math.ceil(x)])}
        assert colour in around, (d, x, colour, around)


def test_the_bar_ends_are_the_colours_of_the_range_ends():
    task = DepthTask("depth", range_m=(4.0, 300.0))
    bar = task.picture_key()
    assert tuple(bar.colors[0]) == tuple(task.colorize(np.array([[4.0]]))[0, 0])
    assert tuple(bar.colors[-1]) == tuple(task.colorize(np.array([[300.0]]))[0, 0])
    # beyond the range the picture saturates: the ends of the bar say so
    assert tuple(task.colorize(np.array([[1000.0]]))[0, 0]) == tuple(bar.colors[-1])


@pytest.mark.parametrize(
    ("lo", "hi", "ticks"),
    [
        # 5 m sits at log(5/4)/log(75) = 0.052 of the bar, closer than 0.06 to 4 m
        (4.0, 300.0, [4, 10, 20, 50, 100, 200, 300]),
        (0.5, 10.0, [0.5, 1, 2, 5, 10]),
        # 18 values of 1-2-5 inside: powers of ten only
        (0.01, 1e5, [0.01, 0.1, 1, 10, 100, 1000, 1e4, 1e5]),
        # nothing between fits
        (10.0, 11.0, [10, 11]),
    ],
)
def test_the_labelled_values(lo, hi, ticks):
    assert log_ticks(lo, hi) == pytest.approx(ticks, rel=1e-12)


def test_tick_positions_are_where_their_depth_is():
    bar = DepthTask("depth", range_m=(4.0, 300.0)).picture_key()
    positions = [t.position for t in bar.ticks]
    for tick in bar.ticks:
        expected = math.log(tick.value / 4.0) / math.log(75.0)
        assert tick.position == pytest.approx(expected, rel=1e-12, abs=1e-15)
    assert positions[0] == 0.0 and positions[-1] == pytest.approx(1.0, rel=1e-12)
    assert min(np.diff(positions)) >= MIN_TICK_GAP


def test_depth_bar_html_labels_in_meters():
    bar = DepthTask("depth", range_m=(4.0, 300.0)).picture_key()
    assert bar.title == "depth in meters (log scale)"
    text = color_bar_html(bar)
    for label in ("4 m", "10 m", "200 m", "300 m"):
        assert f">{label}</span>" in text
    assert "left: 0.000%" in text and "left: 100.000%" in text
    assert text.count("data:image/png;base64,") == 1


def test_keys_follow_the_tasks_and_skip_those_without_one():
    seg, depth = SegmentationTask("semseg", TABLE), DepthTask("depth")
    text = keys_html([depth, NormalsTask("normals"), seg])
    assert text.index("depth in meters") < text.index("semseg classes")
    assert keys_html([NormalsTask("normals")]) == ""


class _Toy(Task):
    """A kind the page has never heard of, with a key of its own (a linear bar)."""

    kind = "toy"

    def picture_key(self) -> ColorBar:
        values = np.linspace(0.0, 1.0, 4)
        colors = np.repeat((values * 255).astype(np.uint8)[:, None], 3, axis=1)
        ticks = [Tick(0.0, 0.0, "none"), Tick(1.0, 1.0, "all")]
        return ColorBar("toy share", values, colors, ticks)


def test_a_new_kind_draws_its_key_without_the_page_knowing_it():
    assert Task("plain", 1).picture_key() is None  # the default: no key
    text = keys_html([_Toy("toy", 1)])
    assert ">toy share<" in text and ">none</span>" in text and ">all</span>" in text


def test_a_linear_bar_spans_its_range_evenly_with_its_colours():
    def grey(values: np.ndarray) -> np.ndarray:  # [1,W] in [0, 1] -> uint8 [1,W,3]
        return np.repeat((values * 255).astype(np.uint8)[..., None], 3, axis=-1)

    bar = color_bar("p", 0.0, 1.0, grey, lambda v: f"{v:.1f}", width=11)
    np.testing.assert_allclose(bar.values, np.arange(11) / 10, rtol=0, atol=1e-15)
    # each column has the colour of its own value (the same float64 array both times)
    np.testing.assert_array_equal(bar.colors, grey(bar.values[None, :])[0])
    assert [(t.position, t.label) for t in bar.ticks] == [(0.0, "0.0"), (0.5, "0.5"), (1.0, "1.0")]
    with pytest.raises(ValueError, match="no linear bar from 1.0 to 1.0"):
        color_bar("p", 1.0, 1.0, grey, str, width=11)
    with pytest.raises(ValueError, match="no log bar from 0.0 to 1.0"):
        color_bar("p", 0.0, 1.0, grey, str, width=11, scale="log")
