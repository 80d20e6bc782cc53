"""The Python API: the README's lines, one inference path with `scenemtl predict`, bad input."""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import scenemtl
from scenemtl.api import MAX_PIXELS, SameSizeBatches, tta_setting
from scenemtl.cli import _run_guarded
from scenemtl.codecs.classes import cityscapes_class_table
from scenemtl.commands.predict import add_predict_parser
from scenemtl.data.transforms import normalize_rgb
from scenemtl.errors import UserError
from scenemtl.tta import MAX_SCALE
from tests.floatpaths import assert_labels_agree

REPO = Path(__file__).resolve().parents[2]


def readme_python_block() -> str:
    """The Python block of the README's "Using a trained model" section."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text[text.index("## Using a trained model") :]
    section = section[: section.index("\n## ", 1)]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def run_command_predict(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="scenemtl")
    add_predict_parser(parser.add_subparsers())
    args = parser.parse_args(["predict", *argv])
    return _run_guarded(lambda: args.func(args))


@pytest.mark.slow
def test_readme_lines_run_and_hold(api_ckpt, api_images, tmp_path, monkeypatch):
    """Every line of the README's Python block, in a folder laid out as after `make demo`
    (runs/demo/version_0 = the tiny run; photos/ = two images; JPEG as in the README)."""
    run = tmp_path / "runs" / "demo" / "version_0"
    shutil.copytree(api_ckpt.parent.parent, run)
    (tmp_path / "photos").mkdir()
    for i, name in enumerate(sorted(p.name for p in api_images.iterdir())):
        Image.open(api_images / name).convert("RGB").save(tmp_path / "photos" / f"{i}.jpg")
    monkeypatch.chdir(tmp_path)
    lines = [line for line in readme_python_block().splitlines() if line.strip()]
    namespace: dict = {}
    for line in lines:
        exec(compile(line, "README.md", "exec"), namespace)
    model, prediction, predictions = (namespace[k] for k in ("model", "prediction", "predictions"))
    # line 2: the facts it states in its comment
    assert model.tasks == ["semseg", "depth"]
    assert model.class_names[:2] == ["road", "sidewalk"]
    assert model.depth_encoding == "disparity8"
    table = [{"name": c["name"], "color": list(c["color"])} for c in cityscapes_class_table()]
    assert [{"name": c["name"], "color": list(c["color"])} for c in model.classes] == table
    # prediction of a path: class ids and meters at the image's size
    h, w = np.asarray(Image.open("photos/0.jpg")).shape[:2]
    assert set(prediction) == {"semseg", "depth"}
    assert prediction["semseg"].shape == (h, w) and prediction["semseg"].dtype == np.int64
    assert prediction["semseg"].min() >= 0 and prediction["semseg"].max() < 19
    assert prediction["depth"].shape == (h, w) and prediction["depth"].dtype == np.float32
    assert (prediction["depth"] > 0).all()
    # a list gives a list; the PIL image and its array are the same pixels in one batch,
    # so the same arithmetic gives the same predictions (no second float path here)
    assert isinstance(predictions, list) and len(predictions) == 2
    for key in ("semseg", "depth"):
        np.testing.assert_array_equal(predictions[0][key], predictions[1][key])
    assert str(model.device) == "cpu"
    saved = tmp_path / "demo-model"
    files = {"model.safetensors", "config.json", "classes.json", "README.md"}
    assert files <= {p.name for p in saved.iterdir()}


@pytest.mark.slow
def test_predict_equals_the_predict_command_for_every_input_type(api_ckpt, api_images, tmp_path):
    """The command's PNGs against Model.predict on a path, a PIL image, an array and a
    list: one inference path with batches of one image each, so equal exactly."""
    out = tmp_path / "out"
    argv = ["--ckpt_path", str(api_ckpt), "--input", str(api_images), "--output", str(out)]
    assert run_command_predict(argv) == 0
    model = scenemtl.load(api_ckpt)
    tasks = {t.name: t for t in model.module.task_list}
    names = sorted(p.name for p in api_images.iterdir())
    paths = [api_images / n for n in names]
    pil = [Image.open(p) for p in paths]
    arrays = [np.asarray(Image.open(p).convert("RGB")) for p in paths]
    listed = model.predict([paths[0], pil[1]], batch_size=1)
    for i, name in enumerate(names):
        stem = name.rsplit(".", 1)[0]
        for got in (
            model.predict(paths[i]),
            model.predict(str(paths[i])),
            model.predict(pil[i]),
            model.predict(arrays[i]),
            listed[i],
        ):
            for task, array in got.items():
                want = np.asarray(Image.open(out / f"{stem}_{task}.png"))
                np.testing.assert_array_equal(np.asarray(tasks[task].encode_png(array)), want)


@pytest.mark.float_paths
@pytest.mark.slow
def test_predictions_are_the_module_forward(api_ckpt, api_images):
    """Model.predict against an independent forward of the module (normalize, forward,
    argmax / decode), batched: labels away from near ties, depth within 1e-5 relative
    (float32 accumulation differs by ~1e-6 relative between batch sizes, floatpaths.py)."""
    model = scenemtl.load(api_ckpt)
    rgb = np.asarray(Image.open(api_images / "b.png").convert("RGB"))
    got = model.predict([rgb, rgb[:, ::-1].copy(), rgb], batch_size=3)
    with torch.no_grad():
        image = normalize_rgb(torch.from_numpy(rgb).permute(2, 0, 1)[None].contiguous())
        outputs = model.module(image)
        depth = model.module.tasks["depth"].decode(outputs["depth"][-1])[0].numpy()
    for k in (0, 2):
        assert_labels_agree(got[k]["semseg"], outputs["semseg"][-1][0])
        np.testing.assert_allclose(got[k]["depth"], depth, rtol=1e-5)


@pytest.mark.slow
def test_tta_true_is_the_commands_tta_and_changes_predictions(api_ckpt, api_images, tmp_path):
    out = tmp_path / "tta"
    argv = ["--ckpt_path", str(api_ckpt), "--input", str(api_images / "b.png")]
    argv += ["--output", str(out), "--tta-scales", "0.75", "1", "1.25", "--tta-flip"]
    assert run_command_predict(argv) == 0
    model = scenemtl.load(api_ckpt)
    got = model.predict(api_images / "b.png", tta=True)
    depth_task = model.module.tasks["depth"]
    want = np.asarray(Image.open(out / "b_depth.png"))
    np.testing.assert_array_equal(np.asarray(depth_task.encode_png(got["depth"])), want)
    plain = model.predict(api_images / "b.png")
    assert not np.allclose(plain["depth"], got["depth"])
    # the setting is restored: a later plain call is the plain prediction again
    np.testing.assert_array_equal(model.predict(api_images / "b.png")["depth"], plain["depth"])


def test_tta_setting():
    assert tta_setting(False) == ((1.0,), False)
    assert tta_setting(True) == ((0.75, 1.0, 1.25), True)
    assert tta_setting(True, flip=False) == ((0.75, 1.0, 1.25), False)
    assert tta_setting([0.5, 2]) == ((0.5, 2.0), True)
    assert tta_setting(False, flip=True) == ((1.0,), True)
    with pytest.raises(UserError, match="above"):
        tta_setting([MAX_SCALE * 2])


def test_batches_bound_images_and_pixels():
    sizes = [(10, 10)] * 5 + [(20, 10)] * 3 + [(10, 10)]
    # by count: runs of one size, at most 2
    assert SameSizeBatches(sizes, 2, max_pixels=10**6).batches == [
        [0, 1], [2, 3], [4], [5, 6], [7], [8]
    ]  # fmt: skip
    # by pixels: 350 allows three 100-pixel images or one 200-pixel image
    assert SameSizeBatches(sizes, 8, max_pixels=350).batches == [
        [0, 1, 2], [3, 4], [5], [6], [7], [8]
    ]  # fmt: skip
    # an image above the budget is still a batch of its own
    assert SameSizeBatches([(30, 30)], 4, max_pixels=100).batches == [[0]]
    with pytest.raises(UserError):
        SameSizeBatches(sizes, 0)


def one_line_error(excinfo: pytest.ExceptionInfo, *culprits: str) -> str:
    text = str(excinfo.value)
    assert "\n" not in text and text
    for c in culprits:
        assert c in text, (c, text)
    return text


@pytest.mark.slow
@pytest.mark.parametrize(
    "bad, culprits",
    [
        (np.zeros((8, 8), np.uint8), ["image 1", "(8, 8)", "uint8 [H,W,3]"]),
        (np.zeros((8, 8, 3), np.float32), ["float32", "uint8 [H,W,3]"]),
        (np.zeros((8, 8, 4), np.uint8), ["(8, 8, 4)"]),
        (np.zeros((0, 8, 3), np.uint8), ["empty image"]),
        (42, ["image 1", "int is not an image"]),
        ("{tmp}/nope.png", ["nope.png", "no such image file"]),
        ("{tmp}/broken.png", ["broken.png", "cannot decode"]),
    ],
)
def test_bad_images_are_one_line(api_ckpt, tmp_path, bad, culprits):
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    if isinstance(bad, str):
        bad = bad.format(tmp=tmp_path)
    model = scenemtl.load(api_ckpt)
    with pytest.raises(UserError) as exc:
        model.predict([np.zeros((8, 8, 3), np.uint8), bad])
    one_line_error(exc, *culprits)


@pytest.mark.slow
def test_bad_arguments_are_one_line(api_ckpt, monkeypatch):
    model = scenemtl.load(api_ckpt)
    image = np.zeros((8, 9, 3), np.uint8)
    with pytest.raises(UserError) as exc:
        model.predict(image, batch_size=0)
    one_line_error(exc, "batch_size")
    with pytest.raises(UserError) as exc:
        model.predict(image, tta=[100.0])
    one_line_error(exc, "TTA scale 100", "above")
    with pytest.raises(UserError) as exc:
        model.to("tpu")
    one_line_error(exc, "tpu")
    assert model.predict([]) == []
    with pytest.raises(UserError) as exc:
        model.predict(image, tta=1.5)
    one_line_error(exc, "TTA scales must be numbers")
    monkeypatch.setattr("scenemtl.api.MAX_PIXELS", 8 * 8)
    with pytest.raises(UserError) as exc:
        model.predict(image)
    one_line_error(exc, "9x8 pixels is above")
    assert MAX_PIXELS == 4096 * 4096


@pytest.mark.parametrize("missing", ["nope.ckpt", "nope"])
def test_load_of_a_missing_path_is_one_line(tmp_path, missing):
    with pytest.raises(UserError) as exc:
        scenemtl.load(tmp_path / missing)
    one_line_error(exc, missing, "not found")


@pytest.mark.slow
def test_cuda_when_there_is_none(api_ckpt):
    model = scenemtl.load(api_ckpt)
    if torch.cuda.is_available():
        assert model.to("cuda").device.type == "cuda"
        model.to("cpu")
    else:
        with pytest.raises(UserError, match="CUDA is not available"):
            model.to("cuda")
    assert model.to("cpu") is model and next(model.module.parameters()).device.type == "cpu"


@pytest.mark.slow
def test_import_scenemtl_stays_cheap():
    """`import scenemtl` loads neither torch nor Lightning; `scenemtl.load` appears on use."""
    code = "import sys, scenemtl; print([m for m in ('torch', 'lightning') if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    assert out.stdout.strip() == "[]"
    from scenemtl.api import Model, load

    assert scenemtl.load is load and scenemtl.Model is Model
    with pytest.raises(AttributeError):
        scenemtl.no_such_thing  # noqa: B018
