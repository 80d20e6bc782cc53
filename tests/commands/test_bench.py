"""`scenemtl bench` runs every measurement on a tiny config (figures are not asserted);
it times the model `fit` would train (the data's tasks and class table, fit's dotted
overrides); the tasks' example targets; the peak line's wording from injected figures;
the peak's autocast; the bf16 warning."""

import re

import numpy as np
import pytest
import torch

from scenemtl.commands import bench
from scenemtl.commands.bench import BenchResult, build_from_args, run_bench
from scenemtl.data.format import write_info, write_normals
from scenemtl.data.stats import write_stats
from scenemtl.engine import precision as precision_module
from scenemtl.errors import UsageError, UserError
from scenemtl.tasks import build_tasks
from tests.helpers import tiny_config, write_random_dataset


def _seven_classes_and_normals(root):
    """A tiny dataset with a 7-class table, depth and normals (random unit vectors)."""
    sizes = {"train": 4, "val": 2, "test": 2}
    info = write_random_dataset(root, sizes=sizes, image_size=(32, 48), num_classes=7)
    info.extra_tasks = {"normals": {"kind": "normals", "encoding": "rgb8"}}
    write_info(root, info)
    rng = np.random.default_rng(0)
    for split, n in sizes.items():
        for i in range(n):
            v = rng.normal(size=(3, 32, 48))
            v[2] = -np.abs(v[2]) - 0.1
            write_normals(root / split / "normals" / f"{i}.png", v / np.linalg.norm(v, axis=0))
    write_stats(root)
    return root


@pytest.mark.slow
def test_bench_reports_all_figures(tmp_path, tiny_root):
    cfg = tiny_config(tmp_path, tiny_root)
    result = run_bench(["--config", cfg, "--steps", "2"], warmup=1)
    assert result.size == (32, 32) and result.batch_size == 2
    for value in (
        result.model_images_per_s,
        result.loader_images_per_s,
        result.end_to_end_images_per_s,
        result.step_gflop,
        result.matmul_peak_gflops,
        result.augment_ms,
        result.decode_ms,
        result.predicted_images_per_s(),
    ):
        assert value > 0
    assert result.optimizer == "adam" and result.optimizer_ms >= 0
    # the parts add up to no more than the model-only rate allows
    assert result.predicted_images_per_s() < result.model_images_per_s
    text = result.format()
    assert "end-to-end training" in text and "predicted" in text
    assert "matmul peak (32-true)" in text and ("% of peak" in text or "peak n/a" in text)


@pytest.mark.slow
def test_bench_times_the_datas_tasks_class_table_and_balancing_options(tmp_path):
    """The issue's bug: bench timed a 19-class semseg + depth network whatever the data.
    On a 7-class table with normals it times a 7-channel semseg head and a normals head,
    and says so; ``wrt: representation`` (which bench could not take before) runs."""
    root = _seven_classes_and_normals(tmp_path / "ds")
    cfg = tiny_config(tmp_path, root)
    argv = ["--config", cfg, "--steps", "2", "--model.loss_weighting", "upgrad"]
    argv += ["--model.weighting_options.wrt", "representation"]
    result = run_bench(argv, warmup=1)
    assert result.tasks == {"semseg": 7, "depth": 1, "normals": 3}  # as the heads emitted
    assert result.loss_weighting == "upgrad"
    assert result.weighting_options == {"wrt": "representation"}
    first = result.format().splitlines()[0]
    assert first == (
        "timed: tasks semseg (segmentation, 7-channel head), depth (depth, 1-channel head), "
        "normals (normals, 3-channel head); architecture joint (encoder resnet18); "
        "balancing upgrad (wrt=representation)"
    )
    assert result.model_images_per_s > 0 and result.end_to_end_images_per_s > 0


def test_bench_takes_fits_dotted_overrides(tmp_path):
    """Parsed by fit's parser: data.tasks, the architecture and the encoder reach the
    model (nothing is timed here)."""
    root = _seven_classes_and_normals(tmp_path / "ds")
    cfg = tiny_config(tmp_path, root)
    argv = ["--config", cfg, "--data.tasks", "[normals, semseg]"]
    argv += ["--model.net.architecture", "branched", "--model.net.encoder", "resnet34"]
    setup = build_from_args(argv)
    assert [t.name for t in setup.module.task_list] == ["semseg", "normals"]  # data's order
    assert setup.module.task_list[0].channels == 7
    net = setup.module.hparams.net  # the configuration, as a checkpoint would keep it
    assert (net["architecture"], net["encoder"]) == ("branched", "resnet34")
    assert setup.precision == "32-true" and setup.steps == 10
    assert not (tmp_path / "runs").exists()  # bench writes no run folder


def test_bench_rejects_unknown_keys_and_bad_options(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("model:\n  learning_rate: 0.1\n")
    with pytest.raises(UserError, match="learning_rate"):
        run_bench(["--config", cfg])
    with pytest.raises(UsageError, match="no_such_option"):
        run_bench(["--model.no_such_option", "1"])
    with pytest.raises(UserError, match="not benchmarked"):
        run_bench(["--precision", "64-true"])
    with pytest.raises(UserError, match="--steps must be in 2..10000"):
        run_bench(["--steps", "1"])


SEVEN = [{"name": f"c{i}", "color": [i, i, i]} for i in range(7)]


@pytest.mark.parametrize("kind", ["segmentation", "depth", "normals"])
def test_example_targets_are_valid_targets_of_the_task(kind):
    """What each kind's data holds: its dtype and shape, every pixel labelled, values of
    its own class table / depth range / unit sphere, and a finite loss."""
    spec = {
        "segmentation": {"kind": "segmentation", "classes": SEVEN},
        "depth": {"kind": "depth", "encoding": "disparity8", "range_m": [4.0, 300.0]},
        "normals": {"kind": "normals", "encoding": "rgb8"},
    }[kind]
    (task,) = build_tasks({"t": spec})
    target = task.example_target(3, 20, 30, torch.Generator().manual_seed(1))
    channels = (task.target_channels,) if task.target_channels else ()
    assert target.shape == (3, *channels, 20, 30) and target.dtype == task.target_dtype
    if kind == "segmentation":
        # 1800 uniform draws miss a class with probability 7 (6/7)^1800 < 1e-100
        assert sorted(target.unique().tolist()) == list(range(7))
    elif kind == "depth":
        assert float(target.min()) > 4.0 and float(target.max()) <= 300.0
    else:
        # float32 normalization: |n| = 1 within a few ulp (6e-8 each)
        torch.testing.assert_close(target.norm(dim=1), torch.ones(3, 20, 30), rtol=0, atol=1e-6)
        assert bool((target[:, 2] < 0).all())  # facing the camera
    output = torch.zeros(3, task.channels, 20, 30, requires_grad=True)
    loss = task.loss(output, target)
    assert torch.isfinite(loss) and loss.requires_grad


def _result(precision: str, achieved: float, peak: float) -> BenchResult:
    return BenchResult(
        precision=precision,
        batch_size=8,
        size=(128, 128),
        model_images_per_s=10.0,
        loader_images_per_s=100.0,
        end_to_end_images_per_s=9.0,
        step_gflop=33.0,
        achieved_gflops=achieved,
        matmul_peak_gflops=peak,
    )


def test_the_peak_line_names_its_precision_and_the_share_of_it():
    line = _result("32-true", achieved=160.0, peak=209.0).peak_line()
    assert "matmul peak (32-true)" in line and "209.0 GFLOP/s" in line
    assert line.endswith(f"-> {round(100 * 160 / 209)}% of peak")  # 77%
    assert _result("bf16-mixed", 225.0, 225.0).peak_line().endswith("-> 100% of peak")


def test_an_achieved_rate_above_the_matmul_probe_is_no_percentage():
    # the figures: emulated bf16, 4.1 GFLOP/s achieved against a 0.8 GFLOP/s matmul
    result = _result("bf16-mixed", achieved=4.1, peak=0.8)
    line = result.peak_line()
    assert "matmul peak (bf16-mixed)" in line and "%" not in line
    assert f"peak n/a: achieved {4.1 / 0.8:.1f}x the matmul probe" in line  # 5.1x
    assert "%" not in result.format().splitlines()[-1]
    assert "peak n/a: not measured" in _result("32-true", 1.0, 0.0).peak_line()


@pytest.mark.parametrize("achieved", [0.1, 50.0, 99.9, 100.0, 100.4, 101.0, 484.0, 1e6])
def test_no_share_of_peak_above_100_percent(achieved):
    text = _result("bf16-mixed", achieved=achieved, peak=100.0).format()
    shares = [int(s) for s in re.findall(r"(\d+)% of peak", text)]
    assert all(s <= 100 for s in shares)
    assert bool(shares) == (achieved <= 100.0)


@pytest.mark.parametrize(
    "flag, enabled, dtype",
    [
        ("32-true", False, None),
        ("bf16-mixed", True, torch.bfloat16),
        ("16-mixed", True, torch.float16),
    ],
)
def test_the_peak_matmul_runs_under_the_steps_autocast(monkeypatch, flag, enabled, dtype):
    seen = []
    mm = torch.mm

    def recording_mm(a, b):
        on = torch.is_autocast_enabled("cpu")
        seen.append((on, torch.get_autocast_dtype("cpu") if on else None, a.dtype))
        return mm(a, b)

    monkeypatch.setattr(torch, "mm", recording_mm)
    assert bench.matmul_peak_gflops(flag, torch.device("cpu"), n=16) > 0
    # the inputs are fp32, as the step's activations: autocast casts them, as in the step
    assert seen and set(seen) == {(enabled, dtype, torch.float32)}


def test_bench_warns_once_before_measuring_when_bf16_is_slow(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(precision_module, "measure_bf16_factor", lambda: 16.0)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)

    class Stop(Exception):
        pass

    def stop(*args, **kwargs):
        raise Stop

    # the warning comes before the data is checked and the model built
    monkeypatch.setattr("scenemtl.commands.lightning._check_data", stop)
    cfg = tmp_path / "c.yaml"
    cfg.write_text("trainer:\n  precision: bf16-mixed\n")
    with pytest.raises(Stop):
        run_bench(["--config", cfg])
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "bf16-mixed runs 16.0x slower than fp32" in err
    cfg.write_text("trainer:\n  precision: 32-true\n")
    with pytest.raises(Stop):
        run_bench(["--config", cfg])
    assert capsys.readouterr().err == ""
