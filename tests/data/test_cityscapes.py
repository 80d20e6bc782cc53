"""The converter on a tiny fake Cityscapes tree written here."""

import json

import numpy as np
import pytest
from PIL import Image

from scenemtl.data.check import check_dataset
from scenemtl.data.cityscapes import convert_cityscapes, label_id_to_train_id
from scenemtl.data.dataset import SceneDataset
from scenemtl.errors import UserError

H, W = 16, 32
BASELINE, FX = 0.2, 500.0


def _write_fake_cityscapes(src, splits=("train", "val")):
    rng = np.random.default_rng(0)
    for split in splits:
        for k, city in enumerate(("aachen", "bremen")):
            stem = f"{city}_000000_00001{k}"
            d = {
                m: src / m / split / city for m in ("leftImg8bit", "gtFine", "disparity", "camera")
            }
            for p in d.values():
                p.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 255, (H, W, 3), dtype=np.uint8)).save(
                d["leftImg8bit"] / f"{stem}_leftImg8bit.png"
            )
            ids = np.zeros((H, W), np.uint8)
            ids[:, : W // 4] = 7  # road -> 0
            ids[:, W // 4 : W // 2] = 26  # car -> 13
            ids[:, W // 2 : 3 * W // 4] = 23  # sky -> 10
            ids[:, 3 * W // 4 :] = 1  # ego vehicle -> ignore
            Image.fromarray(ids).save(d["gtFine"] / f"{stem}_gtFine_labelIds.png")
            disp = np.full((H, W), 1 + 256 * 10, np.uint16)  # disparity 10 px
            disp[0, :] = 0  # invalid
            disp[1, :] = 1  # invalid (p <= 1)
            Image.fromarray(disp).save(d["disparity"] / f"{stem}_disparity.png")
            (d["camera"] / f"{stem}_camera.json").write_text(
                json.dumps({"extrinsic": {"baseline": BASELINE}, "intrinsic": {"fx": FX}})
            )


def test_label_table_from_cityscapesscripts():
    lut = label_id_to_train_id()
    assert lut[7] == 0 and lut[26] == 13 and lut[23] == 10 and lut[33] == 18
    assert lut[0] == lut[1] == lut[-1] == 255


def test_convert_fake_tree(tmp_path):
    src, out = tmp_path / "cs", tmp_path / "out"
    _write_fake_cityscapes(src)
    info = convert_cityscapes(src, out)
    assert info.splits == {"train": {"size": 2, "gt": True}, "val": {"size": 2, "gt": True}}
    assert check_dataset(out) == []
    item = SceneDataset(out, "val")[1]
    sem = item["semseg"].numpy()
    assert set(np.unique(sem[:, : W // 4])) == {0} and set(np.unique(sem[:, W // 4 : W // 2])) == {
        13
    }
    assert set(np.unique(sem[:, 3 * W // 4 :])) == {255}
    depth = item["depth"].numpy()
    assert (depth[:2] == 0).all()
    np.testing.assert_allclose(depth[2:], BASELINE * FX / 10, atol=1 / 256)


def test_resize_is_nearest_for_labels_and_depth(tmp_path):
    src, out = tmp_path / "cs", tmp_path / "out"
    _write_fake_cityscapes(src, splits=("train",))
    convert_cityscapes(src, out, size=(8, 16))
    item = SceneDataset(out, "train")[0]
    assert item["rgb"].shape == (3, 8, 16)
    assert set(np.unique(item["semseg"].numpy())) == {0, 13, 10, 255}
    valid = item["depth"].numpy()
    assert set(np.round(np.unique(valid[valid > 0]), 3)) == {round(BASELINE * FX / 10, 3)}


def test_not_a_cityscapes_root(tmp_path):
    with pytest.raises(UserError, match="no leftImg8bit"):
        convert_cityscapes(tmp_path, tmp_path / "out")


def test_refuses_to_overwrite(tmp_path):
    src, out = tmp_path / "cs", tmp_path / "out"
    _write_fake_cityscapes(src, splits=("val",))
    convert_cityscapes(src, out)
    with pytest.raises(UserError, match="already holds a dataset"):
        convert_cityscapes(src, out)


def test_corrupt_camera_file_is_named(tmp_path):
    src, out = tmp_path / "cs", tmp_path / "out"
    _write_fake_cityscapes(src, splits=("val",))
    cam = next((src / "camera/val").rglob("*.json"))
    cam.write_text("{}")
    with pytest.raises(UserError, match=cam.name):
        convert_cityscapes(src, out)
    assert not (out / "dataset.json").exists()
