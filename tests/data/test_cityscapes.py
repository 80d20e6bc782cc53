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


# --------------------------------------------------------------------------------------
# --classes 7, --depth meters|disparity, --layout mtan, and hostile inputs


def _leftovers(tmp_path):
    return sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("."))


def test_seven_classes_miniscapes(tmp_path):
    src, out = tmp_path / "cs", tmp_path / "out"
    _write_fake_cityscapes(src, splits=("val",))
    info = convert_cityscapes(src, out, classes=7)
    assert [c["name"] for c in info.classes][:2] == ["flat", "construction"]
    assert check_dataset(out) == []
    sem = SceneDataset(out, "val")[0]["semseg"].numpy()
    # road -> flat 0, car -> vehicle 6, sky -> sky 4, ego vehicle (void) -> 255
    quarters = [set(np.unique(sem[:, k * W // 4 : (k + 1) * W // 4])) for k in range(4)]
    assert quarters == [{0}, {6}, {4}, {255}]


@pytest.mark.parametrize("depth", ["disparity", "meters"])
def test_mtan_layout_roundtrips_through_the_reader(tmp_path, depth):
    from scenemtl.data.mtan import MTANDataset, read_mtan_info
    from scenemtl.tasks import build_tasks, dataset_task_specs

    src, out = tmp_path / "cs", tmp_path / "out"
    _write_fake_cityscapes(src, splits=("train", "val", "test"))
    convert_cityscapes(src, out, size=(8, 16), classes=7, depth=depth, layout="mtan")
    assert sorted(p.name for p in out.iterdir()) == ["mtan.json", "train", "val"]  # no test
    assert sorted(p.name for p in (out / "val").iterdir()) == ["depth", "image", "label_7"]
    image = np.load(out / "val" / "image" / "0.npy")
    assert image.shape == (8, 16, 3) and image.dtype == np.float32
    assert image.min() >= 0.0 and image.max() <= 1.0
    label = np.load(out / "val" / "label_7" / "0.npy")
    assert set(np.unique(label)) == {-1.0, 0.0, 4.0, 6.0}
    raw = np.load(out / "val" / "depth" / "0.npy")
    assert raw.shape == (8, 16, 1)
    expected = 10.0 if depth == "disparity" else BASELINE * FX / 10
    valid = raw[raw > 0]
    np.testing.assert_allclose(valid, expected, rtol=1e-6)
    assert (raw[0] == 0).all()  # rows 0-1 of the original (invalid) -> row 0 at half size

    info = read_mtan_info(out)
    assert info.depth_units == ("disparity_px" if depth == "disparity" else "meters")
    assert len(info.classes) == 7 and info.image_size == (8, 16)
    item = MTANDataset(out, "val", info, build_tasks(dataset_task_specs(info)))[1]
    assert set(np.unique(item["semseg"].numpy())) == {0, 4, 6, 255}
    assert _leftovers(tmp_path) == []


def test_disparity_needs_the_mtan_layout(tmp_path):
    src = tmp_path / "cs"
    _write_fake_cityscapes(src, splits=("val",))
    with pytest.raises(UserError, match="--layout mtan"):
        convert_cityscapes(src, tmp_path / "out", depth="disparity")
    assert not (tmp_path / "out").exists()


def test_disparity_mode_reads_no_camera_files(tmp_path):
    src, out = tmp_path / "cs", tmp_path / "out"
    _write_fake_cityscapes(src, splits=("val",))
    import shutil

    shutil.rmtree(src / "camera")
    convert_cityscapes(src, out, depth="disparity", layout="mtan")
    with pytest.raises(UserError, match="camera"):
        convert_cityscapes(src, tmp_path / "out2", layout="mtan")


def _corrupt_png(src):
    next((src / "disparity" / "val").rglob("*.png")).write_bytes(b"\x89PNG\r\n\x1a\nbroken")


def _wrong_label_size(src):
    path = next((src / "gtFine" / "val").rglob("*.png"))
    Image.fromarray(np.zeros((H, W + 2), np.uint8)).save(path)


def _missing_gtfine(src):
    import shutil

    shutil.rmtree(src / "gtFine" / "val")


def _rgb_disparity(src):
    path = next((src / "disparity" / "val").rglob("*.png"))
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(path)


@pytest.mark.parametrize(
    "damage, message",
    [
        (_corrupt_png, "cannot decode image"),
        (_wrong_label_size, "differs from its RGB"),
        (_missing_gtfine, "missing folder"),
        (_rgb_disparity, "expected 16-bit"),
    ],
)
@pytest.mark.parametrize("layout", ["miniscapes", "mtan"])
def test_hostile_input_is_one_line_and_leaves_nothing(tmp_path, capsys, damage, message, layout):
    from scenemtl.cli import main

    src, out = tmp_path / "cs", tmp_path / "out"
    _write_fake_cityscapes(src, splits=("train", "val"))
    damage(src)
    argv = ["data", "cityscapes", "--src", str(src), "--out", str(out), "--layout", layout]
    with pytest.raises(SystemExit) as exc:
        main([*argv, "--classes", "7", "--size", "8x16"])
    assert exc.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not out.exists()
    assert _leftovers(tmp_path) == []


def test_cli_converts_and_an_empty_out_folder_is_fine(tmp_path, capsys):
    from scenemtl.cli import main

    src, out = tmp_path / "cs", tmp_path / "out"
    _write_fake_cityscapes(src, splits=("train", "val"))
    out.mkdir()
    argv = ["data", "cityscapes", "--src", str(src), "--out", str(out)]
    with pytest.raises(SystemExit) as exc:
        main([*argv, "--classes", "7", "--depth", "disparity", "--layout", "mtan"])
    assert exc.value.code == 0
    assert "7 classes" in capsys.readouterr().out
    assert (out / "mtan.json").is_file()
    with pytest.raises(SystemExit) as exc:
        main([*argv, "--classes", "7", "--depth", "disparity", "--layout", "mtan"])
    assert exc.value.code == 1
    assert "is not empty" in capsys.readouterr().err
