import json

import numpy as np
import pytest
import torch
from PIL import Image

from scenemtl.data.dataset import SceneDataset
from scenemtl.data.format import (
    DISPARITY8,
    METERS16,
    DatasetInfo,
    decode_depth,
    encode_depth,
    read_info,
    write_info,
)
from scenemtl.errors import DataFormatError
from tests.helpers import write_random_dataset


@pytest.mark.parametrize("encoding", [DISPARITY8, METERS16])
def test_depth_roundtrip_within_quantization(encoding):
    depth = np.geomspace(4.0, 250.0, 500).reshape(20, 25).astype(np.float32)
    back = decode_depth(encode_depth(depth, encoding))
    if encoding == METERS16:
        np.testing.assert_allclose(back, depth, atol=0.5 / 256 + 1e-6)
    else:
        # one code step in inverse depth, converted to a relative error bound
        step = (1 / 4 - 1 / 300) / 254
        assert np.all(np.abs(1 / back - 1 / depth) <= step / 2 + 1e-9)


@pytest.mark.parametrize("encoding", [DISPARITY8, METERS16])
def test_invalid_depth_stays_invalid_and_valid_never_becomes_invalid(encoding):
    depth = np.array([[0.0, np.nan, -3.0, np.inf, 4.0, 1000.0]])
    back = decode_depth(encode_depth(depth, encoding))
    assert (back[0, :4] == 0).all()
    assert (back[0, 4:] > 0).all()


def test_disparity_code_end_points():
    img = encode_depth(np.array([[4.0, 300.0]]), DISPARITY8)
    assert img.mode == "L"
    assert np.asarray(img).tolist() == [[255, 1]]
    assert decode_depth(Image.fromarray(np.array([[1, 255]], np.uint8))).tolist() == [
        [pytest.approx(300.0), pytest.approx(4.0)]
    ]


def test_meters16_is_kitti_convention():
    img = encode_depth(np.array([[10.0]]), METERS16)
    assert img.mode == "I;16"
    assert np.asarray(img)[0, 0] == 2560


def test_info_roundtrip(tmp_path):
    info = DatasetInfo(name="x", image_size=(8, 16), splits={"train": {"size": 3, "gt": True}})
    write_info(tmp_path, info)
    back = read_info(tmp_path)
    assert back.image_size == (8, 16) and back.split_size("train") == 3
    assert back.classes[0]["name"] == "road" and len(back.classes) == 19


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: d.pop("splits"), "missing key 'splits'"),
        (lambda d: d.update(image_size=[0, 3]), "image_size"),
        (lambda d: d.update(format="other"), "'format'"),
        (lambda d: d["depth"].update(encoding="float"), "unknown depth encoding"),
        (lambda d: d["splits"].update(holdout={"size": 1}), "unknown split"),
        (lambda d: d["depth"].update(min_m=10, max_m=5), "positive interval"),
    ],
)
def test_malformed_info_names_the_problem(tmp_path, mutate, message):
    info = DatasetInfo(name="x", image_size=(8, 16), splits={"train": {"size": 3, "gt": True}})
    data = info.to_json()
    mutate(data)
    (tmp_path / "dataset.json").write_text(json.dumps(data))
    with pytest.raises(DataFormatError, match=message):
        read_info(tmp_path)


def test_info_not_json(tmp_path):
    (tmp_path / "dataset.json").write_text("{oops")
    with pytest.raises(DataFormatError, match="not valid JSON"):
        read_info(tmp_path)


def test_missing_root(tmp_path):
    with pytest.raises(DataFormatError, match="does not exist"):
        read_info(tmp_path / "nope")


@pytest.mark.parametrize("encoding", [DISPARITY8, METERS16])
def test_dataset_items(tmp_path, encoding):
    write_random_dataset(tmp_path, depth_encoding=encoding)
    ds = SceneDataset(tmp_path, "train")
    assert len(ds) == 4
    item = ds[1]
    assert item["rgb"].dtype == torch.uint8 and item["rgb"].shape == (3, 24, 40)
    assert item["semseg"].dtype == torch.int64 and item["semseg"].shape == (24, 40)
    assert item["depth"].dtype == torch.float32 and item["depth"].shape == (24, 40)
    assert (item["depth"][:4] == 0).all() and (item["depth"][5:] > 0).all()
    labels = set(item["semseg"].unique().tolist())
    assert labels <= set(range(19)) | {255}
    assert int(item["index"]) == 1
    with pytest.raises(IndexError):
        ds[4]


def test_test_split_without_gt_loads_rgb_only(tmp_path):
    write_random_dataset(tmp_path, test_gt=False)
    ds = SceneDataset(tmp_path, "test")
    item = ds[0]
    assert set(item) == {"rgb", "index"}
    with pytest.raises(DataFormatError, match="no ground truth"):
        SceneDataset(tmp_path, "test", with_gt=True)


def test_palette_labels_read_as_train_ids(tmp_path):
    write_random_dataset(tmp_path)
    path = tmp_path / "train" / "semseg" / "0.png"
    arr = np.asarray(Image.open(path))
    p_img = Image.new("P", (arr.shape[1], arr.shape[0]))
    p_img.putdata(arr.ravel().tolist())
    p_img.putpalette([v for i in range(256) for v in (i, i, i)])
    p_img.save(path)
    item = SceneDataset(tmp_path, "train")[0]
    assert item["semseg"].numpy().tolist() == arr.astype(np.int64).tolist()
