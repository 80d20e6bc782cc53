from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from scenemtl.data.dataset import SceneDataset
from scenemtl.data.format import read_info
from scenemtl.data.stats import compute_stats, format_stats, write_stats
from scenemtl.errors import DataFormatError
from tests.helpers import write_random_dataset


def test_stats_match_numpy_over_valid_train_pixels(random_dataset, tmp_path):
    _, plots = write_stats(random_dataset, plots_dir=tmp_path / "plots")
    ds = SceneDataset(random_dataset, "train")
    depth = np.concatenate([ds[i]["depth"].numpy().ravel() for i in range(len(ds))])
    labels = np.concatenate([ds[i]["semseg"].numpy().ravel() for i in range(len(ds))])
    valid = depth[depth > 0].astype(np.float64)
    stats = read_info(random_dataset).stats  # what training will read
    assert stats["depth_m"]["mean"] == pytest.approx(valid.mean(), rel=1e-9)
    assert stats["depth_m"]["std"] == pytest.approx(valid.std(), rel=1e-6)
    assert stats["depth_log"]["mean"] == pytest.approx(np.log(valid).mean(), rel=1e-9)
    assert stats["depth_log"]["std"] == pytest.approx(np.log(valid).std(), rel=1e-6)
    assert stats["depth_inv"]["mean"] == pytest.approx((1 / valid).mean(), rel=1e-9)
    assert stats["valid_depth_fraction"] == pytest.approx(valid.size / depth.size)
    freq = np.bincount(labels[labels != 255], minlength=19) / (labels != 255).sum()
    np.testing.assert_allclose(stats["class_pixel_frequency"], freq)
    assert stats["num_images"] == 4
    assert [p.name for p in plots] == ["depth_hist_meters.png", "depth_hist_log.png"]
    assert all(p.stat().st_size > 1000 for p in plots)


def test_stats_keep_the_rest_of_dataset_json(random_dataset):
    before = read_info(random_dataset)
    after, _ = write_stats(random_dataset)
    assert after.splits == before.splits and after.image_size == before.image_size
    assert not list(random_dataset.glob(".dataset.json.*"))  # no temp file left behind


def test_stats_fail_cleanly_without_gt(tmp_path):
    write_random_dataset(tmp_path, sizes={"test": 2}, test_gt=False)
    before = (tmp_path / "dataset.json").read_bytes()
    with pytest.raises(DataFormatError, match="no ground truth"):
        write_stats(tmp_path)
    assert (tmp_path / "dataset.json").read_bytes() == before


def test_stats_on_corrupt_file_leave_dataset_json_untouched(random_dataset):
    before = (random_dataset / "dataset.json").read_bytes()
    (random_dataset / "train/depth/2.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(DataFormatError, match="train/depth/2.png"):
        write_stats(random_dataset)
    assert (random_dataset / "dataset.json").read_bytes() == before


def test_class_frequencies_follow_the_datasets_class_table(tmp_path):
    """7 classes: seven frequencies, counted by hand over the labelled pixels."""
    write_random_dataset(tmp_path, sizes={"train": 3}, num_classes=7)
    stats, _ = compute_stats(tmp_path)
    labels = np.stack(
        [np.asarray(Image.open(tmp_path / f"train/semseg/{i}.png")) for i in range(3)]
    ).ravel()
    labelled = labels[labels != 255]
    expected = [np.sum(labelled == c) / labelled.size for c in range(7)]
    np.testing.assert_allclose(stats["class_pixel_frequency"], expected, rtol=1e-12)
    assert stats["ignored_pixel_fraction"] == pytest.approx(1 - labelled.size / labels.size)


def test_format_stats_prints_what_each_task_describes():
    """Each task prints its own entries: a dataset without depth (normals only, or a
    kind without statistics) prints no depth lines and needs none."""
    classes = [{"name": "road", "color": [1, 2, 3]}, {"name": "sky", "color": [4, 5, 6]}]
    both = SimpleNamespace(
        task_specs={
            "semseg": {"kind": "segmentation", "classes": classes},
            "depth": {"kind": "depth"},
        },
        stats={
            "split": "train",
            "num_images": 3,
            "class_pixel_frequency": [0.25, 0.75],
            "valid_depth_fraction": 0.5,
            "depth_m": {"mean": 10.0, "std": 2.0},
            "depth_log": {"mean": 2.25, "std": 0.5},
            "depth_inv": {"mean": 0.125, "std": 0.0625},
        },
    )
    assert format_stats(both).splitlines() == [
        "split train: 3 images",
        "  semseg class pixel frequency:",
        f"    {'road':14s}  25.00%",
        f"    {'sky':14s}  75.00%",
        "  depth: 50.0% valid pixels",
        "  depth_m    mean 10 std 2 m",
        "  depth_log  mean 2.25 std 0.5 log m",
        "  depth_inv  mean 0.125 std 0.0625 1/m",
    ]
    normals_only = SimpleNamespace(
        task_specs={"normals": {"kind": "normals"}}, stats={"split": "val", "num_images": 2}
    )
    assert format_stats(normals_only) == "split val: 2 images"
