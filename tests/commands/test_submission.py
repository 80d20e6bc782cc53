"""submission.zip: written by fit and by test --ckpt_path, graded back to the same scores."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import zipfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from PIL import Image

from scenemtl.cli import main
from scenemtl.commands.grader import grade
from scenemtl.commands.submission import package_source_files, source_zip_bytes, write_submission
from scenemtl.commands.submission_callback import SubmissionCallback
from scenemtl.data.dataset import SceneDataset
from scenemtl.data.format import METERS16, encode_depth, rgb_path
from scenemtl.data.stats import write_stats
from scenemtl.data.transforms import normalize_rgb
from scenemtl.engine.module import MultiTaskModule
from scenemtl.errors import UserError
from tests.floatpaths import assert_codes_within_one_step, assert_labels_agree
from tests.helpers import slow_fixture, tiny_config, write_random_dataset

N_TEST = 3


def run_cli(argv):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    return exc.value.code


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@slow_fixture(scope="module")
def run(tmp_path_factory):
    """One tiny fit (16-bit meters, so depth quantization is negligible) and one test."""
    base = tmp_path_factory.mktemp("submission")
    root = base / "ds"
    write_random_dataset(
        root, sizes={"train": 4, "val": 2, "test": N_TEST}, image_size=(32, 48),
        depth_encoding=METERS16, seed=1,
    )  # fmt: skip
    write_stats(root)
    cfg = tiny_config(base, root, **{"trainer.max_epochs": 1, "submission.enabled": True})
    assert run_cli(["fit", "--config", str(cfg)]) == 0
    fit_dir = base / "runs" / "tiny" / "version_0"
    fit_zip = (fit_dir / "submission.zip").read_bytes()  # before anything can replace it
    best = fit_dir / "checkpoints" / "best.ckpt"
    argv = ["test", "--config", str(cfg), "--ckpt_path", str(best), "--run.name", "tested"]
    assert run_cli(argv) == 0
    return SimpleNamespace(
        root=root,
        cfg=cfg,
        fit_dir=fit_dir,
        fit_zip=fit_zip,
        best=best,
        test_dir=base / "runs" / "tested" / "version_0",
    )


def assert_slim_copy_of(payload: bytes, best: Path) -> None:
    """The packed checkpoint holds best.ckpt's weights and hparams, not its optimizer."""
    packed = torch.load(io.BytesIO(payload), weights_only=True, map_location="cpu")
    full = torch.load(best, weights_only=True, map_location="cpu")
    assert "optimizer_states" not in packed and "optimizer_states" in full
    assert packed["hyper_parameters"] == full["hyper_parameters"]
    assert packed["global_step"] == full["global_step"]
    assert packed["state_dict"].keys() == full["state_dict"].keys()
    assert all(torch.equal(packed["state_dict"][k], v) for k, v in full["state_dict"].items())
    assert len(payload) < best.stat().st_size / 2


def members(zip_bytes: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(zip_bytes)) as zf:
        return {i.filename: zf.read(i) for i in zf.infolist()}


@pytest.mark.slow
def test_fit_writes_a_complete_submission(run):
    files = members(run.fit_zip)
    preds = {f"predictions/{t}/{i}.png" for t in ("semseg", "depth") for i in range(N_TEST)}
    assert set(files) == {
        "config.yaml", "metrics.csv", "best.ckpt", "source.zip", "manifest.json", *preds,
    }  # fmt: skip
    # the best checkpoint, byte for byte, not the last one
    assert_slim_copy_of(files["best.ckpt"], run.best)
    assert files["config.yaml"] == (run.fit_dir / "config.yaml").read_bytes()
    assert "val/grader" in files["metrics.csv"].decode()
    manifest = json.loads(files["manifest.json"])
    assert set(manifest["members"]) == set(files) - {"manifest.json"}
    for name, entry in manifest["members"].items():
        assert entry == {"sha256": sha256(files[name]), "bytes": len(files[name])}, name
    assert manifest["versions"]["torch"] == torch.__version__
    assert {"scenemtl", "lightning"} <= set(manifest["versions"])
    assert manifest["dataset"] == {
        "name": "random", "version": "1", "image_size": [32, 48], "depth_encoding": METERS16,
        "split": "test", "split_size": N_TEST,
    }  # fmt: skip
    # written atomically: no temporary file left behind
    assert not list(run.fit_dir.glob(".submission.zip*"))


@pytest.mark.slow
@pytest.mark.float_paths
def test_predictions_are_those_of_the_packed_checkpoint(run):
    files = members(run.fit_zip)
    module = MultiTaskModule.from_checkpoint(run.best)
    dataset = SceneDataset(run.root, "test")
    for i in range(N_TEST):
        rgb = dataset[i]["rgb"][None]
        # The submission was predicted in batches, this is one image: two float paths
        # (tests/floatpaths.py states the bounds).
        with torch.no_grad():
            outputs = module.eval_outputs(normalize_rgb(rgb))
        want = module.decode(outputs)
        semseg = Image.open(io.BytesIO(files[f"predictions/semseg/{i}.png"]))
        assert semseg.mode == "L" and semseg.size == (48, 32)
        assert_labels_agree(np.asarray(semseg), outputs["semseg"][-1][0])
        depth = Image.open(io.BytesIO(files[f"predictions/depth/{i}.png"]))
        assert depth.mode.startswith("I")  # the dataset's 16-bit meters encoding
        expected = encode_depth(want["depth"][0].numpy(), METERS16)
        assert_codes_within_one_step(np.asarray(depth), np.asarray(expected))


@pytest.mark.slow
def test_test_with_checkpoint_writes_a_submission_that_grades_like_lightning_test(run):
    zip_path = run.test_dir / "submission.zip"
    files = members(zip_path.read_bytes())
    assert_slim_copy_of(files["best.ckpt"], run.best)
    # the test metrics were flushed to metrics.csv before it was packed
    rows = list(csv.DictReader(io.StringIO(files["metrics.csv"].decode())))
    logged = next(r for r in rows if r.get("test/grader"))
    scores = grade(zip_path, run.root)
    assert scores["semseg"] == pytest.approx(float(logged["test/semseg"]), abs=1e-4)
    # predictions went through 16-bit meters (1/256 m steps): a tiny difference at most
    assert scores["depth"] == pytest.approx(float(logged["test/depth"]), abs=0.05)
    assert scores["grader"] == pytest.approx(float(logged["test/grader"]), abs=0.05)
    # the fit's archive holds the same predictions, so it grades the same
    assert grade(run.fit_dir / "submission.zip", run.root) == pytest.approx(scores, nan_ok=True)


@pytest.mark.slow
def test_source_zip_is_the_running_package(run):
    inner = zipfile.ZipFile(io.BytesIO(members(run.fit_zip)["source.zip"]))
    names = inner.namelist()
    assert "scenemtl/commands/submission.py" in names and "scenemtl/engine/module.py" in names
    assert all(n.endswith((".py", ".yaml")) and "__pycache__" not in n for n in names)
    here = Path(__file__).resolve().parents[2] / "src" / "scenemtl" / "commands" / "grader.py"
    assert inner.read("scenemtl/commands/grader.py") == here.read_bytes()
    assert len(names) == len(package_source_files())
    # fixed timestamps: the same source packs to the same bytes
    assert source_zip_bytes() == source_zip_bytes()


@pytest.mark.slow
def test_failed_write_keeps_the_previous_submission(run, tmp_path):
    root = tmp_path / "ds"
    write_random_dataset(root, sizes={"test": 3}, image_size=(32, 48), depth_encoding=METERS16)
    rgb_path(root, "test", 2, ".png").write_bytes(b"not an image")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "submission.zip").write_bytes(b"previous")
    with pytest.raises(UserError, match="2.png"):
        write_submission(run_dir, run.best, root, batch_size=1)
    assert (run_dir / "submission.zip").read_bytes() == b"previous"
    assert sorted(p.name for p in run_dir.iterdir()) == ["submission.zip"]


@pytest.mark.slow
def test_write_submission_refuses_bad_inputs(run, tmp_path):
    with pytest.raises(UserError, match="checkpoint .*missing.ckpt not found"):
        write_submission(tmp_path, tmp_path / "missing.ckpt", run.root)
    with pytest.raises(UserError, match="config.yaml for the submission"):
        write_submission(tmp_path, run.best, run.root, config_path=tmp_path / "nope.yaml")
    no_test = tmp_path / "no_test"
    write_random_dataset(no_test, sizes={"train": 1}, image_size=(32, 48))
    with pytest.raises(UserError, match="has no 'test' split"):
        write_submission(tmp_path, run.best, no_test)
    assert not (tmp_path / "submission.zip").exists()


def fake_trainer(tmp_path: Path, best_path: str, rank_zero: bool = True) -> SimpleNamespace:
    ckpt_cb = ModelCheckpoint(dirpath=tmp_path / "checkpoints", filename="best")
    ckpt_cb.best_model_path = best_path
    return SimpleNamespace(
        checkpoint_callbacks=[ckpt_cb],
        is_global_zero=rank_zero,
        log_dir=str(tmp_path),
        datamodule=None,
        loggers=[],
    )


def test_callback_without_best_checkpoint_says_so_and_writes_nothing(tmp_path, capsys):
    callback = SubmissionCallback()
    callback.on_fit_end(fake_trainer(tmp_path, ""), None)
    assert "no best checkpoint" in capsys.readouterr().err
    assert callback.written is None and not (tmp_path / "submission.zip").exists()


@pytest.mark.slow
def test_callback_only_writes_on_rank_zero(run, tmp_path, capsys):
    callback = SubmissionCallback()
    callback.on_fit_end(fake_trainer(tmp_path, str(run.best), rank_zero=False), None)
    assert capsys.readouterr() == ("", "")
    assert callback.written is None and not (tmp_path / "submission.zip").exists()
