"""`scenemtl bench` runs every measurement on a tiny config (figures are not asserted)."""

import pytest

from scenemtl.commands.bench import run_bench
from scenemtl.errors import UserError
from tests.engine.conftest import tiny_config


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
    assert "% of peak" in text and "end-to-end training" in text and "predicted" in text


def test_bench_rejects_unknown_keys(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("model:\n  learning_rate: 0.1\n")
    with pytest.raises(UserError, match="learning_rate"):
        run_bench(cfg)
