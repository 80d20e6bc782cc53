"""`scenemtl bench` runs every measurement on a tiny config (figures are not asserted);
the peak line's wording from injected figures; the peak's autocast; the bf16 warning."""

import re

import pytest
import torch

from scenemtl.commands import bench
from scenemtl.commands.bench import BenchResult, run_bench
from scenemtl.engine import precision as precision_module
from scenemtl.errors import UserError
from tests.helpers import tiny_config


@pytest.mark.slow
def test_bench_reports_all_figures(tmp_path, tiny_root):
    cfg = tiny_config(tmp_path, tiny_root)
    result = run_bench(cfg, steps=2, warmup=1)
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


def test_bench_rejects_unknown_keys(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("model:\n  learning_rate: 0.1\n")
    with pytest.raises(UserError, match="learning_rate"):
        run_bench(cfg)


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

    def stop(cfg):
        raise Stop

    monkeypatch.setattr(bench, "build_from_config", stop)
    cfg = tmp_path / "c.yaml"
    cfg.write_text("trainer:\n  precision: bf16-mixed\n")
    with pytest.raises(Stop):
        run_bench(cfg)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "bf16-mixed runs 16.0x slower than fp32" in err
    cfg.write_text("trainer:\n  precision: 32-true\n")
    with pytest.raises(Stop):
        run_bench(cfg)
    assert capsys.readouterr().err == ""
