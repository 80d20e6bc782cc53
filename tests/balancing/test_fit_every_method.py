"""Every balancing method trains through the CLI (a few steps on the tiny dataset) and logs
its per-task weights and the gradient-conflict monitor."""

from __future__ import annotations

import pytest

from scenemtl.balancing import BALANCING_METHODS, method_level
from scenemtl.cli import main
from tests.helpers import read_metrics, tiny_config

FEW_STEPS = {
    "trainer.max_epochs": 1,
    "trainer.limit_train_batches": 0.25,  # 1 of 4 batches (an int 1 reads as 100%)
    "trainer.limit_val_batches": 1,
    "model.grad_monitor_every": 1,
    "visualize.ids": [],
}


def fit(tmp_path, tiny_root, **overrides) -> list[dict[str, str]]:
    cfg = tiny_config(tmp_path, tiny_root, **{**FEW_STEPS, **overrides})
    with pytest.raises(SystemExit) as exc:
        main(["fit", "--config", str(cfg)])
    assert exc.value.code == 0
    return read_metrics(tmp_path / "runs" / "tiny" / "version_0")


def logged(rows: list[dict[str, str]], key: str) -> list[float]:
    return [float(r[key]) for r in rows if r.get(key)]


@pytest.mark.slow
@pytest.mark.parametrize("method", BALANCING_METHODS)
def test_every_method_trains_and_logs_weights_and_conflict(method, tmp_path, tiny_root):
    rows = fit(tmp_path, tiny_root, **{"model.loss_weighting": method})
    cos = logged(rows, "train/grad_cos_semseg_depth")
    assert len(cos) == 1 and -1.0 <= cos[0] <= 1.0
    assert all(r > 0 for r in logged(rows, "train/grad_norm_ratio_semseg_depth"))
    if method != "graddrop" and method != "config":  # not linear combinations of the rows
        assert len(logged(rows, "train/weight_semseg")) == 1
    assert logged(rows, "val/grader")
    if method_level(method) == "gradient":
        assert logged(rows, "train/loss")


@pytest.mark.slow
@pytest.mark.parametrize(
    "architecture, method",
    [("branched", "mgda"), ("distillation", "upgrad"), ("task_specific", "pcgrad")],
)
def test_representation_gradients_on_other_architectures(architecture, method, tmp_path, tiny_root):
    overrides = {
        "model.loss_weighting": method,
        "model.net.architecture": architecture,
        "model.weighting_options": {
            "wrt": "parameters" if architecture == "task_specific" else "representation"
        },
    }
    rows = fit(tmp_path, tiny_root, **overrides)
    assert logged(rows, "val/grader")


@pytest.mark.slow
def test_gradient_method_under_bf16_mixed(tmp_path, tiny_root):
    rows = fit(
        tmp_path, tiny_root, **{"model.loss_weighting": "upgrad", "trainer.precision": "bf16-mixed"}
    )
    assert logged(rows, "val/grader")


def test_unknown_method_is_one_line_before_training(tmp_path, tiny_root, capsys):
    cfg = tiny_config(tmp_path, tiny_root, **{"model.loss_weighting": "gradnorm"})
    with pytest.raises(SystemExit) as exc:
        main(["fit", "--config", str(cfg)])
    assert exc.value.code != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "gradnorm" in err[0] and "pcgrad" in err[0], err
    assert not (tmp_path / "runs" / "tiny" / "version_0" / "checkpoints").exists()
