"""`scenemtl export onnx`: a checked, self-contained ONNX file with dynamic batch and size."""

from __future__ import annotations

import argparse
import contextlib
import io

import numpy as np
import pytest
import torch

from scenemtl.commands import export
from scenemtl.cli import _run_guarded, main
from scenemtl.depth_space import decode_predictions
from scenemtl.engine.module import MultiTaskModule
from scenemtl.errors import UserError
from scenemtl.commands.export import (
    DEPTH_RTOL,
    LOGIT_ATOL,
    InferenceWrapper,
    add_export_parser,
    compare_outputs,
    median_latency_ms,
    ort_session,
    output_names,
)
from tests.engine.conftest import tiny_config


def run_export(argv):
    parser = argparse.ArgumentParser(prog="scenemtl")
    add_export_parser(parser.add_subparsers())
    args = parser.parse_args(["export", "onnx", *argv])
    return _run_guarded(lambda: args.func(args))


@pytest.fixture(scope="module")
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


def test_export_prints_check_and_latency_and_leaves_one_file(exported):
    out, stdout = exported
    assert out.is_file() and out.stat().st_size > 0
    assert [p.name for p in out.parent.iterdir()] == ["tiny.onnx"]  # no temp, no side data
    assert f"wrote {out}" in stdout
    assert stdout.count("check ") == 2  # tracing size and a second size
    assert "32x48:" in stdout and "43x61:" in stdout
    assert "torch eager" in stdout and "onnxruntime" in stdout and "median of 2 runs" in stdout


def test_onnx_graph_has_documented_io(exported):
    session = ort_session(exported[0])
    (inp,) = session.get_inputs()
    assert inp.name == "image" and inp.shape[1] == 3
    assert all(isinstance(d, str) for d in (inp.shape[0], inp.shape[2], inp.shape[3]))
    outs = session.get_outputs()
    assert tuple(o.name for o in outs) == output_names() == ("semseg_logits", "semseg", "depth")
    assert [o.type for o in outs] == ["tensor(float)", "tensor(int64)", "tensor(float)"]


def test_onnx_matches_the_module_at_another_batch_and_size(ckpt, exported):
    module = MultiTaskModule.from_checkpoint(ckpt)
    session = ort_session(exported[0])
    rng = np.random.default_rng(5)
    image = rng.standard_normal((2, 3, 27, 70)).astype(np.float32)
    logits, labels, depth = session.run(None, {"image": image})
    with torch.no_grad():
        raw = module(torch.from_numpy(image))
        preds = decode_predictions(raw, module.depth_space)
    assert logits.shape == (2, 19, 27, 70) and labels.shape == depth.shape == (2, 27, 70)
    np.testing.assert_allclose(logits, raw["semseg"][-1].numpy(), atol=LOGIT_ATOL)
    np.testing.assert_allclose(depth, preds["depth"].numpy(), rtol=DEPTH_RTOL)
    assert (labels == preds["semseg"].numpy()).mean() > 0.999
    assert (depth > 0).all()  # meters, not the normalized log space


def test_mismatch_fails_and_writes_nothing(ckpt, exported, tmp_path, monkeypatch, capsys):
    # reuse the exported file instead of exporting again: this test is about the check
    monkeypatch.setattr(
        export, "export_to_file", lambda w, path, *a: path.write_bytes(exported[0].read_bytes())
    )
    real = export._run_onnx

    def off_by_a_bit(session, image):
        logits, labels, depth = real(session, image)
        return [logits + 10 * LOGIT_ATOL, labels, depth]

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
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((1, 19, 4, 5)).astype(np.float32)
    labels = logits.argmax(1)
    depth = rng.uniform(1, 100, (1, 4, 5)).astype(np.float32)
    same = compare_outputs([logits, labels, depth], [logits, labels, depth])
    assert same.ok and same.logit_max_abs == 0 and same.size == (4, 5)
    assert not compare_outputs([logits, labels, depth], [logits + 2e-3, labels, depth]).ok
    assert not compare_outputs([logits, labels, depth], [logits, labels, depth * 1.01]).ok
    wrong = labels.copy()
    wrong[0, 0, 0] = (wrong[0, 0, 0] + 1) % 19
    bad_label = compare_outputs([logits, labels, depth], [logits, wrong, depth])
    assert not bad_label.ok and bad_label.confident_label_mismatches == 1
    # a genuine tie may flip without failing the check
    tied = logits.copy()
    top = labels[0, 0, 0]
    other = (top + 1) % 19
    tied[0, other, 0, 0] = tied[0, top, 0, 0]
    tie_ref = tied.argmax(1)
    flipped = tie_ref.copy()
    flipped[0, 0, 0] = other if tie_ref[0, 0, 0] == top else top
    tie = compare_outputs([tied, tie_ref, depth], [tied, flipped, depth])
    assert tie.ok and tie.label_disagreement == pytest.approx(1 / 20)
    with pytest.raises(UserError, match="shape"):
        compare_outputs([logits, labels, depth], [logits[..., :3], labels, depth])


def test_wrapper_decodes_depth_to_meters():
    from scenemtl.depth_space import DepthSpace

    stats = {"depth_log": {"mean": 2.0, "std": 0.5}}
    space = DepthSpace("log", stats)

    class Fixed(torch.nn.Module):
        def forward(self, x):
            b, _, h, w = x.shape
            semseg = torch.zeros(b, 19, h, w)
            semseg[:, 7] = 1.0
            return {"semseg": [semseg], "depth": [torch.ones(b, 1, h, w)]}

    logits, labels, depth = InferenceWrapper(Fixed(), space)(torch.zeros(2, 3, 4, 6))
    assert logits.shape == (2, 19, 4, 6)
    assert labels.dtype == torch.int64 and labels.eq(7).all()
    torch.testing.assert_close(depth, torch.full((2, 4, 6), float(np.exp(2.0 + 0.5))))


def test_median_latency_counts_runs():
    calls = []
    ms = median_latency_ms(lambda: calls.append(1), runs=5, warmup=2)
    assert len(calls) == 7 and ms >= 0


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--ckpt_path", "{missing}"], "not found"),
        (["--ckpt_path", "{text}"], "not a scenemtl checkpoint"),
        (["--out", "{folder}"], "is a folder"),
    ],
)
def test_bad_input_is_one_line(ckpt, tmp_path, capsys, argv, message):
    (tmp_path / "text.ckpt").write_text("hello")
    (tmp_path / "folder").mkdir()
    fill = {
        "missing": tmp_path / "nope.ckpt",
        "text": tmp_path / "text.ckpt",
        "folder": tmp_path / "folder",
    }
    base = {"--ckpt_path": str(ckpt), "--out": str(tmp_path / "m.onnx")}
    for key, value in zip(argv[::2], argv[1::2], strict=True):
        base[key] = value.format(**fill)
    code = run_export([x for kv in base.items() for x in kv])
    err = capsys.readouterr().err
    assert code == 1 and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "m.onnx").exists()


@pytest.mark.parametrize("bad", [["--size", "32"], ["--size", "0x4"], ["--opset", "3"]])
def test_bad_options_are_rejected_by_the_parser(bad):
    with pytest.raises(SystemExit) as exc:
        run_export(["--ckpt_path", "c", "--out", "o.onnx", *bad])
    assert exc.value.code == 2
