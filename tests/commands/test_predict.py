"""`scenemtl predict` on a tiny trained checkpoint: files, formats, batching, TTA, errors."""

from __future__ import annotations

import argparse

import numpy as np
import pytest
import torch
from PIL import Image

from scenemtl.api import MAX_PIXELS, load, resolve_device, tta_setting
from scenemtl.cli import _run_guarded
from scenemtl.commands.predict import (
    add_predict_parser,
    find_images,
    output_stems,
)
from scenemtl.data.format import DISPARITY8, encode_depth
from scenemtl.data.transforms import normalize_rgb
from scenemtl.errors import UserError
from tests.floatpaths import assert_codes_within_one_step, assert_labels_agree
from tests.hostile import assert_refused

# the files written per image, in the order the predict module's docstring lists them
OUTPUT_SUFFIXES = (
    "_semseg.png",
    "_semseg_color.png",
    "_depth.png",
    "_depth_color.png",
    "_panel.png",
)
SIZES = {"a.png": (32, 48), "b.jpg": (32, 48), "c.png": (37, 53), "d.PNG": (5, 7)}


@pytest.fixture(scope="module")
def ckpt(tiny_ckpt):
    """The suite's one-epoch tiny run (tests/conftest.py)."""
    return tiny_ckpt


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(1)
    for name, (h, w) in SIZES.items():
        # smooth-ish images so that JPEG and the network see some structure
        base = rng.integers(0, 256, (h // 4 + 1, w // 4 + 1, 3), dtype=np.uint8)
        img = Image.fromarray(base).resize((w, h), Image.BILINEAR)
        img.save(folder / name)
    (folder / "notes.txt").write_text("not an image")
    (folder / "sub").mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(folder / "sub" / "nested.png")
    return folder


def run_predict(argv, capsys=None):
    parser = argparse.ArgumentParser(prog="scenemtl")
    add_predict_parser(parser.add_subparsers())
    args = parser.parse_args(["predict", *argv])
    return _run_guarded(lambda: args.func(args))


def read_outputs(out_dir, stem):
    return {s: Image.open(out_dir / f"{stem}{s}") for s in OUTPUT_SUFFIXES}


def reference(ckpt, path, scales=(1.0,), flip=False):
    """The module's own outputs for one image file, without the predict tool: RGB, semseg
    logits [C,H,W], depth in meters [H,W]."""
    module = load(ckpt).module
    module.hparams["tta_scales"], module.hparams["tta_flip"] = list(scales), flip
    rgb = np.array(Image.open(path).convert("RGB"))
    image = normalize_rgb(torch.from_numpy(rgb).permute(2, 0, 1)[None].contiguous())
    with torch.no_grad():
        outputs = module.eval_outputs(image)
    depth = module.decode(outputs)["depth"][0].numpy()
    return rgb, outputs["semseg"][-1][0], depth


def assert_prediction_files(labels, depth_png, ref_logits, ref_depth):
    """The predict tool's files against the reference forward: another float path (the tool
    batches images), so within tests/floatpaths.py's bounds."""
    assert_labels_agree(np.asarray(labels), ref_logits)
    want = np.asarray(encode_depth(ref_depth, DISPARITY8))
    assert_codes_within_one_step(np.asarray(depth_png), want)


@pytest.mark.slow
@pytest.mark.float_paths
def test_folder_writes_four_consistent_files_per_image(ckpt, images, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["--ckpt_path", str(ckpt), "--input", str(images), "--output", str(out)]
    assert run_predict(argv) == 0
    stdout = capsys.readouterr().out
    assert "4 image(s) written" in stdout
    expected = {f"{p.rsplit('.', 1)[0]}{s}" for p in SIZES for s in OUTPUT_SUFFIXES}
    assert {p.name for p in out.iterdir()} == expected  # no nested.png, no notes.txt, no tmp

    for name, (h, w) in SIZES.items():
        stem = name.rsplit(".", 1)[0]
        files = read_outputs(out, stem)
        labels, color, depth, depth_color, panel = (files[s] for s in OUTPUT_SUFFIXES)
        assert labels.mode == "L" and labels.size == (w, h)
        assert depth.mode == "L" and depth.size == (w, h)  # the tiny dataset's disparity8
        assert color.mode == "RGB" and color.size == (w, h)
        assert depth_color.mode == "RGB" and depth_color.size == (w, h)
        assert panel.mode == "RGB" and panel.size == (3 * w + 2 * 2, h)
        lab = np.asarray(labels)
        assert lab.max() < 19
        rgb, ref_logits, ref_depth = reference(ckpt, images / name)
        assert_prediction_files(lab, depth, ref_logits, ref_depth)
        np.testing.assert_array_equal(np.asarray(panel)[:, :w], rgb)
        np.testing.assert_array_equal(np.asarray(panel)[:, w + 2 : 2 * w + 2], np.asarray(color))
        right = np.asarray(panel)[:, 2 * w + 4 :]
        np.testing.assert_array_equal(right, np.asarray(depth_color))


@pytest.mark.slow
@pytest.mark.float_paths
def test_batching_mixed_sizes_gives_the_same_files(ckpt, images, tmp_path):
    one, many = tmp_path / "one", tmp_path / "many"
    common = ["--ckpt_path", str(ckpt), "--input", str(images)]
    assert run_predict([*common, "--output", str(one), "--batch-size", "1"]) == 0
    assert run_predict([*common, "--output", str(many), "--batch-size", "3"]) == 0
    names = sorted(p.name for p in one.iterdir())
    assert names == sorted(p.name for p in many.iterdir())
    for name in names:
        a = np.asarray(Image.open(one / name)).astype(np.int64)
        b = np.asarray(Image.open(many / name)).astype(np.int64)
        assert a.shape == b.shape, name
        # batched convolutions may round differently: depth within a few 1/256 m codes,
        # labels equal except at the odd near-tie pixel
        tolerance = 1 if name.endswith("_depth.png") else 0  # disparity codes
        assert (np.abs(a - b) > tolerance).mean() < 0.01, name


@pytest.mark.slow
@pytest.mark.float_paths
def test_tta_flags_reach_the_model(ckpt, images, tmp_path):
    out = tmp_path / "tta"
    argv = ["--ckpt_path", str(ckpt), "--input", str(images / "c.png"), "--output", str(out)]
    assert run_predict([*argv, "--tta-scales", "0.5", "1", "1.5", "--tta-flip"]) == 0
    _, ref_logits, ref_depth = reference(ckpt, images / "c.png", (0.5, 1.0, 1.5), True)
    files = read_outputs(out, "c")
    assert_prediction_files(files["_semseg.png"], files["_depth.png"], ref_logits, ref_depth)
    # and TTA really changed something compared to the plain forward
    _, _, plain_depth = reference(ckpt, images / "c.png")
    assert not np.allclose(plain_depth, ref_depth)


@pytest.mark.slow
def test_unreadable_image_is_reported_and_the_rest_written(ckpt, images, tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "good.png").write_bytes((images / "a.png").read_bytes())
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    (folder / "empty.jpg").write_bytes(b"")
    out = tmp_path / "out"
    code = run_predict(["--ckpt_path", str(ckpt), "--input", str(folder), "--output", str(out)])
    err = capsys.readouterr().err
    assert code == 1
    lines = err.strip().splitlines()
    assert sum("broken.png" in line for line in lines) == 1
    assert sum("empty.jpg" in line for line in lines) == 1
    assert "2 of 3 image(s) could not be read" in err
    assert "Traceback" not in err
    assert sorted(p.name for p in out.iterdir()) == sorted(f"good{s}" for s in OUTPUT_SUFFIXES)


@pytest.mark.slow
@pytest.mark.parametrize(
    "argv, culprits",
    [
        (["--input", "{missing}"], ["{missing}", "does not exist"]),
        (["--input", "{empty}"], ["{empty}", "holds no .jpg or .png"]),
        (["--output", "{file}"], ["{file}", "is not a folder"]),
        (["--output", "{images}"], ["{images}", "is the input folder"]),
        (["--ckpt_path", "{file}"], ["{file}", "not a scenemtl checkpoint"]),
        (["--ckpt_path", "{truncated}"], ["{truncated}", "not a scenemtl checkpoint"]),
        (["--ckpt_path", "{tensor}"], ["{tensor}", "not a scenemtl checkpoint"]),
        (["--tta-scales", "100"], ["TTA scale 100", "above 4"]),
        (["--device", "cuda:7"], ["device"]),
        (["--device", "tpu"], ["device"]),
    ],
)
def test_bad_input_is_one_line(ckpt, images, tmp_path, capsys, argv, culprits):
    (tmp_path / "empty").mkdir()
    (tmp_path / "file").write_text("x")
    (tmp_path / "truncated.ckpt").write_bytes(ckpt.read_bytes()[:1000])
    torch.save(torch.zeros(2), tmp_path / "tensor.ckpt")
    fill = {
        "missing": tmp_path / "nope",
        "empty": tmp_path / "empty",
        "file": tmp_path / "file",
        "images": images,
        "truncated": tmp_path / "truncated.ckpt",
        "tensor": tmp_path / "tensor.ckpt",
    }
    base = {"--ckpt_path": str(ckpt), "--input": str(images), "--output": str(tmp_path / "o")}
    for key, value in zip(argv[::2], argv[1::2], strict=True):
        base[key] = value.format(**fill)
    full = ["predict", *(x for kv in base.items() for x in kv)]
    culprits = [c.format(**fill) for c in culprits]
    assert_refused(full, capsys, culprits, watch=[tmp_path, images, ckpt.parent])
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    "bad", [["--tta-scales", "0"], ["--tta-scales", "x"], ["--batch-size", "0"]]
)
def test_bad_numbers_are_rejected_by_the_parser(bad, capsys):
    with pytest.raises(SystemExit) as exc:
        run_predict(["--ckpt_path", "c", "--input", "i", "--output", "o", *bad])
    assert exc.value.code == 2
    assert "Traceback" not in capsys.readouterr().err


def test_find_images_and_stems(tmp_path):
    for name in ("b.png", "a.JPG", "a.png", "c.jpeg", "d.gif", "e.txt"):
        (tmp_path / name).write_bytes(b"")
    found = find_images(tmp_path)
    assert [p.name for p in found] == ["a.JPG", "a.png", "b.png", "c.jpeg"]
    assert output_stems(found) == ["a_JPG", "a_png", "b", "c"]
    assert find_images(tmp_path / "d.gif") == [tmp_path / "d.gif"]  # a file is taken as is


@pytest.mark.slow
def test_module_predicts_cpu_labels_and_meters(ckpt):
    module = load(ckpt).module
    preds = module.predict_step({"image": torch.zeros(2, 3, 20, 28)})
    assert preds["semseg"].shape == (2, 20, 28) and preds["semseg"].dtype == torch.int64
    assert preds["depth"].shape == (2, 20, 28) and (preds["depth"] > 0).all()
    assert resolve_device("cpu").type == "cpu"
    with pytest.raises(UserError):
        tta_setting([-1.0])
    with pytest.raises(UserError, match="above 4"):
        tta_setting([100.0])  # a typo for 1.00 must not allocate 10^4 x


@pytest.mark.slow
def test_image_above_the_pixel_limit_is_skipped_with_its_size(
    ckpt, images, tmp_path, capsys, monkeypatch
):
    monkeypatch.setattr("scenemtl.api.MAX_PIXELS", 40 * 40)
    out = tmp_path / "out"
    code = run_predict(["--ckpt_path", str(ckpt), "--input", str(images), "--output", str(out)])
    err = capsys.readouterr().err
    assert code == 1
    assert "53x37 pixels is above" in err and "Traceback" not in err
    assert MAX_PIXELS == 4096 * 4096
    assert {p.name.split("_")[0] for p in out.iterdir()} == {"a", "b", "d"}


def write_video(path, count, size=(37, 53), fps=7):
    from fractions import Fraction

    from scenemtl.video import VideoWriter

    rng = np.random.default_rng(3)
    h, w = size
    with VideoWriter(path, Fraction(fps)) as writer:
        for _ in range(count):
            base = rng.integers(0, 256, (h // 4 + 1, w // 4 + 1, 3), dtype=np.uint8)
            writer.write(np.asarray(Image.fromarray(base).resize((w, h), Image.BILINEAR)))


@pytest.mark.slow
def test_video_gives_a_video_of_panels_and_each_frames_pngs(ckpt, tmp_path, capsys):
    pytest.importorskip("av")
    from scenemtl.video import VideoReader

    source = tmp_path / "drive.mp4"
    write_video(source, 5)
    out, frames = tmp_path / "out" / "panels.mp4", tmp_path / "frames"
    argv = ["--ckpt_path", str(ckpt), "--input", str(source), "--output", str(out)]
    assert run_predict([*argv, "--frames", str(frames), "--batch-size", "2"]) == 0
    assert "5 frame(s)" in capsys.readouterr().out
    with VideoReader(source) as video:
        decoded = np.concatenate(list(video.batches(8)))
    with VideoReader(out) as panels:
        assert panels.fps == 7 and sum(len(b) for b in panels.batches(8)) == 5
        # RGB | semseg | depth, side by side: wider than three frames, as tall as one
        assert panels.width >= 3 * 53 and panels.height in (37, 38)
    assert sorted(p.name for p in frames.iterdir())[:2] == [
        "frame_000000_depth.png",
        "frame_000000_semseg.png",
    ]
    assert len(list(frames.iterdir())) == 10
    # frame 3's labels are the model's prediction on the decoded frame 3
    model = load(ckpt)
    expected = model.predict(decoded[3], batch_size=1)["semseg"]
    got = np.asarray(Image.open(frames / "frame_000003_semseg.png"))
    agree = (got == expected).mean()
    # batches of 2 (the command) against 1: the same labels up to near-ties (floatpaths.py)
    assert agree > 0.99, agree


@pytest.mark.slow
@pytest.mark.parametrize(
    "extra, content, message",
    [
        ([], b"garbage", "cannot be read"),
        (["--output-is-folder"], None, "a video input writes a video"),
        (["--image-with-frames"], None, "--frames is for a video input"),
    ],
)
def test_bad_video_requests_are_one_line(ckpt, tmp_path, images, capsys, extra, content, message):
    source = tmp_path / "in.mp4"
    if content is not None:
        source.write_bytes(content)
    else:
        write_video(source, 2)
    out = str(tmp_path / "o.mp4")
    argv = ["predict", "--ckpt_path", str(ckpt), "--input", str(source), "--output", out]
    if extra == ["--output-is-folder"]:
        argv[-1] = str(tmp_path / "folder")
    if extra == ["--image-with-frames"]:
        argv[4] = str(images / "a.png")
        argv += ["--frames", str(tmp_path / "f")]
    pytest.importorskip("av")
    assert_refused(argv, capsys, message, watch=[images])
