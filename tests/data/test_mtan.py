"""The MTAN-release layout (.npy folders) read in place, on tiny trees written here."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from scenemtl.data.datamodule import SceneDataModule, open_info
from scenemtl.data.format import IGNORE_INDEX
from scenemtl.data.mtan import (
    MTANDataset,
    MTANInfo,
    cityscapes_category_table,
    is_mtan_root,
    label_id_to_category,
    nyuv2_class_table,
    read_image,
    read_mtan_info,
    read_normals,
)
from scenemtl.errors import DataFormatError, UserError
from scenemtl.tasks import build_tasks, dataset_task_specs, select_tasks
from tests.data.mtan_trees import H, W, write_mtan_tree


@pytest.fixture
def cs_root(tmp_path):
    return write_mtan_tree(tmp_path / "cityscapes")


@pytest.fixture
def nyu_root(tmp_path):
    return write_mtan_tree(tmp_path / "nyuv2", "nyuv2")


def _dataset(root, split="train", tasks=None, labels=None):
    info = read_mtan_info(root, labels)
    specs = select_tasks(dataset_task_specs(info), tasks or ["semseg", "depth"])
    return MTANDataset(root, split, info, build_tasks(specs))


# ---------------------------------------------------------------------------- layout


def test_layout_detection(cs_root, nyu_root, tmp_path):
    assert is_mtan_root(cs_root) and is_mtan_root(nyu_root)
    assert not is_mtan_root(tmp_path)
    (tmp_path / "cityscapes" / "dataset.json").write_text("{}")
    assert not is_mtan_root(tmp_path / "cityscapes")  # a MiniScapes root wins


def test_cityscapes_info_defaults_to_7_categories(cs_root):
    info = open_info(cs_root)
    assert isinstance(info, MTANInfo)
    assert info.dataset == "cityscapes" and info.depth_units == "disparity"
    assert info.splits == {"train": {"size": 4, "gt": True}, "val": {"size": 2, "gt": True}}
    assert info.image_size == (H, W)
    names = [c["name"] for c in info.classes]
    assert names == ["flat", "construction", "object", "nature", "sky", "human", "vehicle"]
    assert info.folders == {"semseg": "label_7", "depth": "depth"}
    specs = dataset_task_specs(info)
    assert list(specs) == ["semseg", "depth"]
    assert len(specs["semseg"]["classes"]) == 7
    assert len(read_mtan_info(cs_root, labels=19).classes) == 19
    assert read_mtan_info(cs_root, labels=19).folders["semseg"] == "label_19"


def test_nyuv2_info_has_normals_spec(nyu_root):
    info = read_mtan_info(nyu_root)
    assert info.dataset == "nyuv2" and info.depth_units == "meters"
    assert [c["name"] for c in info.classes][:3] == ["bed", "books", "ceiling"]
    assert len(info.classes) == 13
    specs = dataset_task_specs(info)
    assert list(specs) == ["semseg", "depth", "normals"]
    assert specs["normals"] == {"kind": "normals"}
    assert info.folders["normals"] == "normal"


def test_statistics_are_computed_in_memory(cs_root):
    info = read_mtan_info(cs_root)
    stats = info.stats
    for key in ("depth_m", "depth_log", "depth_inv"):
        assert stats[key]["std"] > 0
    # disparity values of the tree are 0.01..0.45, top row invalid
    assert 0.01 <= stats["depth_m"]["mean"] <= 0.45
    assert stats["valid_depth_fraction"] == pytest.approx((H - 1) / H)
    assert stats["ignored_pixel_fraction"] == pytest.approx(0.25)
    lo, hi = info.depth_range_m
    assert 0.01 <= lo < hi <= 0.45
    assert not (cs_root / "dataset.json").exists()  # an MTAN root is never written to


def test_statistics_are_those_of_the_files(nyu_root):
    """Every entry against numpy on the raw files of the train split (float64): the
    moments of the valid depths in meters, log and inverse, the range, the shares."""
    info = read_mtan_info(nyu_root)
    files = sorted((nyu_root / "train" / "depth").glob("*.npy"))
    depth = np.stack([np.load(f)[..., 0] for f in files]).astype(np.float64)
    labels = np.stack([np.load(nyu_root / "train" / "label" / f.name) for f in files])
    valid = depth[depth > 0]
    stats = info.stats
    assert stats["num_images"] == len(files) and stats["split"] == "train"
    assert stats["valid_depth_fraction"] == pytest.approx(valid.size / depth.size, rel=1e-12)
    # sums of <= 10^3 float64 terms against numpy's pairwise mean: << 1e-9 relative apart;
    # the std from sums of squares loses a factor (mean^2 + var) / var < 10 here: << 1e-6
    for key, values in (("depth_m", valid), ("depth_log", np.log(valid)), ("depth_inv", 1 / valid)):
        assert stats[key]["mean"] == pytest.approx(values.mean(), rel=1e-9)
        assert stats[key]["std"] == pytest.approx(values.std(), rel=1e-6)
    labelled = labels[labels >= 0].astype(int)
    expected = np.bincount(labelled, minlength=13) / labelled.size
    np.testing.assert_allclose(stats["class_pixel_frequency"], expected, rtol=1e-12)
    assert stats["ignored_pixel_fraction"] == pytest.approx(1 - labelled.size / labels.size)
    assert info.depth_range_m == (pytest.approx(valid.min()), pytest.approx(valid.max()))


# ---------------------------------------------------------------------------- samples


def test_minus_one_becomes_ignore_and_values_keep_their_range(cs_root):
    item = _dataset(cs_root)[1]
    assert item["rgb"].dtype == torch.uint8 and item["rgb"].shape == (3, H, W)
    sem = item["semseg"].numpy()
    assert sem.dtype == np.int64
    assert (sem[:, : W // 4] == IGNORE_INDEX).all()
    assert set(np.unique(sem[:, W // 4 :])) <= set(range(7))
    depth = item["depth"].numpy()
    assert depth.dtype == np.float32 and depth.shape == (H, W)
    assert (depth[0] == 0).all()
    assert (depth[1:] >= 0.01).all() and (depth[1:] <= 0.45).all()  # disparity, as stored
    raw = np.load(cs_root / "train" / "image" / "1.npy")
    np.testing.assert_allclose(
        item["rgb"].numpy().transpose(1, 2, 0) / 255.0, raw, atol=0.5 / 255 + 1e-6
    )


def test_channel_first_images_are_accepted(tmp_path):
    a = write_mtan_tree(tmp_path / "a", channel_first=False)
    b = write_mtan_tree(tmp_path / "b", channel_first=True)
    assert torch.equal(_dataset(a)[0]["rgb"], _dataset(b)[0]["rgb"])


def test_nyuv2_normals_are_unit_vectors_or_zero(nyu_root):
    item = _dataset(nyu_root, tasks=["semseg", "depth"])[0]
    assert set(item) == {"rgb", "index", "semseg", "depth"}  # only the tasks asked for
    normals = read_normals(nyu_root / "train" / "normal" / "0.npy")
    assert normals.shape == (3, H, W) and normals.dtype == np.float32
    norm = np.linalg.norm(normals, axis=0)
    assert (norm[0] == 0).all()
    np.testing.assert_allclose(norm[1:], 1.0, atol=1e-5)


def test_test_split_reads_val(cs_root):
    dm = SceneDataModule(root=str(cs_root), crop_size=None, num_workers=0)
    dm.setup("test")
    assert dm.dataset("test") is dm.dataset("val")
    assert "test" not in dm.info.splits  # so no submission is packed from val


def test_datamodule_format_switch(cs_root, tmp_path):
    with pytest.raises(UserError, match="data.format"):
        SceneDataModule(root=str(cs_root), format="npy")
    with pytest.raises(DataFormatError, match="dataset.json"):
        SceneDataModule(root=str(cs_root), format="miniscapes", crop_size=None)
    with pytest.raises(DataFormatError, match="not an MTAN-layout root"):
        SceneDataModule(root=str(tmp_path), format="mtan", crop_size=None)


# ---------------------------------------------------------------------------- class tables


def test_seven_categories_come_from_cityscapesscripts():
    lut = label_id_to_category()
    # road, sidewalk, parking -> flat; building -> construction; pole -> object;
    # vegetation -> nature; sky; person -> human; car, caravan -> vehicle
    for label_id, category in ((7, 0), (8, 0), (9, 0), (11, 1), (17, 2), (21, 3), (23, 4),
                               (24, 5), (26, 6), (29, 6)):  # fmt: skip
        assert lut[label_id] == category
    for void in (0, 1, 2, 3, 4, 5, 6):  # unlabeled .. ground
        assert lut[void] == IGNORE_INDEX
    table = cityscapes_category_table()
    assert table[0]["color"] == [128, 64, 128] and table[6]["color"] == [0, 0, 142]
    assert len({tuple(c["color"]) for c in nyuv2_class_table()}) == 13


# ---------------------------------------------------------------------------- hostile


def _one_line(exc) -> str:
    text = str(exc.value)
    assert "\n" not in text
    return text


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda r: (r / "train" / "depth" / "3.npy").unlink(), "3 files"),
        (lambda r: (r / "train" / "image" / "1.npy").unlink(), "missing 1.npy"),
        (lambda r: (r / "val" / "image" / "0.npy").write_bytes(b"garbage"), "not a readable"),
        (lambda r: np.save(r / "val" / "label_7" / "0.npy", np.full((H, W), 7.0)), "outside -1..6"),
        (lambda r: np.save(r / "val" / "label_7" / "0.npy", np.full((H, W), 0.5)), "whole"),
        (
            lambda r: np.save(r / "val" / "image" / "0.npy", np.ones((H, W, 3)) * 255),
            "outside 0..1",
        ),
        (lambda r: np.save(r / "val" / "image" / "0.npy", np.ones((H, W))), "image shape"),
        (lambda r: np.save(r / "val" / "depth" / "0.npy", np.ones((H, W + 1, 1))), "differs"),
        (lambda r: np.save(r / "val" / "image" / "0.npy", np.zeros((H, 2 * W, 3))), "expected"),
    ],
)
def test_hostile_trees_fail_in_one_line_naming_the_file(cs_root, mutate, message):
    mutate(cs_root)
    with pytest.raises(DataFormatError) as exc:
        ds = _dataset(cs_root, split="val")
        _dataset(cs_root, split="train")
        for i in range(len(ds)):
            ds[i]
    assert message in _one_line(exc)


def test_label_choice_errors(cs_root, nyu_root):
    with pytest.raises(UserError, match="7 or 19"):
        read_mtan_info(cs_root, labels=2)
    with pytest.raises(UserError, match="null or 13"):
        read_mtan_info(nyu_root, labels=7)
    for split in ("train", "val"):
        for p in (cs_root / split / "label_7").iterdir():
            p.unlink()
        (cs_root / split / "label_7").rmdir()
    assert read_mtan_info(cs_root).folders["semseg"] == "label_19"
    with pytest.raises(UserError, match="no label_7"):
        read_mtan_info(cs_root, labels=7)


def test_sidecar_declares_units(cs_root):
    (cs_root / "mtan.json").write_text(json.dumps({"name": "conv", "depth_units": "meters"}))
    info = read_mtan_info(cs_root)
    assert info.depth_units == "meters" and info.name == "conv"
    (cs_root / "mtan.json").write_text(json.dumps({"depth_units": "furlongs"}))
    with pytest.raises(DataFormatError, match="depth_units"):
        read_mtan_info(cs_root)


def test_read_image_accepts_uint8(tmp_path):
    arr = np.arange(H * W * 3, dtype=np.uint8).reshape(H, W, 3)
    np.save(tmp_path / "0.npy", arr)
    assert np.array_equal(read_image(tmp_path / "0.npy"), arr)


# ---------------------------------------------------------------------------- data check


def test_data_check_reads_every_file_of_an_mtan_root(cs_root, nyu_root, capsys):
    from scenemtl.cli import main
    from scenemtl.data.check import check_dataset

    assert check_dataset(cs_root) == [] and check_dataset(nyu_root) == []
    np.save(cs_root / "val" / "label_19" / "1.npy", np.full((H, W), 19.0))  # label_7 is fine
    np.save(cs_root / "train" / "depth" / "2.npy", np.ones((H + 1, W, 1)))
    (nyu_root / "val" / "normal" / "0.npy").write_bytes(b"junk")
    problems = check_dataset(cs_root)
    assert len(problems) == 2
    assert "label_19/1.npy" in problems[0] or "label_19/1.npy" in problems[1]
    assert any("depth/2.npy" in p and "differs" in p for p in problems)
    assert "normal/0.npy" in check_dataset(nyu_root)[0]
    with pytest.raises(SystemExit) as exc:
        main(["data", "check", "--root", str(cs_root)])
    assert exc.value.code == 1
    assert "2 problem(s)" in capsys.readouterr().err
