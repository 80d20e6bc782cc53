"""The page's keys: the class legend and the depth scale agree with the pictures (each
task's colorize)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from scenemtl.page.keys import (
    MIN_TICK_GAP,
    class_legend,
    depth_scale,
    depth_scale_html,
    depth_ticks,
    keys_html,
    legend_html,
)
from scenemtl.tasks.depth import DepthTask
from scenemtl.tasks.normals import NormalsTask
from scenemtl.tasks.segmentation import SegmentationTask

TABLE = [
    {"name": "road", "color": [128, 64, 128]},
    {"name": "sky", "color": [70, 130, 180]},
    {"name": "<b>car</b>", "color": [0, 0, 142]},
]


def test_the_legend_is_the_class_table_in_order():
    task = SegmentationTask("semseg", TABLE)
    assert class_legend(task) == [(c["name"], tuple(c["color"])) for c in TABLE]


def test_the_legend_colours_are_those_of_the_pictures():
    task = SegmentationTask("semseg", TABLE)
    labels = np.array([[2, 0], [1, 2]])
    picture = task.colorize(labels)
    colours = dict(enumerate(c for _, c in class_legend(task)))
    for (i, j), label in np.ndenumerate(labels):
        assert tuple(picture[i, j]) == colours[int(label)]


def test_legend_html_escapes_the_names_and_shows_each_colour():
    text = legend_html("semseg classes", class_legend(SegmentationTask("semseg", TABLE)))
    assert "&lt;b&gt;car&lt;/b&gt;" in text and "<b>car" not in text
    assert "rgb(128, 64, 128)" in text and "rgb(0, 0, 142)" in text


@pytest.mark.parametrize("range_m", [(4.0, 300.0), (0.5, 10.0), (1e-3, 80.0)])
def test_the_bar_spans_the_range_on_a_log_scale(range_m):
    lo, hi = range_m
    task = DepthTask("depth", range_m=range_m)
    scale = depth_scale(task, width=300)
    x = np.arange(300, dtype=np.float64)
    expected = np.exp(math.log(lo) + x / 299 * (math.log(hi) - math.log(lo)))
    # two float64 evaluations of lo * (hi/lo)^t: a few ulps of |log| <= 7 apart, << 1e-12
    np.testing.assert_allclose(scale.depths_m, expected, rtol=1e-12)
    assert scale.colors.shape == (300, 3) and scale.colors.dtype == np.uint8


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
    scale = depth_scale(task, width=width)
    for d in np.geomspace(lo * 1.001, hi * 0.999, 37):
        x = (width - 1) * math.log(d / lo) / math.log(hi / lo)
        colour = tuple(task.colorize(np.array([[d]]))[0, 0])
        around = {tuple(scale.colors[math.floor(x)]), tuple(scale.colors[math.ceil(x)])}
        assert colour in around, (d, x, colour, around)


def test_the_bar_ends_are_the_colours_of_the_range_ends():
    task = DepthTask("depth", range_m=(4.0, 300.0))
    scale = depth_scale(task)
    assert tuple(scale.colors[0]) == tuple(task.colorize(np.array([[4.0]]))[0, 0])
    assert tuple(scale.colors[-1]) == tuple(task.colorize(np.array([[300.0]]))[0, 0])
    # beyond the range the picture saturates: the ends of the bar say so
    assert tuple(task.colorize(np.array([[1000.0]]))[0, 0]) == tuple(scale.colors[-1])


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
def test_the_labelled_depths(lo, hi, ticks):
    assert depth_ticks(lo, hi) == pytest.approx(ticks, rel=1e-12)


def test_tick_positions_are_where_their_depth_is():
    task = DepthTask("depth", range_m=(4.0, 300.0))
    scale = depth_scale(task)
    positions = [p for _, p in scale.ticks]
    for depth, pos in scale.ticks:
        assert pos == pytest.approx(math.log(depth / 4.0) / math.log(75.0), rel=1e-12, abs=1e-15)
    assert positions[0] == 0.0 and positions[-1] == pytest.approx(1.0, rel=1e-12)
    assert min(np.diff(positions)) >= MIN_TICK_GAP


def test_depth_scale_html_labels_in_meters():
    scale = depth_scale(DepthTask("depth", range_m=(4.0, 300.0)))
    text = depth_scale_html("depth in meters", scale)
    for label in ("4 m", "10 m", "200 m", "300 m"):
        assert f">{label}</span>" in text
    assert "left: 0.000%" in text and "left: 100.000%" in text
    assert text.count("data:image/png;base64,") == 1


def test_keys_follow_the_tasks_and_skip_those_without_one():
    seg, depth = SegmentationTask("semseg", TABLE), DepthTask("depth")
    text = keys_html([depth, NormalsTask("normals"), seg])
    assert text.index("depth in meters") < text.index("semseg classes")
    assert keys_html([NormalsTask("normals")]) == ""
