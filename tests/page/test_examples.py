"""The dataset images `serve --data ROOT` offers as examples."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from scenemtl.data.mtan import read_image
from scenemtl.errors import UserError
from scenemtl.page.examples import dataset_examples
from tests.data.mtan_trees import write_mtan_tree
from tests.helpers import write_random_dataset


def test_a_miniscapes_root_offers_its_first_val_and_test_files(tmp_path):
    root = tmp_path / "ds"
    write_random_dataset(root, sizes={"train": 3, "val": 3, "test": 1})
    found = dataset_examples(root, tmp_path / "cache")
    rel = [p.relative_to(root.resolve()).as_posix() for p in found]
    assert [r.rsplit(".", 1)[0] for r in rel] == ["val/rgb/0", "val/rgb/1", "test/rgb/0"]
    assert all(p.is_absolute() and p.is_file() for p in found)


def test_an_mtan_root_offers_its_val_images_as_png(tmp_path):
    root = write_mtan_tree(tmp_path / "mtan", sizes={"train": 2, "val": 3})
    cache = tmp_path / "cache"
    cache.mkdir()
    found = dataset_examples(root, cache)
    assert [p.name for p in found] == ["val_0.png", "val_1.png"]
    for i, path in enumerate(found):
        png = np.asarray(Image.open(path).convert("RGB"))
        # PNG is lossless: the page shows the uint8 image training reads
        assert np.array_equal(png, read_image(root / "val" / "image" / f"{i}.npy"))


def test_a_folder_that_is_no_dataset_is_one_line(tmp_path):
    with pytest.raises(UserError, match="not a scenemtl dataset root"):
        dataset_examples(tmp_path, tmp_path)


def test_a_root_without_val_or_test_images_is_one_line(tmp_path):
    root = tmp_path / "ds"
    write_random_dataset(root, sizes={"train": 2})
    with pytest.raises(UserError, match="no val or test image"):
        dataset_examples(root, tmp_path)
