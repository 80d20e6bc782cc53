"""A tiny trained run shared by the API tests, and images to predict on."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from scenemtl.cli import main
from tests.helpers import slow_fixture, tiny_config

SIZES = {"a.png": (32, 48), "b.png": (37, 53)}


@slow_fixture(scope="session")
def api_ckpt(tmp_path_factory, tiny_root) -> Path:
    """best.ckpt of a one-epoch run of the tests' tiny config (a 16-wide ResNet-18)."""
    tmp = tmp_path_factory.mktemp("api_fit")
    cfg = tiny_config(tmp, tiny_root, **{"trainer.max_epochs": 1})
    with pytest.raises(SystemExit) as exc:
        main(["fit", "--config", str(cfg)])
    assert exc.value.code == 0
    return tmp / "runs" / "tiny" / "version_0" / "checkpoints" / "best.ckpt"


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
