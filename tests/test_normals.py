"""The normals task: codec, loss, metrics, TTA merge, export check, dataset.json."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from scenemtl.data.format import (
    NORMALS_CODEC_MAX_ANGLE_DEG,
    DatasetInfo,
    decode_normals,
    encode_normals,
    read_info,
    read_normals,
    write_info,
    write_normals,
)
from scenemtl.errors import DataFormatError, UserError
from scenemtl.tasks import NormalsTask, build_task, dataset_task_specs
from scenemtl.tasks.normals import NormalsMetrics, angular_error_deg, normals_loss
from scenemtl.tta import tta_outputs


def random_normals(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """float32 [3, *shape] unit vectors, uniform on the sphere."""
    n = np.random.default_rng(seed).normal(size=(3, *shape))
    return (n / np.linalg.norm(n, axis=0)).astype(np.float32)


def task(**options) -> NormalsTask:
    t = build_task("normals", {"kind": "normals", "encoding": "rgb8"}, options)
    assert isinstance(t, NormalsTask)
    return t


# --------------------------------------------------------------------------------------
# codec


def test_codec_round_trip_is_within_the_stated_angle_and_keeps_invalid(tmp_path):
    n = random_normals((64, 96))
    n[:, :5] = 0.0  # invalid rows
    path = tmp_path / "n.png"
    write_normals(path, n)
    back = read_normals(path)
    assert back.dtype == np.float32 and back.shape == n.shape
    assert (back[:, :5] == 0).all()
    err = angular_error_deg(torch.from_numpy(back[:, 5:])[None], torch.from_numpy(n[:, 5:])[None])
    # half a code step per component: |error vector| <= sqrt(3)/255, angle <= asin of it
    assert math.isclose(NORMALS_CODEC_MAX_ANGLE_DEG, 0.3892, abs_tol=1e-4)
    assert float(err.max()) <= NORMALS_CODEC_MAX_ANGLE_DEG
    assert float(err.max()) > 0.5 * NORMALS_CODEC_MAX_ANGLE_DEG  # the bound is not loose
    lengths = np.linalg.norm(back[:, 5:], axis=0)
    np.testing.assert_allclose(lengths, 1.0, atol=1e-6)
    # the file is 8-bit RGB, (n + 1) / 2 * 255, R = x
    image = Image.open(path)
    assert image.mode == "RGB"
    code = np.asarray(image)
    assert code[10, 3, 0] == round((float(n[0, 10, 3]) + 1) * 127.5)


def test_hwc_input_and_grey_zero_vector_read_as_invalid():
    n = random_normals((4, 5))
    assert np.array_equal(
        np.asarray(encode_normals(n.transpose(1, 2, 0))), np.asarray(encode_normals(n))
    )
    grey = Image.fromarray(np.full((2, 3, 3), 128, np.uint8), mode="RGB")
    assert (decode_normals(grey) == 0).all()


@pytest.mark.parametrize(
    "image, message",
    [
        (Image.fromarray(np.zeros((4, 4), np.uint8), mode="L"), "mode L; expected RGB"),
        (Image.fromarray(np.full((4, 4, 3), 255, np.uint8), mode="RGB"), "unit normals"),
        (Image.fromarray(np.full((4, 4, 3), 180, np.uint8), mode="RGB"), "unit normals"),
    ],
)
def test_bad_normals_png_is_one_line_naming_the_file(tmp_path, image, message):
    path = tmp_path / "bad.png"
    image.save(path)
    with pytest.raises(DataFormatError, match=message) as e:
        task().read_target(path)
    assert str(e.value).startswith(str(path)) and "\n" not in str(e.value)


def test_corrupt_normals_png_names_the_file(tmp_path):
    path = tmp_path / "0.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(DataFormatError, match="cannot decode") as e:
        read_normals(path)
    assert str(e.value).startswith(str(path))


# --------------------------------------------------------------------------------------
# loss


@pytest.mark.parametrize("kind", ["l1", "cosine"])
def test_loss_is_zero_for_a_perfect_prediction_and_ignores_invalid_pixels(kind):
    target = torch.from_numpy(random_normals((2, 6, 7)).transpose(1, 0, 2, 3).copy())
    target[:, :, :2] = 0.0  # invalid
    output = target * 3.0  # any length: the loss sees directions only
    output[:, :, :2] = torch.randn(2, 3, 2, 7)  # garbage where nothing is valid
    output.requires_grad_(True)
    loss = normals_loss(output, target, kind)
    # float32 rounding of a unit dot product or of a normalization: a few ulp
    assert float(loss.detach()) == pytest.approx(0.0, abs=1e-6)
    loss.backward()
    assert float(output.grad[:, :, :2].abs().max()) == 0.0


def test_losses_grow_with_the_angle_as_documented():
    target = torch.zeros(1, 3, 1, 2)
    target[0, 2] = -1.0
    output = torch.zeros(1, 3, 1, 2)
    output[0, 0] = 1.0  # 90 degrees off at both pixels
    assert float(normals_loss(output, target, "cosine")) == pytest.approx(1.0, abs=1e-6)
    assert float(normals_loss(output, target, "l1")) == pytest.approx(2.0, abs=1e-6)
    assert float(task(loss="cosine").loss(output, target)) == pytest.approx(1.0, abs=1e-6)


def test_loss_without_valid_pixels_is_zero_with_a_graph():
    output = torch.randn(1, 3, 2, 2, requires_grad=True)
    loss = normals_loss(output, torch.zeros(1, 3, 2, 2))
    assert float(loss.detach()) == 0.0 and loss.requires_grad
    loss.backward()


def test_unknown_loss_and_encoding_are_one_line_user_errors():
    with pytest.raises(UserError, match="normals loss 'l2' unknown; choose one of l1, cosine"):
        task(loss="l2")
    with pytest.raises(UserError, match="unknown normals encoding 'rgb16'"):
        build_task("normals", {"kind": "normals", "encoding": "rgb16"})


# --------------------------------------------------------------------------------------
# metrics


def test_metric_of_a_ninety_degree_error_field():
    target = torch.zeros(2, 3, 4, 5)
    target[:, 2] = -1.0
    pred = torch.zeros(2, 3, 4, 5)
    pred[:, 1] = 1.0
    m = NormalsMetrics()
    m.update(pred, target)
    out = m.compute()
    assert float(out["normals"]) == pytest.approx(90.0, abs=1e-9)
    # the median is the centre of its 0.01-degree bin: within 0.005 degrees
    assert float(out["normals_median"]) == pytest.approx(90.0, abs=0.005)
    for key in ("normals_within_11_25", "normals_within_22_5", "normals_within_30"):
        assert float(out[key]) == 0.0


def test_metric_known_mixture_and_invalid_pixels_left_out():
    # 10 pixels at 0 deg, 6 at 20 deg, 4 at 45 deg; 5 invalid pixels with a wrong guess
    angles = [0.0] * 10 + [20.0] * 6 + [45.0] * 4
    t = torch.tensor(angles, dtype=torch.float64).deg2rad()
    pred = torch.stack([torch.sin(t), torch.zeros_like(t), -torch.cos(t)]).float()
    target = torch.zeros(3, 20)
    target[2] = -1.0
    pred = torch.cat([pred, torch.ones(3, 5)], dim=1).view(1, 3, 5, 5)
    target = torch.cat([target, torch.zeros(3, 5)], dim=1).view(1, 3, 5, 5)
    m = NormalsMetrics(prefix="n")
    m.update(pred, target)
    out = {k: float(v) for k, v in m.compute().items()}
    # float32 inputs: angles within ~1e-5 degrees of the exact ones
    assert out["n"] == pytest.approx((6 * 20 + 4 * 45) / 20, abs=1e-4)
    assert out["n_median"] == pytest.approx(0.0, abs=0.005)  # 10 of 20 are 0: bin 0
    assert out["n_within_11_25"] == pytest.approx(50.0)
    assert out["n_within_22_5"] == pytest.approx(80.0)
    assert out["n_within_30"] == pytest.approx(80.0)


def test_metric_without_valid_pixels_is_nan_and_wrong_shapes_refused():
    m = NormalsMetrics()
    m.update(torch.ones(1, 3, 2, 2), torch.zeros(1, 3, 2, 2))
    assert all(math.isnan(float(v)) for v in m.compute().values())
    with pytest.raises(ValueError, match="normals prediction"):
        m.update(torch.ones(1, 1, 2, 2), torch.zeros(1, 3, 2, 2))


def test_angular_error_is_accurate_near_zero():
    # acos(dot) would give 0 or ~0.02 degrees here; atan2 keeps the 1e-4 rad angle
    eps = 1e-4
    a = torch.tensor([0.0, 0.0, 1.0]).view(1, 3, 1, 1)
    b = torch.tensor([math.sin(eps), 0.0, math.cos(eps)], dtype=torch.float64).view(1, 3, 1, 1)
    assert float(angular_error_deg(b, a.double())) == pytest.approx(math.degrees(eps), rel=1e-6)


# --------------------------------------------------------------------------------------
# TTA, export check, task contract


def test_tta_merges_mirrored_views_as_renormalized_mean():
    # A network that sees a wall turned to the right (+x) in the image, whatever the image.
    # Its mirrored view, un-mirrored, is a wall turned to the left: the merge of the two
    # is straight on, (0, 0, -1); without negating x it would stay turned.
    t = task()
    raw = torch.tensor([0.6, 0.0, -0.8]).view(1, 3, 1, 1)

    def forward(x):
        return {"normals": [raw.expand(x.shape[0], 3, *x.shape[-2:]).clone()]}

    image = torch.randn(1, 3, 4, 6)
    merged = tta_outputs(forward, image, [t], scales=[1.0], flip=True)["normals"]
    expected = torch.tensor([0.0, 0.0, -1.0]).view(1, 3, 1, 1).expand_as(merged)
    torch.testing.assert_close(merged, expected)
    # one view: the output as decode makes it (unit length)
    single = tta_outputs(forward, image, [t])["normals"]
    torch.testing.assert_close(single.norm(dim=1), torch.ones(1, 4, 6))


def test_unmirror_flips_pixels_and_negates_x():
    out = torch.randn(2, 3, 4, 5)
    back = task().unmirror(out)
    torch.testing.assert_close(back[:, 0], -out[:, 0].flip(-1))
    torch.testing.assert_close(back[:, 1:], out[:, 1:].flip(-1))


def test_compare_export_tolerates_float_noise_and_catches_a_turned_normal():
    t = task()
    ref = random_normals((2, 4, 5)).transpose(1, 0, 2, 3).copy()
    ok, text = t.compare_export({"normals": ref}, {"normals": ref + 1e-6})
    assert ok and "normals max angle" in text
    bad = ref.copy()
    bad[0, :, 0, 0] = -bad[0, :, 0, 0]
    ok, _ = t.compare_export({"normals": ref}, {"normals": bad})
    assert not ok


def test_task_contract_shapes_and_pictures():
    t = task()
    assert t.channels == 3 and t.target_channels == 3 and not t.higher_is_better
    decoded = t.decode(torch.randn(2, 3, 4, 5) * 7)
    torch.testing.assert_close(decoded.norm(dim=1), torch.ones(2, 4, 5))
    n = random_normals((4, 5))
    n[:, 0, 0] = 0
    pic = t.colorize(n)
    assert pic.shape == (4, 5, 3) and pic.dtype == np.uint8 and (pic[0, 0] == 0).all()
    png = t.encode_png(n)
    assert t.read_prediction(png, n).shape == (3, 4, 5)
    # a prediction without a normal where the ground truth has one is refused
    with pytest.raises(DataFormatError, match="at 1 pixel"):
        t.read_prediction(png, random_normals((4, 5)))
    assert t.spec() == {"kind": "normals", "encoding": "rgb8"}


# --------------------------------------------------------------------------------------
# dataset.json


def info_with(extra) -> DatasetInfo:
    return DatasetInfo(
        name="x", image_size=(4, 4), splits={"train": {"size": 0, "gt": True}}, extra_tasks=extra
    )


def test_dataset_json_extra_tasks_round_trip_and_give_a_third_spec(tmp_path):
    write_info(tmp_path, info_with({"normals": {"kind": "normals", "encoding": "rgb8"}}))
    info = read_info(tmp_path)
    assert list(dataset_task_specs(info)) == ["semseg", "depth", "normals"]
    assert dataset_task_specs(info)["normals"] == {"kind": "normals", "encoding": "rgb8"}
    # without extra tasks, dataset.json has no extra_tasks key (old files stay as they were)
    write_info(tmp_path, info_with({}))
    assert "extra_tasks" not in json.loads((tmp_path / "dataset.json").read_text())


@pytest.mark.parametrize(
    "extra, message",
    [
        ([1], "'extra_tasks' must be an object"),
        ({"depth": {"kind": "normals"}}, "extra task name 'depth'"),
        ({"Bad Name": {"kind": "normals"}}, "extra task name 'Bad Name'"),
        ({"normals": {"encoding": "rgb8"}}, "string 'kind'"),
    ],
)
def test_malformed_extra_tasks_are_one_line(tmp_path, extra, message):
    data = info_with({}).to_json()
    data["extra_tasks"] = extra
    (tmp_path / "dataset.json").write_text(json.dumps(data))
    with pytest.raises(DataFormatError, match=message):
        read_info(tmp_path)


def test_a_dataset_with_a_bad_normals_file_fails_in_one_line_naming_it(tmp_path):
    from scenemtl.data.check import check_dataset
    from scenemtl.data.dataset import SceneDataset
    from tests.helpers import write_random_dataset

    root = tmp_path / "ds"
    info = write_random_dataset(root, sizes={"train": 2}, image_size=(6, 8))
    info.extra_tasks = {"normals": {"kind": "normals", "encoding": "rgb8"}}
    write_info(root, info)
    good = random_normals((6, 8))
    write_normals(root / "train" / "normals" / "0.png", good)
    write_normals(root / "train" / "normals" / "1.png", random_normals((6, 9)))  # wrong size
    ds = SceneDataset(root, "train")
    sample = ds[0]
    assert sample["normals"].shape == (3, 6, 8) and sample["normals"].dtype == torch.float32
    bad = root / "train" / "normals" / "1.png"
    with pytest.raises(DataFormatError, match="size 9x6 differs from its RGB 8x6") as e:
        ds[1]
    assert str(e.value).startswith(str(bad))
    problems = check_dataset(root)
    assert len(problems) == 1 and problems[0].startswith(f"{root / 'train' / 'normals'}/1")
    # an unknown kind in dataset.json is one line too, for data check and for readers
    info.extra_tasks = {"normals": {"kind": "curvature"}}
    write_info(root, info)
    assert "unknown kind 'curvature'" in check_dataset(root)[0]
    with pytest.raises(UserError, match="unknown kind 'curvature'"):
        SceneDataset(root, "train")
