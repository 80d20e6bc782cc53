"""One upload of the page: the panel through Model.predict, or one line saying why not."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from scenemtl.api import Model
from scenemtl.page import predict as page_predict
from scenemtl.page.predict import PagePredictor, panel_columns

GAP = 2  # visualize.tile's white gap between pictures


@pytest.fixture(scope="module")
def model():
    """An untrained narrow joint network: the page only lays out what predict returns."""
    from scenemtl.engine.module import MultiTaskModule

    torch.manual_seed(0)
    net = {
        "architecture": "joint",
        "encoder": "resnet18",
        "encoder_width": 16,
        "channels": 16,
        "skip_channels": 8,
    }
    return Model(MultiTaskModule(net=net), source="untrained")


@pytest.fixture
def image(tmp_path):
    rng = np.random.default_rng(3)
    rgb = rng.integers(0, 256, (24, 40, 3), dtype=np.uint8)
    path = tmp_path / "street.png"
    Image.fromarray(rgb).save(path)
    return path, rgb


def test_the_panel_is_rgb_then_each_tasks_picture_of_predict(model, image):
    path, rgb = image
    result = PagePredictor(model)(str(path))
    preds = model.predict(rgb)
    tasks = model.module.task_list
    assert [t.name for t in tasks] == ["semseg", "depth"]
    h, w = rgb.shape[:2]
    assert result.panel.shape == (h, 3 * w + 2 * GAP, 3)
    assert np.array_equal(result.panel[:, :w], rgb)  # uint8 copied, not computed
    # the same path twice (a deterministic network on the same input): same labels
    assert np.array_equal(
        result.panel[:, w + GAP : 2 * w + GAP], tasks[0].colorize(preds["semseg"])
    )
    assert np.array_equal(result.panel[:, 2 * (w + GAP) :], tasks[1].colorize(preds["depth"]))
    assert result.message.startswith("street.png (40x24): semseg: mostly ")
    assert "median depth" in result.message
    assert panel_columns(model) == "RGB | semseg | depth"


def test_no_upload_asks_for_one(model):
    result = PagePredictor(model)(None)
    assert result.panel is None and "Drop an image" in result.message and not result.error


def test_a_file_that_is_not_an_image_is_one_line_with_its_name(model, tmp_path):
    folder = tmp_path / "gradio" / "0123abcd"
    folder.mkdir(parents=True)
    bad = folder / "notes.png"
    bad.write_text("not an image")
    result = PagePredictor(model)(bad)
    assert result.panel is None and result.error
    assert result.message.startswith("Cannot predict on notes.png: ")
    assert "\n" not in result.message and str(folder) not in result.message


def test_an_image_above_max_pixels_is_refused_from_its_header(model, image, monkeypatch):
    path, rgb = image
    monkeypatch.setattr(page_predict, "MAX_PIXELS", rgb.shape[0] * rgb.shape[1] - 1)

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded an image the header already refuses")

    monkeypatch.setattr(page_predict, "as_rgb", no_decoding)
    result = PagePredictor(model)(path)
    assert result.panel is None and result.error
    assert result.message == (
        "Cannot predict on street.png: 40x24 pixels is above the 0.0 MP limit; downscale it first"
    )


def test_an_image_at_max_pixels_is_predicted(model, image, monkeypatch):
    path, rgb = image
    monkeypatch.setattr(page_predict, "MAX_PIXELS", rgb.shape[0] * rgb.shape[1])
    assert PagePredictor(model)(path).panel is not None
