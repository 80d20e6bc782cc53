"""A tiny trained run shared by the API tests, and images to predict on."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

SIZES = {"a.png": (32, 48), "b.png": (37, 53)}


@pytest.fixture(scope="session")
def api_ckpt(tiny_ckpt) -> Path:
    """best.ckpt of the suite's one-epoch run of the tiny config (tests/conftest.py)."""
    return tiny_ckpt


@pytest.fixture(scope="session")
def api_images(tmp_path_factory) -> Path:
    """Two lossless RGB images of two sizes (smooth, so the network sees structure)."""
    folder = tmp_path_factory.mktemp("api_images")
    rng = np.random.default_rng(7)
    for name, (h, w) in SIZES.items():
        base = rng.integers(0, 256, (h // 4 + 1, w // 4 + 1, 3), dtype=np.uint8)
        Image.fromarray(base).resize((w, h), Image.BILINEAR).save(folder / name)
    return folder


@pytest.fixture(scope="session")
def api_folder(tmp_path_factory, api_ckpt) -> Path:
    """The run's model saved as a model folder."""
    import scenemtl

    return scenemtl.load(api_ckpt).save(tmp_path_factory.mktemp("api_saved") / "model")
