"""Model folders: layout and model card read back, save -> load round trip, no unpickling,
atomic writes, and one-line refusals of broken folders."""

from __future__ import annotations

import csv
import json
import pickle
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import scenemtl
from scenemtl.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from scenemtl.errors import UserError
from scenemtl.model_folder import FORMAT, FORMAT_VERSION
from tests.floatpaths import LOGIT_MARGIN, assert_labels_agree

FILES = {"model.safetensors", "config.json", "classes.json", "README.md", "training_config.yaml"}


def read_safetensors(path: Path) -> tuple[dict, bytes]:
    """The header and data of a safetensors file, parsed by its specification: 8 bytes
    little-endian header length, a JSON header {name: {dtype, shape, data_offsets}}."""
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    return header, raw[8 + n :]


@pytest.mark.slow
def test_layout_config_and_classes(api_ckpt, api_folder):
    assert {p.name for p in api_folder.iterdir()} == FILES
    config = json.loads((api_folder / "config.json").read_text())
    assert config["format"] == FORMAT and config["format_version"] == FORMAT_VERSION
    net = config["net"]
    # the encoder's width is a ResNet option (the flat encoder_width moves there)
    width = (net.get("encoder_options") or {}).get("width", net.get("encoder_width"))
    assert (net["architecture"], net["encoder"], width) == ("joint", "resnet18", 16)
    assert net["weights"] is None
    # no training options: no optimizer, schedule, balancing, loss weights
    assert set(config) == {"format", "format_version", "scenemtl_version", "net", "tasks"} | {
        "input",
        "weights",
    }
    assert list(config["tasks"]) == ["semseg", "depth"]
    # the specs the run learned from the tiny dataset (tests/conftest.py): its class table
    # and depth encoding, as the checkpoint stores them
    ckpt = torch.load(api_ckpt, weights_only=True, map_location="cpu")
    stored = ckpt["hyper_parameters"]["task_specs"]
    assert config["tasks"]["depth"]["spec"] == json.loads(json.dumps(stored["depth"]))
    names_colors = [(c["name"], list(c["color"])) for c in stored["semseg"]["classes"]]
    got = [(c["name"], c["color"]) for c in config["tasks"]["semseg"]["spec"]["classes"]]
    assert got == names_colors
    assert config["tasks"]["depth"]["spec"]["encoding"] == "disparity8"
    assert config["input"]["mean"] == list(IMAGENET_MEAN)
    assert config["input"]["std"] == list(IMAGENET_STD)
    classes = json.loads((api_folder / "classes.json").read_text())
    assert classes == {"semseg": config["tasks"]["semseg"]["spec"]["classes"]}
    assert len(classes["semseg"]) == 19


@pytest.mark.slow
def test_weights_are_safetensors_of_the_network(api_ckpt, api_folder):
    """The file parsed by the format's specification: exactly the network's and tasks'
    tensors, with the checkpoint's values (stored, not computed: equal bit for bit)."""
    header, data = read_safetensors(api_folder / "model.safetensors")
    header.pop("__metadata__", None)
    state = torch.load(api_ckpt, weights_only=True, map_location="cpu")["state_dict"]
    kept = {k: v for k, v in state.items() if k.startswith(("net.", "tasks."))}
    assert set(header) == set(kept)
    assert any(k.startswith("tasks.depth.") for k in header)  # the depth normalization
    dtypes = {"F32": np.float32, "I64": np.int64}
    for name, info in header.items():
        start, end = info["data_offsets"]
        array = np.frombuffer(data[start:end], dtype=dtypes[info["dtype"]]).reshape(info["shape"])
        np.testing.assert_array_equal(array, kept[name].numpy())


@pytest.mark.slow
def test_model_card_reads_back(api_ckpt, api_folder):
    card = (api_folder / "README.md").read_text()
    front, body = card.split("---\n")[1], card.split("---\n", 2)[2]
    meta = yaml.safe_load(front)
    assert meta["library_name"] == "scenemtl"
    assert {"semantic-segmentation", "depth-estimation"} <= set(meta["tags"])
    assert body.lstrip().startswith("# tiny")
    run = api_ckpt.parent.parent
    # the dataset and the command line of the run
    data_root = yaml.safe_load((run / "config.yaml").read_text())["data"]["root"]
    assert f"- dataset: `{data_root}`" in body
    assert "`scenemtl fit --config training_config.yaml`" in body
    assert (api_folder / "training_config.yaml").read_text() == (run / "config.yaml").read_text()
    # the metrics: the best validation row of the run's metrics.csv, read independently
    with open(run / "metrics.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get("val/grader")]
    best = max(rows, key=lambda r: float(r["val/grader"]))
    values = [f"{float(best[f'val/{k}']):.2f}" for k in ("semseg", "depth", "grader")]
    assert f"| val (best grader) | {best['epoch']} | {' | '.join(values)} |" in body
    # the class table
    assert "| 0 | road | (128, 64, 128) |" in body and "| 18 | bicycle |" in body


@pytest.mark.slow
@pytest.mark.float_paths
def test_save_load_round_trip_predicts_the_same(api_ckpt, api_folder):
    """Same weights (checked exactly above), rebuilt network: logits within LOGIT_MARGIN
    relative (float32 rounding of two builds is ~1e-7 relative, tests/floatpaths.py;
    without channels-last or another kernel it is 0), depth within 1e-5 relative."""
    original, loaded = scenemtl.load(api_ckpt), scenemtl.load(api_folder)
    assert loaded.tasks == original.tasks and loaded.classes == original.classes
    assert loaded.depth_encoding == original.depth_encoding
    assert loaded.normalization == original.normalization
    image = torch.from_numpy(np.random.default_rng(3).standard_normal((2, 3, 37, 53))).float()
    with torch.no_grad():
        a, b = original.module(image), loaded.module(image)
    for task in ("semseg", "depth"):
        x, y = a[task][-1].double(), b[task][-1].double()
        assert (x - y).abs().max() <= LOGIT_MARGIN * x.abs().max()
    rgb = np.random.default_rng(4).integers(0, 256, (29, 41, 3), dtype=np.uint8)
    want, got = original.predict(rgb), loaded.predict(rgb)
    with torch.no_grad():
        from scenemtl.data.transforms import normalize_rgb

        logits = original.module(normalize_rgb(torch.from_numpy(rgb).permute(2, 0, 1)[None]))
    assert_labels_agree(got["semseg"], logits["semseg"][-1][0])
    np.testing.assert_allclose(got["depth"], want["depth"], rtol=1e-5)


@pytest.mark.slow
def test_loading_a_folder_never_unpickles(api_folder, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("unpickling while loading a model folder")

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "Unpickler", refuse)
    model = scenemtl.load(api_folder)
    assert model.tasks == ["semseg", "depth"]
    assert model.card == (api_folder / "README.md").read_text()


@pytest.mark.slow
def test_saving_a_loaded_folder_keeps_its_card_and_replaces_atomically(api_folder, tmp_path):
    target = tmp_path / "again"
    scenemtl.load(api_folder).save(target)
    for name in FILES:
        if name != "model.safetensors":
            assert (target / name).read_text() == (api_folder / name).read_text(), name
    # saving onto an existing model folder replaces it; nothing partial is left beside it
    (target / "README.md").write_text("edited")
    scenemtl.load(api_folder).save(target)
    assert (target / "README.md").read_text() == (api_folder / "README.md").read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["again"]


@pytest.mark.slow
def test_a_failed_save_leaves_nothing(api_folder, tmp_path, monkeypatch):
    def fail(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("safetensors.torch.save_file", fail)
    model = scenemtl.load(api_folder)
    with pytest.raises(OSError):
        model.save(tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_save_refuses_a_folder_with_other_files(api_folder, tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    (tmp_path / "file").write_text("x")
    model = scenemtl.load(api_folder)
    cases = ((tmp_path / "mine", "other files"), (tmp_path / "file", "not a folder"))
    for target, culprit in cases:
        with pytest.raises(UserError, match=culprit):
            model.save(target)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def _edit_config(folder: Path, edit) -> None:
    config = json.loads((folder / "config.json").read_text())
    edit(config)
    (folder / "config.json").write_text(json.dumps(config))


@pytest.mark.slow
@pytest.mark.parametrize(
    "damage, culprits",
    [
        (lambda f: (f / "config.json").unlink(), ["not a scenemtl model folder"]),
        (lambda f: (f / "config.json").write_text("{"), ["config.json is not valid JSON"]),
        (lambda f: (f / "config.json").write_bytes(b"\xff\xfe"), ["not UTF-8"]),
        (lambda f: _edit_config(f, lambda c: c.update(format="x")), ["not a scenemtl model"]),
        (
            lambda f: _edit_config(f, lambda c: c.update(format_version=99)),
            ["newer scenemtl", "upgrade"],
        ),
        (
            lambda f: _edit_config(f, lambda c: c["input"].update(mean=[0.5, 0.5, 0.5])),
            ["normalization"],
        ),
        (
            lambda f: _edit_config(f, lambda c: c["net"].update(encoder="resnet9")),
            ["config.json", "resnet9"],
        ),
        (
            lambda f: _edit_config(f, lambda c: c["net"].update(channels="wide")),
            ["config.json", "model.net options"],
        ),
        (lambda f: _edit_config(f, lambda c: c.update(tasks=[])), ["'tasks'"]),
        (
            lambda f: _edit_config(f, lambda c: c["net"].update(channels=32)),
            ["model.safetensors does not fit"],
        ),
        (lambda f: (f / "model.safetensors").unlink(), ["no model.safetensors"]),
        (
            lambda f: (f / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{"),
            ["not a safetensors file"],
        ),
        (
            lambda f: (f / "classes.json").write_text('{"semseg": []}'),
            ["classes.json differs"],
        ),
    ],
)
def test_broken_folders_are_one_line(api_folder, tmp_path, damage, culprits):
    folder = tmp_path / "broken"
    shutil.copytree(api_folder, folder)
    damage(folder)
    with pytest.raises(UserError) as exc:
        scenemtl.load(folder)
    text = str(exc.value)
    assert "\n" not in text and str(folder) in text
    for c in culprits:
        assert c in text, (c, text)


@pytest.mark.slow
def test_weights_of_another_network_are_one_line(api_folder, tmp_path):
    """A tensor missing from the weights is named."""
    from safetensors.torch import load_file, save_file

    folder = tmp_path / "partial"
    shutil.copytree(api_folder, folder)
    state = load_file(folder / "model.safetensors")
    dropped = sorted(state)[0]
    del state[dropped]
    save_file(state, folder / "model.safetensors")
    with pytest.raises(UserError, match=f"missing {dropped}"):
        scenemtl.load(folder)


@pytest.mark.slow
def test_the_card_of_a_study_run_gives_its_variants_delta_m(api_ckpt, tmp_path):
    """A run inside a reported study (<study>/<variant>/seed_<s>/version_<n>): the card
    quotes the variant's Δm from the study's report/results.csv."""
    import scenemtl

    run = api_ckpt.parent.parent
    study = tmp_path / "streets"
    copied = study / "joint_upgrad" / "seed_0" / "version_0"
    shutil.copytree(run, copied)
    (study / "report").mkdir()
    with open(study / "report" / "results.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, ["variant", "runs", "Δm (%)"])
        writer.writeheader()
        writer.writerow({"variant": "single_semseg", "runs": "3/3", "Δm (%)": ""})
        writer.writerow({"variant": "joint_upgrad", "runs": "3/3", "Δm (%)": "+1.50 ± 0.20"})
    model = scenemtl.load(copied / "checkpoints" / "best.ckpt")
    card = (model.save(tmp_path / "saved") / "README.md").read_text()
    assert "In study `streets` (variant `joint_upgrad`, 3/3 seeds): Δm = +1.50 ± 0.20 %" in card
    # the same run outside a study: no such line
    plain = scenemtl.load(api_ckpt).save(tmp_path / "plain")
    assert "Δm" not in (plain / "README.md").read_text()
