"""Tasks as data through the CLI: single-task baselines, another class table, old checkpoints."""

from __future__ import annotations

import json
import zipfile

import pytest
import torch

from scenemtl.cli import main
from scenemtl.commands.grader import grade
from scenemtl.data.stats import write_stats
from scenemtl.engine.checkpoint import check_tasks, migrate_checkpoint
from scenemtl.engine.module import MultiTaskModule
from scenemtl.errors import UserError
from scenemtl.tasks import build_tasks, options_of_learned_tasks
from tests.helpers import read_metrics, tiny_config, write_random_dataset


def run_cli(argv):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    return exc.value.code


@pytest.mark.slow
@pytest.mark.parametrize(
    "task, monitor, other", [("semseg", "val/semseg", "depth"), ("depth", "val/depth", "semseg")]
)
def test_single_task_run_trains_tests_grades_and_predicts(
    tmp_path, tiny_root, task, monitor, other
):
    cfg = tiny_config(
        tmp_path,
        tiny_root,
        **{"trainer.max_epochs": 1, "data.tasks": [task], "submission.enabled": True},
    )
    assert run_cli(["fit", "--config", str(cfg)]) == 0
    run = tmp_path / "runs" / "tiny" / "version_0"
    record = json.loads((run / "run.json").read_text())
    assert record["tasks"] == [task]
    assert record["monitor"]["metric"] == monitor
    assert record["monitor"]["mode"] == ("max" if task == "semseg" else "min")
    columns = set(read_metrics(run)[0])
    assert f"val/{task}" in columns and f"val/{other}" not in columns
    assert "val/grader" not in columns
    module = MultiTaskModule.from_checkpoint(run / "checkpoints" / "best.ckpt")
    assert list(module.tasks) == [task]
    assert set(module.net(torch.zeros(1, 3, 32, 32))) == {task}

    members = zipfile.ZipFile(run / "submission.zip").namelist()
    assert any(m.startswith(f"predictions/{task}/") for m in members)
    assert not any(m.startswith(f"predictions/{other}/") for m in members)
    scores = grade(run / "submission.zip", tiny_root)
    assert task in scores and other not in scores and "grader" not in scores

    out = tmp_path / "pred"
    image = tiny_root / "test" / "rgb" / "0.png"
    best = str(run / "checkpoints" / "best.ckpt")
    assert (
        run_cli(["predict", "--ckpt_path", best, "--input", str(image), "--output", str(out)]) == 0
    )
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [f"0_{task}.png", f"0_{task}_color.png", "0_panel.png"]
    )


def test_distillation_refuses_a_single_task_in_one_line(tmp_path, tiny_root, capsys):
    cfg = tiny_config(
        tmp_path, tiny_root, **{"data.tasks": ["depth"], "model.net.architecture": "distillation"}
    )
    assert run_cli(["fit", "--config", str(cfg)]) == 1
    err = capsys.readouterr().err
    assert "needs at least 2 tasks" in err and "Traceback" not in err


@pytest.mark.parametrize(
    "override, message",
    [
        ({"data.tasks": ["normals"]}, "the dataset has no task 'normals'"),
        ({"data.tasks": []}, "data.tasks is empty"),
        ({"model.task_options": {"depth": {"spcae": "log"}}}, "unknown option 'spcae'"),
        ({"model.task_options": {"depth": {"silog_lambda": "abc"}}}, "task 'depth'"),
        (
            {"data.tasks": ["semseg"], "model.task_options": {"normals": {"loss": "l1"}}},
            "model.task_options names an unknown task 'normals'; the data provides semseg, depth",
        ),
    ],
)
def test_bad_task_configuration_is_one_line(tmp_path, tiny_root, capsys, override, message):
    cfg = tiny_config(tmp_path, tiny_root, **override)
    assert run_cli(["fit", "--config", str(cfg)]) == 1
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


@pytest.mark.slow
def test_seven_class_dataset_trains_validates_and_grades(tmp_path):
    root = tmp_path / "seven"
    write_random_dataset(
        root, sizes={"train": 4, "val": 2, "test": 2}, image_size=(32, 48), num_classes=7
    )
    write_stats(root)
    cfg = tiny_config(tmp_path, root, **{"trainer.max_epochs": 1, "submission.enabled": True})
    assert run_cli(["fit", "--config", str(cfg)]) == 0
    run = tmp_path / "runs" / "tiny" / "version_0"
    columns = set(read_metrics(run)[0])
    assert "val/semseg_iou/class6" in columns and "val/semseg_iou/class7" not in columns
    module = MultiTaskModule.from_checkpoint(run / "checkpoints" / "best.ckpt")
    assert module.tasks["semseg"].channels == 7
    assert module.net(torch.zeros(1, 3, 32, 32))["semseg"][-1].shape[1] == 7
    scores = grade(run / "submission.zip", root)
    assert 0.0 <= scores["semseg"] <= 100.0 and "grader" in scores

    # the checkpoint's 7 classes do not fit the 19-class data: one line, not a size mismatch
    other = tmp_path / "nineteen"
    write_random_dataset(other, sizes={"train": 2, "val": 2, "test": 2}, image_size=(32, 48))
    write_stats(other)
    cfg19 = tiny_config(tmp_path / "b", other)
    best = str(run / "checkpoints" / "best.ckpt")
    assert run_cli(["test", "--config", str(cfg19), "--ckpt_path", best]) == 1


def test_a_checkpoint_of_other_tasks_or_class_counts_is_refused_in_one_line():
    def seg(n):
        return {
            "kind": "segmentation",
            "classes": [{"name": f"c{i}", "color": [i] * 3} for i in range(n)],
        }

    normals = {"kind": "normals"}
    stored = {"hyper_parameters": {"task_specs": {"semseg": seg(7), "normals": normals}}}
    check_tasks(stored, {"semseg": seg(7), "normals": normals})  # the same: accepted
    # other class names, same count: the weights fit
    renamed = {"kind": "segmentation", "classes": [{"name": "x", "color": [0, 0, 0]}] * 7}
    check_tasks(stored, {"semseg": renamed, "normals": normals})
    with pytest.raises(
        UserError,
        match=r"learned tasks semseg \(7 classes\), normals, but this run's data gives "
        r"semseg \(19 classes\), normals;",
    ):
        check_tasks(stored, {"semseg": seg(19), "normals": normals})
    with pytest.raises(UserError, match="choose matching data.tasks"):
        check_tasks(stored, {"semseg": seg(7)})


def _as_legacy(ckpt: dict) -> dict:
    """A checkpoint as scenemtl wrote them before tasks were data: no task specs, the
    depth normalization in `depth_space.*` (and its alias in the loss), flat options."""
    state = dict(ckpt["state_dict"])
    for key in ("mean", "std"):
        value = state.pop(f"tasks.depth.space.{key}")
        state[f"depth_space.{key}"] = value
        state[f"criterion.depth_space.{key}"] = value.clone()
    hparams = dict(ckpt["hyper_parameters"])
    hparams.pop("task_specs")
    hparams.pop("task_options")
    hparams.update(depth_space="log", depth_loss="l1", silog_lambda=0.85)
    return {**ckpt, "state_dict": state, "hyper_parameters": hparams}


def test_checkpoints_from_before_tasks_as_data_still_load(tmp_path, tiny_root):
    net = {"architecture": "joint", "encoder": "resnet18", "channels": 16, "skip_channels": 8}
    module = MultiTaskModule(net=net, depth_space="log").eval()
    module.adopt_dataset_stats(json.loads((tiny_root / "dataset.json").read_text())["stats"])
    hparams = dict(module.hparams)
    hparams["net"] = dict(vars(hparams["net"]))
    ckpt = {"state_dict": module.state_dict(), "hyper_parameters": hparams}
    legacy = _as_legacy(ckpt)
    assert not any(k.startswith("tasks.") for k in legacy["state_dict"])
    path = tmp_path / "legacy.ckpt"
    torch.save(legacy, path)

    loaded = MultiTaskModule.from_checkpoint(path)
    assert list(loaded.tasks) == ["semseg", "depth"] and loaded.tasks["semseg"].channels == 19
    depth = loaded.tasks["depth"]
    assert depth.space.kind == "log"
    assert float(depth.space.mean) == float(module.tasks["depth"].space.mean)
    image = torch.randn(1, 3, 32, 48)
    with torch.no_grad():
        want, got = module.predict_step({"image": image}), loaded.predict_step({"image": image})
    assert torch.equal(want["semseg"], got["semseg"]) and torch.equal(want["depth"], got["depth"])

    migrated = _as_legacy(ckpt)
    migrate_checkpoint(migrated)
    assert set(migrated["state_dict"]) == set(ckpt["state_dict"])


@pytest.mark.slow
def test_three_task_procedural_run_fits_tests_grades_predicts_and_exports(tmp_path, capsys):
    """semseg + depth + normals through the command line, one training step each."""
    from PIL import Image

    root = tmp_path / "synth"
    synth = ["data", "synth", "--root", str(root), "--train", "4", "--val", "2", "--test", "2"]
    synth += ["--size", "32x48", "--workers", "1", "--tasks", "semseg", "depth", "normals"]
    assert run_cli(synth) == 0
    assert run_cli(["data", "check", "--root", str(root)]) == 0
    cfg = tiny_config(
        tmp_path,
        root,
        **{
            "trainer.max_epochs": 1,
            "trainer.limit_train_batches": 0.5,
            "submission.enabled": True,
            "data.tilt_deg": 10.0,  # normals turn with the image (wiggle would be refused)
            "model.task_options": {"normals": {"loss": "cosine"}},
        },
    )
    assert run_cli(["fit", "--config", str(cfg)]) == 0
    run = tmp_path / "runs" / "tiny" / "version_0"
    record = json.loads((run / "run.json").read_text())
    assert record["tasks"] == ["semseg", "depth", "normals"]
    assert record["directions"] == {"semseg": "max", "depth": "min", "normals": "min"}
    columns = set(read_metrics(run)[0])
    assert {"val/normals", "val/normals_median", "val/normals_within_30"} <= columns
    assert "val/grader" in columns  # the course grader stays semseg + depth
    best = str(run / "checkpoints" / "best.ckpt")
    for command in ("validate", "test"):
        assert run_cli([command, "--config", str(cfg), "--ckpt_path", best]) == 0

    members = zipfile.ZipFile(run / "submission.zip").namelist()
    assert "predictions/normals/0.png" in members
    scores = grade(run / "submission.zip", root)
    assert 0.0 <= scores["normals"] <= 180.0 and "normals_within_11_25" in scores
    assert "grader" in scores

    capsys.readouterr()
    out = tmp_path / "pred"
    image = root / "test" / "rgb" / "0.jpg"
    argv = ["predict", "--ckpt_path", best, "--input", str(image), "--output", str(out)]
    assert run_cli([*argv, "--tta-flip"]) == 0
    normals_png = Image.open(out / "0_normals.png")
    assert normals_png.mode == "RGB" and normals_png.size == (48, 32)
    assert "normals:" in capsys.readouterr().out

    onnx = tmp_path / "tiny.onnx"
    export = ["export", "onnx", "--ckpt_path", best, "--out", str(onnx), "--size", "32x48"]
    assert run_cli([*export, "--runs", "1"]) == 0
    stdout = capsys.readouterr().out
    assert stdout.count("normals max angle") == 2
    import onnx as onnx_lib

    names = [o.name for o in onnx_lib.load(str(onnx), load_external_data=False).graph.output]
    assert names == ["semseg_logits", "semseg", "depth", "normals"]


def test_perspective_wiggle_is_refused_for_a_run_with_normals(tmp_path, capsys):
    root = tmp_path / "synth"
    synth = ["data", "synth", "--root", str(root), "--train", "2", "--val", "1", "--test", "0"]
    synth += ["--size", "16x32", "--workers", "1", "--tasks", "semseg", "depth", "normals"]
    assert run_cli(synth) == 0
    capsys.readouterr()
    cfg = tiny_config(tmp_path, root, **{"data.wiggle": 0.2, "data.crop_size": [16, 16]})
    assert run_cli(["fit", "--config", str(cfg)]) == 1
    err = capsys.readouterr().err
    assert "data.wiggle is 0.2 but task 'normals' refuses it" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_flat_depth_options_go_to_the_depth_task_whatever_its_name():
    """`model.depth_loss` sets the loss of the run's depth-kind task, here "disparity",
    over its task_options entry; a run without a depth task ignores it."""
    learned = {"labels": {"kind": "segmentation"}, "disparity": {"kind": "depth"}}
    flat = {"depth_loss": "silog", "depth_space": None, "silog_lambda": 0.5}
    options, _ = options_of_learned_tasks(
        learned, None, {"disparity": {"loss": "l2", "space": "log"}}, flat
    )
    assert options == {"disparity": {"loss": "silog", "space": "log", "silog_lambda": 0.5}}
    assert options_of_learned_tasks({"labels": {"kind": "segmentation"}}, None, None, flat) == (
        {},
        {},
    )
    task = build_tasks(
        {"disparity": {"kind": "depth"}},
        options_of_learned_tasks({"disparity": {"kind": "depth"}}, None, None, flat)[0],
    )[0]
    assert (task.loss_kind, task.silog_lambda) == ("silog", 0.5)


def test_a_flat_option_two_depth_tasks_could_take_is_refused():
    learned = {"near": {"kind": "depth"}, "far": {"kind": "depth"}}
    with pytest.raises(UserError, match=r"model.depth_loss could set 'loss' of near, far"):
        options_of_learned_tasks(learned, None, None, {"depth_loss": "l2"})
