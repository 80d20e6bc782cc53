"""The CLI contract: user mistakes give one line and a non-zero exit, never a traceback."""

import subprocess
import sys

import pytest

from scenemtl.cli import main
from tests.helpers import write_random_dataset


def run(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    out, err = capsys.readouterr()
    return exc.value.code, out, err


def test_check_ok_and_failing(tmp_path, capsys):
    write_random_dataset(tmp_path)
    code, out, _ = run(["data", "check", "--root", str(tmp_path)], capsys)
    assert code == 0 and "OK" in out
    (tmp_path / "val/rgb/1.png").unlink()
    code, out, err = run(["data", "check", "--root", str(tmp_path)], capsys)
    assert code == 1
    assert out.strip() == f"{tmp_path}/val/rgb/1.png: file not found"
    assert "1 problem(s)" in err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["data", "stats", "--root", "/nonexistent/x"], "does not exist"),
        (["data", "check", "--root", "/nonexistent/x"], "does not exist"),
        (["data", "cityscapes", "--src", "/nonexistent/x", "--out", "/tmp/y"], "no leftImg8bit"),
    ],
)
def test_bad_paths_give_one_line(argv, message, capsys):
    code, out, err = run(argv, capsys)
    assert code == 1
    assert "Traceback" not in err
    if argv[1] == "check":
        assert message in out
    else:
        assert err.count("\n") == 1 and message in err


def test_stats_prints_frequencies(tmp_path, capsys):
    write_random_dataset(tmp_path)
    code, out, _ = run(["data", "stats", "--root", str(tmp_path)], capsys)
    assert code == 0
    assert "traffic light" in out and "depth_log" in out


@pytest.mark.parametrize(
    "argv, culprit",
    [
        (["data", "synth", "--size", "big"], "size must be HxW"),
        (["data", "synth", "--train", "-1"], "--train"),
        (["bogus"], "invalid choice: 'bogus'"),
        (["runs", "--format", "xml"], "--format"),
        (["predict", "--input", "x"], "--ckpt_path"),
        ([], "COMMAND"),
    ],
)
def test_a_command_line_that_does_not_parse_is_one_line_and_status_2(argv, culprit, capsys):
    from tests.hostile import check_one_line
    from tests.hostile import run as run_main

    result = run_main(argv, capsys)
    assert result.code == 2
    assert "usage:" not in check_one_line(result, [culprit, "--help"])


@pytest.mark.slow
def test_console_script_reports_error_without_traceback(tmp_path):
    (tmp_path / "dataset.json").write_text("{")
    proc = subprocess.run(
        [sys.executable, "-m", "scenemtl", "data", "stats", "--root", str(tmp_path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 1
    assert proc.stderr.startswith("scenemtl: error: ") and "not valid JSON" in proc.stderr
    assert "Traceback" not in proc.stderr


# --------------------------------------------------------------------------------------
# settings of the tasks a run does not learn


@pytest.mark.slow
@pytest.mark.parametrize("task", ["semseg", "depth"])
def test_a_single_task_run_ignores_the_settings_of_the_task_it_drops(tmp_path, tiny_root, task):
    """A config written for semseg + depth (flat depth options, task_options, loss weights
    of both) trains either task alone (the README's baselines); the learned task keeps
    its own settings, and the checkpoint reloads (predict, export)."""
    from scenemtl.engine.module import MultiTaskModule
    from tests.helpers import tiny_config

    cfg = tiny_config(
        tmp_path,
        tiny_root,
        **{
            "model.depth_space": "log",
            "model.depth_loss": "silog",
            "model.task_options": {"depth": {"silog_lambda": 0.5}},
            "model.loss_weights": {"semseg": 2.0, "depth": 3.0},
            "trainer.max_epochs": 1,
            "trainer.max_steps": 1,
            "trainer.limit_val_batches": 1,
        },
    )
    with pytest.raises(SystemExit) as exc:
        main(["fit", "--config", str(cfg), "--data.tasks", f"[{task}]"])
    assert exc.value.code == 0
    ckpt = tmp_path / "runs" / "tiny" / "version_0" / "checkpoints" / "last.ckpt"
    module = MultiTaskModule.from_checkpoint(ckpt)
    assert list(module.tasks) == [task]
    assert module.criterion.weighting.base_weights.tolist() == [2.0 if task == "semseg" else 3.0]
    if task == "depth":
        depth = module.tasks["depth"]
        assert (depth.space.kind, depth.loss_kind, depth.silog_lambda) == ("log", "silog", 0.5)


@pytest.mark.parametrize(
    "option, culprit",
    [
        (["--model.task_options", "{deph: {space: log}}"], "model.task_options"),
        (["--model.loss_weights", "{normals: 1.0}"], "model.loss_weights"),
    ],
)
def test_a_setting_for_a_task_the_data_lacks_is_refused(
    tmp_path, tiny_root, capsys, option, culprit
):
    """Only the data's tasks are ignored when not learned: a typo or another dataset's
    task is a mistake, refused in one line before a run folder exists."""
    from tests.helpers import tiny_config
    from tests.hostile import assert_refused

    cfg = tiny_config(tmp_path, tiny_root)
    task = option[1].strip("{").split(":")[0]
    assert_refused(
        ["fit", "--config", cfg, "--data.tasks", "[semseg]", *option],
        capsys,
        [culprit, f"unknown task {task!r}", "the data provides semseg, depth"],
        watch=[tmp_path],  # no run folder either
    )


# --------------------------------------------------------------------------------------
# the top-level handler: input-only library errors are one line, bugs keep their traceback


def _raiser(exc: BaseException):
    def func():
        raise exc

    return func


@pytest.mark.parametrize(
    ("exc", "needle"),
    [
        (MemoryError(), "out of memory"),
        (__import__("json").JSONDecodeError("Expecting value", "x", 0), "JSONDecodeError"),
        (UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte"), "UnicodeDecodeError"),
        (__import__("zipfile").BadZipFile("File is not a zip file"), "BadZipFile"),
        (__import__("pickle").UnpicklingError("invalid load key"), "UnpicklingError"),
    ],
)
def test_input_errors_reaching_the_top_are_one_line(capsys, exc, needle):
    from scenemtl.cli import _run_guarded

    assert _run_guarded(_raiser(exc)) == 1
    err = capsys.readouterr().err
    assert err.startswith("scenemtl: error: ") and needle in err and err.count("\n") == 1


@pytest.mark.parametrize(
    "exc", [ValueError("a bug"), TypeError("a bug"), RuntimeError("a bug"), RecursionError()]
)
def test_generic_exceptions_keep_their_traceback(exc):
    from scenemtl.cli import _run_guarded

    with pytest.raises(type(exc)):
        _run_guarded(_raiser(exc))
