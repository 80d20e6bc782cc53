import json

import numpy as np
from PIL import Image

from scenemtl.data.check import check_dataset
from scenemtl.data.format import METERS16
from tests.helpers import write_random_dataset


def _snapshot(root):
    return {p: p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_clean_dataset_has_no_problem(random_dataset):
    assert check_dataset(random_dataset) == []


def test_clean_meters16_dataset(tmp_path):
    write_random_dataset(tmp_path, depth_encoding=METERS16)
    assert check_dataset(tmp_path) == []


def test_every_problem_is_reported_with_its_path(random_dataset):
    root = random_dataset
    before_json = (root / "dataset.json").read_bytes()
    (root / "train/rgb/0.png").write_bytes(b"not an image")  # undecodable
    (root / "train/depth/1.png").unlink()  # missing modality
    Image.new("L", (10, 10)).save(root / "val/semseg/0.png")  # size mismatch
    bad = np.asarray(Image.open(root / "val/semseg/1.png")).copy()
    bad[0, 0] = 42
    Image.fromarray(bad).save(root / "val/semseg/1.png")  # label value outside the set
    Image.fromarray(np.full((24, 40), 100, np.uint16)).save(root / "test/depth/0.png")  # 0.39 m
    Image.new("RGB", (40, 24)).save(root / "train/rgb/9.png")  # extra index
    snapshot = _snapshot(root)
    problems = check_dataset(root)
    text = "\n".join(problems)
    assert f"{root}/train/rgb/0.png: cannot decode" in text
    assert f"{root}/train/depth/1.png: file not found" in text
    assert f"{root}/val/semseg/0: size 10x10 differs" in text
    assert f"{root}/val/semseg/1.png: label values [42]" in text
    assert (
        f"{root}/test/depth/0.png: mode I;16 is meters16, dataset.json declares disparity8" in text
    )
    assert f"{root}/train/rgb/9.png: index beyond split size" in text
    assert f"{root}/test/depth/0.png: depth 0.391..0.391 m outside declared range" in text
    assert len(problems) == 7, problems
    assert _snapshot(root) == snapshot  # read-only
    assert (root / "dataset.json").read_bytes() == before_json


def test_depth_outside_declared_range(tmp_path):
    write_random_dataset(tmp_path, depth_encoding=METERS16)
    Image.fromarray(np.full((24, 40), 65000, np.uint16)).save(tmp_path / "val/depth/1.png")
    info = json.loads((tmp_path / "dataset.json").read_text())
    info["depth"]["max_m"] = 200.0
    (tmp_path / "dataset.json").write_text(json.dumps(info))
    problems = check_dataset(tmp_path)
    assert any("val/depth/1.png: depth" in p and "outside declared range" in p for p in problems)


def test_malformed_dataset_json(random_dataset):
    (random_dataset / "dataset.json").write_text("[]")
    assert check_dataset(random_dataset) == [
        f"{random_dataset}/dataset.json: top level is not an object"
    ]


def test_missing_split_directory(random_dataset):
    import shutil

    shutil.rmtree(random_dataset / "val")
    problems = check_dataset(random_dataset)
    assert problems == [f"{random_dataset}/val: split listed in dataset.json but missing"]


def test_labels_are_checked_against_the_datasets_own_class_table(tmp_path):
    """A 7-class table: 7..254 are outside it, whatever the Cityscapes table allows."""
    write_random_dataset(tmp_path, sizes={"train": 2}, num_classes=7)
    assert check_dataset(tmp_path) == []
    labels = np.asarray(Image.open(tmp_path / "train/semseg/1.png")).copy()
    labels[0, :3] = [6, 7, 18]  # 6 is the last class; 7 and 18 are not classes here
    Image.fromarray(labels).save(tmp_path / "train/semseg/1.png")
    problems = check_dataset(tmp_path)
    assert problems == [
        f"{tmp_path}/train/semseg/1.png: label values [7, 18] outside the 7-class table "
        "(0..6) and 255"
    ]
