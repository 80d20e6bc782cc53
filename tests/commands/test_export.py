"""`scenemtl export onnx`: a checked, self-contained ONNX file with dynamic batch and size."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io

import numpy as np
import pytest
import torch

from scenemtl.cli import _run_guarded, main
from scenemtl.codecs.classes import cityscapes_class_table
from scenemtl.commands import export
from scenemtl.commands.export import (
    InferenceWrapper,
    add_export_parser,
    compare_outputs,
    median_latency_ms,
    ort_session,
    output_names,
)
from scenemtl.engine.module import MultiTaskModule
from scenemtl.errors import UserError
from scenemtl.tasks import DepthTask, build_tasks, legacy_task_specs
from scenemtl.tasks.depth import EXPORT_DEPTH_RTOL
from scenemtl.tasks.segmentation import EXPORT_LOGIT_ATOL
from tests.helpers import slow_fixture, tiny_config
from tests.hostile import assert_refused

# the narrow network of the tiny runs (tests/helpers.py tiny_config): the same export path
# as a full-width ResNet-18, at a fraction of the tracing and checking time
TINY_NET = {
    "architecture": "joint",
    "encoder": "resnet18",
    "encoder_width": 16,
    "channels": 16,
    "skip_channels": 8,
}


def run_export(argv):
    parser = argparse.ArgumentParser(prog="scenemtl")
    add_export_parser(parser.add_subparsers())
    args = parser.parse_args(["export", "onnx", *argv])
    return _run_guarded(lambda: args.func(args))


@slow_fixture(scope="module")
def ckpt(tmp_path_factory, tiny_root):
    tmp = tmp_path_factory.mktemp("export_fit")
    cfg = tiny_config(tmp, tiny_root, **{"trainer.max_epochs": 1, "model.depth_space": "log"})
    with pytest.raises(SystemExit) as exc:
        main(["fit", "--config", str(cfg)])
    assert exc.value.code == 0
    return tmp / "runs" / "tiny" / "version_0" / "checkpoints" / "best.ckpt"


@pytest.fixture(scope="module")
def exported(ckpt, tmp_path_factory):
    """One export through the command line, shared by the tests that read the file."""
    out = tmp_path_factory.mktemp("onnx") / "models" / "tiny.onnx"
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = run_export(
            ["--ckpt_path", str(ckpt), "--out", str(out), "--size", "32x48", "--runs", "2"]
        )
    assert code == 0, stdout.getvalue()
    return out, stdout.getvalue()


@pytest.mark.slow
@pytest.mark.float_paths
def test_export_prints_check_and_latency_and_leaves_one_file(exported):
    out, stdout = exported
    assert out.is_file() and out.stat().st_size > 0
    assert [p.name for p in out.parent.iterdir()] == ["tiny.onnx"]  # no temp, no side data
    assert f"wrote {out}" in stdout
    assert stdout.count("check ") == 2  # tracing size and a second size
    assert "32x48:" in stdout and "43x61:" in stdout
    assert "torch eager" in stdout and "onnxruntime" in stdout and "median of 2 runs" in stdout


@pytest.mark.slow
def test_onnx_graph_has_documented_io(ckpt, exported):
    session = ort_session(exported[0])
    (inp,) = session.get_inputs()
    assert inp.name == "image" and inp.shape[1] == 3
    assert all(isinstance(d, str) for d in (inp.shape[0], inp.shape[2], inp.shape[3]))
    outs = session.get_outputs()
    tasks = MultiTaskModule.from_checkpoint(ckpt).task_list
    assert tuple(o.name for o in outs) == output_names(tasks)
    assert output_names(tasks) == ("semseg_logits", "semseg", "depth")
    assert [o.type for o in outs] == ["tensor(float)", "tensor(int64)", "tensor(float)"]


def predict(module, image):
    """The module's own predictions (predict_step) and final raw outputs for an image."""
    with torch.no_grad():
        raw = module(torch.from_numpy(image))
        preds = module.predict_step({"image": torch.from_numpy(image)})
    return preds, {name: outs[-1] for name, outs in raw.items()}


@pytest.mark.slow
@pytest.mark.float_paths
def test_onnx_matches_the_module_at_another_batch_and_size(ckpt, exported):
    module = MultiTaskModule.from_checkpoint(ckpt)
    session = ort_session(exported[0])
    rng = np.random.default_rng(5)
    image = rng.standard_normal((2, 3, 27, 70)).astype(np.float32)
    logits, labels, depth = session.run(None, {"image": image})
    preds, raw = predict(module, image)
    assert logits.shape == (2, 19, 27, 70) and labels.shape == depth.shape == (2, 27, 70)
    np.testing.assert_allclose(logits, raw["semseg"].numpy(), atol=EXPORT_LOGIT_ATOL)
    np.testing.assert_allclose(depth, preds["depth"].numpy(), rtol=EXPORT_DEPTH_RTOL)
    assert (labels == preds["semseg"].numpy()).mean() > 0.999
    assert (depth > 0).all()  # meters, not the normalized log space


def save_checkpoint(module, path):
    """A checkpoint as Lightning writes it: state dict plus plain-data hyperparameters."""
    hparams = dict(module.hparams)
    hparams["net"] = dataclasses.asdict(hparams["net"])
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": hparams}, path)
    return path


@pytest.mark.slow
@pytest.mark.float_paths
def test_single_task_semseg_checkpoint_exports_and_matches(tmp_path, capsys):
    classes = cityscapes_class_table()[:5]
    torch.manual_seed(0)
    module = MultiTaskModule(
        net=TINY_NET, task_specs={"semseg": {"kind": "segmentation", "classes": classes}}
    )
    ckpt = save_checkpoint(module, tmp_path / "semseg.ckpt")
    out = tmp_path / "semseg.onnx"
    code = run_export(
        ["--ckpt_path", str(ckpt), "--out", str(out), "--size", "32x48", "--runs", "1"]
    )
    stdout = capsys.readouterr().out
    assert code == 0, stdout
    assert stdout.count("check ") == 2 and "semseg logits max |diff|" in stdout
    assert "depth" not in stdout
    session = ort_session(out)
    assert [o.name for o in session.get_outputs()] == ["semseg_logits", "semseg"]
    image = np.random.default_rng(1).standard_normal((2, 3, 29, 50)).astype(np.float32)
    logits, labels = session.run(None, {"image": image})
    preds, raw = predict(MultiTaskModule.from_checkpoint(ckpt), image)
    assert logits.shape == (2, 5, 29, 50) and labels.shape == (2, 29, 50)
    np.testing.assert_allclose(logits, raw["semseg"].numpy(), atol=EXPORT_LOGIT_ATOL)
    assert (labels == preds["semseg"].numpy()).mean() > 0.999
    assert labels.max() < 5


@pytest.mark.slow
def test_mismatch_fails_and_writes_nothing(ckpt, exported, tmp_path, monkeypatch, capsys):
    # reuse the exported file instead of exporting again: this test is about the check
    monkeypatch.setattr(
        export, "export_to_file", lambda w, path, *a: path.write_bytes(exported[0].read_bytes())
    )
    real = export._run_onnx

    def off_by_a_bit(session, image):
        outputs = real(session, image)
        outputs["semseg_logits"] = outputs["semseg_logits"] + 10 * EXPORT_LOGIT_ATOL
        return outputs

    monkeypatch.setattr(export, "_run_onnx", off_by_a_bit)
    out = tmp_path / "m.onnx"
    argv = ["--ckpt_path", str(ckpt), "--out", str(out), "--size", "32x32", "--runs", "1"]
    code = run_export(argv)
    err = capsys.readouterr().err
    assert code == 1
    assert "disagrees with torch beyond tolerance" in err and len(err.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []
    # the same path without the perturbation succeeds, so the failure above was the check
    monkeypatch.setattr(export, "_run_onnx", real)
    threads = torch.get_num_threads()
    assert run_export([*argv, "--threads", "1"]) == 0
    assert torch.get_num_threads() == threads  # timing does not leave its setting behind
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]


def test_compare_outputs_tolerances():
    tasks = build_tasks(legacy_task_specs())
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((1, 19, 4, 5)).astype(np.float32)
    labels = logits.argmax(1)
    depth = rng.uniform(1, 100, (1, 4, 5)).astype(np.float32)

    def outputs(logits=logits, labels=labels, depth=depth):
        return {"semseg_logits": logits, "semseg": labels, "depth": depth}

    same = compare_outputs(tasks, outputs(), outputs())
    assert same.ok and same.size == (4, 5)
    assert [t.task for t in same.tasks] == ["semseg", "depth"]
    assert same.format().startswith("4x5: semseg logits max |diff| 0.00e+00")
    off = compare_outputs(tasks, outputs(), outputs(logits=logits + 2e-3))
    assert not off.ok and not off["semseg"].ok and off["depth"].ok
    far = compare_outputs(tasks, outputs(), outputs(depth=depth * 1.01))
    assert not far.ok and far["semseg"].ok and not far["depth"].ok
    wrong = labels.copy()
    wrong[0, 0, 0] = (wrong[0, 0, 0] + 1) % 19
    bad_label = compare_outputs(tasks, outputs(), outputs(labels=wrong))
    assert not bad_label.ok and "(1 above the tie margin)" in bad_label.format()
    # a genuine tie may flip without failing the check
    tied = logits.copy()
    top = labels[0, 0, 0]
    other = (top + 1) % 19
    tied[0, other, 0, 0] = tied[0, top, 0, 0]
    tie_ref = tied.argmax(1)
    flipped = tie_ref.copy()
    flipped[0, 0, 0] = other if tie_ref[0, 0, 0] == top else top
    tie = compare_outputs(tasks, outputs(tied, tie_ref), outputs(tied, flipped))
    assert tie.ok and "labels differ on 5.000% of pixels" in tie.format()
    with pytest.raises(UserError, match="shape"):
        compare_outputs(tasks, outputs(), outputs(logits=logits[..., :3]))
    with pytest.raises(UserError, match="expected semseg_logits, semseg, depth"):
        compare_outputs(tasks, outputs(), {"semseg_logits": logits, "semseg": labels})
    # a single task judges only its own outputs
    (depth_only,) = build_tasks({"depth": legacy_task_specs()["depth"]})
    alone = compare_outputs([depth_only], {"depth": depth}, {"depth": depth})
    assert alone.ok and [t.task for t in alone.tasks] == ["depth"]


def test_wrapper_decodes_depth_to_meters():
    semseg, _ = build_tasks(legacy_task_specs())
    depth = DepthTask("depth", space="log")
    depth.adopt_stats({"depth_log": {"mean": 2.0, "std": 0.5}})

    class Fixed(torch.nn.Module):
        def forward(self, x):
            b, _, h, w = x.shape
            semseg = torch.zeros(b, 19, h, w)
            semseg[:, 7] = 1.0
            return {"semseg": [semseg], "depth": [torch.ones(b, 1, h, w)]}

    assert output_names([semseg, depth]) == ("semseg_logits", "semseg", "depth")
    logits, labels, meters = InferenceWrapper(Fixed(), [semseg, depth])(torch.zeros(2, 3, 4, 6))
    assert logits.shape == (2, 19, 4, 6)
    assert labels.dtype == torch.int64 and labels.eq(7).all()
    torch.testing.assert_close(meters, torch.full((2, 4, 6), float(np.exp(2.0 + 0.5))))
    # the graph's outputs follow the order of the tasks it is given
    (only,) = InferenceWrapper(Fixed(), [depth])(torch.zeros(1, 3, 4, 6))
    assert only.shape == (1, 4, 6)


def test_median_latency_counts_runs():
    calls = []
    ms = median_latency_ms(lambda: calls.append(1), runs=5, warmup=2)
    assert len(calls) == 7 and ms >= 0


@pytest.mark.slow
@pytest.mark.parametrize(
    "argv, culprits",
    [
        (["--ckpt_path", "{missing}"], ["{missing}", "not found"]),
        (["--ckpt_path", "{text}"], ["{text}", "not a scenemtl checkpoint"]),
        (["--ckpt_path", "{truncated}"], ["{truncated}", "not a scenemtl checkpoint"]),
        (["--out", "{folder}"], ["{folder}", "is a folder"]),
    ],
)
def test_bad_input_is_one_line(ckpt, tmp_path, capsys, argv, culprits):
    (tmp_path / "text.ckpt").write_text("hello")
    (tmp_path / "truncated.ckpt").write_bytes(ckpt.read_bytes()[:1000])
    (tmp_path / "folder").mkdir()
    fill = {
        "missing": tmp_path / "nope.ckpt",
        "text": tmp_path / "text.ckpt",
        "truncated": tmp_path / "truncated.ckpt",
        "folder": tmp_path / "folder",
    }
    base = {"--ckpt_path": str(ckpt), "--out": str(tmp_path / "m.onnx")}
    for key, value in zip(argv[::2], argv[1::2], strict=True):
        base[key] = value.format(**fill)
    full = ["export", "onnx", *(x for kv in base.items() for x in kv)]
    culprits = [c.format(**fill) for c in culprits]
    assert_refused(full, capsys, culprits, watch=[tmp_path, ckpt.parent])
    assert not (tmp_path / "m.onnx").exists()


@pytest.mark.parametrize("bad", [["--size", "32"], ["--size", "0x4"], ["--opset", "3"]])
def test_bad_options_are_rejected_by_the_parser(bad):
    with pytest.raises(SystemExit) as exc:
        run_export(["--ckpt_path", "c", "--out", "o.onnx", *bad])
    assert exc.value.code == 2


@pytest.mark.parametrize(
    "dilation", [[False, False, False], [False, False, True], [False, True, True]]
)
def test_the_size_bound_is_where_pyramid_levels_stop_sharing_a_size(dilation):
    """check_export_size accepts exactly the sizes at which the input and every level of
    the encoder's pyramid have distinct sizes: where two coincide the network skips the
    resize between them and the traced graph keeps that shortcut for every size. The
    level sizes come from the encoder itself; each side is independent (square inputs
    give them per side), so every (h, w) up to past the bound is enumerated."""
    from scenemtl.models.config import ModelConfig
    from scenemtl.models.encoders.registry import build_encoder

    cfg = ModelConfig(**{**TINY_NET, "dilation": dilation})
    encoder = build_encoder(cfg.encoder, None, cfg.encoder_config()).eval()
    sides = range(1, cfg.output_stride // 2 + 3)
    per_side = {}  # side -> its size at the input and at each scale of the pyramid
    for n in sides:
        with torch.no_grad():
            pyramid = encoder(torch.zeros(1, 3, n, n))
        per_side[n] = [n, *(int(x.shape[-1]) for x in pyramid.values())]
    for h in sides:
        for w in sides:
            levels = list(zip(per_side[h], per_side[w], strict=True))
            distinct = len(set(levels)) == len(levels)
            try:
                export.check_export_size((h, w), cfg.output_stride)
                accepted = True
            except UserError:
                accepted = False
            assert accepted == distinct, (h, w, levels)


@pytest.mark.slow
@pytest.mark.parametrize(
    "size, culprits",
    [
        ("1x1", ["--size 1x1", "output stride 32", "at least 17 pixels"]),
        ("16x16", ["--size 16x16", "at least 17 pixels"]),
        ("40000x40000", ["--size 40000x40000", "1600.0 MP", "16.8 MP"]),
    ],
)
def test_a_size_the_export_cannot_take_is_one_line(
    ckpt, tmp_path, capsys, monkeypatch, size, culprits
):
    def allocated(*args, **kwargs):
        raise AssertionError("the input was allocated before the size was checked")

    monkeypatch.setattr(export, "example_input", allocated)
    argv = ["export", "onnx", "--ckpt_path", ckpt, "--out", tmp_path / "m.onnx", "--size", size]
    assert_refused(argv, capsys, culprits, watch=[tmp_path, ckpt.parent])


@pytest.mark.slow
def test_the_smallest_size_exports_and_a_smaller_one_breaks_the_graph(
    ckpt, tmp_path, monkeypatch, capsys
):
    """17x1 (one side above half the output stride 32) traces a graph that holds at the
    second size; below the bound the shortcut of coinciding levels is traced in (here at
    4x4, where this network's 1/4 and 1/32 levels are both 1x1) and onnxruntime fails at
    the second size: one line, no file."""
    assert (
        run_export(
            [
                "--ckpt_path",
                str(ckpt),
                "--out",
                str(tmp_path / "a.onnx"),
                "--size",
                "17x1",
                "--runs",
                "1",
            ]
        )
        == 0
    )
    assert "check 17x1:" in capsys.readouterr().out
    monkeypatch.setattr(export, "check_export_size", lambda size, stride: None)
    out = tmp_path / "b.onnx"
    assert (
        run_export(["--ckpt_path", str(ckpt), "--out", str(out), "--size", "4x4", "--runs", "1"])
        == 1
    )
    err = capsys.readouterr().err
    assert "onnxruntime cannot run the exported graph at 15x17" in err
    assert len(err.strip().splitlines()) == 1 and not out.exists()
