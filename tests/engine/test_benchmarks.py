"""The multi-task benchmark protocol end to end: MTAN-layout data through the CLI, the step
schedule, and the last-epochs averaging."""

from __future__ import annotations

import math

import pytest

from scenemtl.cli import main
from scenemtl.engine.averaging import LastEpochsAverage, average_last_epochs
from scenemtl.engine.schedules import StepFactor
from scenemtl.errors import UserError
from tests.data.mtan_trees import write_mtan_tree
from tests.helpers import read_metrics, tiny_config


def run_cli(argv):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    return exc.value.code


def _mtan_config(tmp_path, root, **overrides):
    settings = {
        "trainer.max_epochs": 3,
        "trainer.callbacks": [
            {
                "class_path": "scenemtl.engine.averaging.LastEpochsAverage",
                "init_args": {"epochs": 2},
            }
        ],
        "model.lr_schedule": "step",
        "model.lr_milestones": [2],
        "model.lr_gamma": 0.5,
        "data.crop_size": None,
        "data.scale_min": 1.0,
        "data.scale_max": 1.0,
        "data.hflip": 0.0,
        "data.tasks": ["semseg", "depth"],
        "visualize.every_n_epochs": 0,
    }
    settings.update(overrides)
    return tiny_config(tmp_path, root, **settings)


def _epoch_values(rows, key):
    out = {}
    for row in rows:
        if row.get(key):
            out[int(row["epoch"])] = float(row[key])
    return out


@pytest.mark.slow
@pytest.mark.parametrize("dataset", ["cityscapes", "nyuv2"])
def test_fit_on_mtan_tree_logs_protocol_metrics_and_averages(tmp_path, dataset):
    root = write_mtan_tree(tmp_path / dataset, dataset)
    # NYUv2: all three tasks, normals read from the release's normal/*.npy
    cfg = _mtan_config(tmp_path, root, **({"data.tasks": None} if dataset == "nyuv2" else {}))
    assert run_cli(["fit", "--config", str(cfg)]) == 0
    run = tmp_path / "runs" / "tiny" / "version_0"
    rows = read_metrics(run)
    columns = set().union(*rows)
    for key in ("val/semseg", "val/semseg_pixacc", "val/depth_mae", "val/depth_absrel"):
        assert key in columns
    if dataset == "nyuv2":
        assert {"val/normals", "val/normals_median", "train/loss_normals"} <= columns
    assert not (root / "dataset.json").exists()
    # the step schedule: 1e-3 for epochs 0 and 1, halved from epoch 2
    lrs = _epoch_values(rows, "lr")
    assert lrs[0] == pytest.approx(1e-3) and lrs[1] == pytest.approx(1e-3)
    assert lrs[2] == pytest.approx(5e-4)
    # val_last2/* is the mean of the last two validations, and matches the csv post-processing
    for metric in ("semseg", "semseg_pixacc", "depth_mae", "depth_absrel"):
        per_epoch = _epoch_values(rows, f"val/{metric}")
        averaged = _epoch_values(rows, f"val_last2/{metric}")
        assert sorted(per_epoch) == [0, 1, 2]
        assert averaged[0] == pytest.approx(per_epoch[0])
        assert averaged[2] == pytest.approx((per_epoch[1] + per_epoch[2]) / 2, rel=1e-5)
        from_csv = average_last_epochs(run / "metrics.csv", epochs=2)
        assert from_csv[metric] == pytest.approx(averaged[2], rel=1e-5)
    # `test` on a root without a test split evaluates val, as the papers do
    best = run / "checkpoints" / "best.ckpt"
    assert run_cli(["test", "--config", str(cfg), "--ckpt_path", str(best)]) == 0
    test_rows = read_metrics(tmp_path / "runs" / "tiny" / "version_1")  # run.name is set
    assert any(r.get("test/semseg_pixacc") for r in test_rows)


# ---------------------------------------------------------------------------- units


def test_step_factor():
    f = StepFactor([100], 0.5)
    assert [f(e) for e in (0, 99, 100, 199)] == [1.0, 1.0, 0.5, 0.5]
    g = StepFactor([3, 1], 0.1)
    assert g(0) == 1.0 and g(1) == pytest.approx(0.1) and g(3) == pytest.approx(0.01)


def test_bad_schedule_options_are_one_line(tmp_path):
    from scenemtl.engine.module import MultiTaskModule

    for kwargs, message in (
        ({"lr_schedule": "cyclic"}, "lr_schedule"),
        ({"lr_gamma": 0.0}, "lr_gamma"),
        ({"lr_milestones": [0]}, "lr_milestones"),
    ):
        with pytest.raises(UserError, match=message):
            MultiTaskModule(**kwargs)


def test_average_last_epochs_from_csv(tmp_path):
    path = tmp_path / "metrics.csv"
    path.write_text(
        "epoch,step,val/semseg,val/depth_mae,val/loss,train/loss\n"
        "0,1,10,0.5,9,\n"
        "0,1,,,,3\n"
        "1,2,20,0.4,9,\n"
        "2,3,30,nan,9,\n"
        "2,3,33,,,\n"  # a repeated (resumed) epoch: the last value counts
        "3,4,40,0.2,9,\n"
    )
    out = average_last_epochs(path, epochs=3)
    assert out["semseg"] == pytest.approx((20 + 33 + 40) / 3)
    assert out["depth_mae"] == pytest.approx((0.4 + 0.2) / 2)  # NaN epochs do not count
    assert "loss" not in out
    assert average_last_epochs(path, epochs=100)["semseg"] == pytest.approx((10 + 20 + 33 + 40) / 4)
    with pytest.raises(UserError, match="not found"):
        average_last_epochs(tmp_path / "none.csv")
    with pytest.raises(UserError, match="integer"):
        average_last_epochs(path, epochs=0)


def test_callback_state_survives_a_checkpoint():
    cb = LastEpochsAverage(epochs=2)
    cb.history = [{"semseg": 1.0}, {"semseg": 3.0, "depth": math.nan}]
    other = LastEpochsAverage(epochs=2)
    other.load_state_dict(cb.state_dict())
    assert other.averages()["semseg"] == 2.0
    assert math.isnan(other.averages()["depth"])
    with pytest.raises(UserError):
        LastEpochsAverage(epochs=0)


def test_runs_table_with_last_epochs(tmp_path, capsys):
    run = tmp_path / "runs" / "exp" / "version_0"
    run.mkdir(parents=True)
    (run / "metrics.csv").write_text(
        "epoch,step,train/loss,val/semseg,val/semseg_pixacc,val/depth,val/depth_mae,"
        "val/depth_absrel,val/grader\n"
        "0,1,2.0,,,,,,\n"
        "0,1,,50,80,30,0.02,0.5,20\n"
        "1,2,,60,90,20,0.01,0.3,40\n"
        "2,3,,70,92,24,0.0125,0.25,46\n"
    )
    (run / "config.yaml").write_text("trainer:\n  max_epochs: 3\n")
    assert run_cli(["runs", str(tmp_path / "runs"), "--last-epochs", "2", "--format", "csv"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    header, row = lines[0].split(","), lines[1].split(",")
    values = dict(zip(header, row, strict=True))
    assert values["semseg"] == "65.00" and values["grader"] == "43.00"
    assert values["semseg_pixacc"] == "91.00"
    assert values["depth_mae"] == "0.01125" and values["depth_absrel"] == "0.275"
    assert values["best epoch"] == ""
    # without the option: the best validation, as before
    assert run_cli(["runs", str(tmp_path / "runs"), "--format", "csv"]) == 0
    plain = capsys.readouterr().out.strip().splitlines()
    assert "semseg_pixacc" not in plain[0] and ",70.00," in plain[1]


def test_delta_m_sign_convention():
    from scenemtl.metrics import delta_m

    directions = {"semseg": True, "semseg_pixacc": True, "depth_mae": False, "depth_absrel": False}
    base = {"semseg": 70.0, "semseg_pixacc": 90.0, "depth_mae": 0.02, "depth_absrel": 0.4}
    assert delta_m(base, base, directions) == 0.0
    worse = {"semseg": 63.0, "semseg_pixacc": 90.0, "depth_mae": 0.022, "depth_absrel": 0.4}
    # semseg -10% and depth_mae +10%: two losses of 10% -> -20 / 4 = -5 (positive = gain;
    # the Nash-MTL/FAMO tables print +5 for this)
    assert delta_m(worse, base, directions) == pytest.approx(-5.0)
    with pytest.raises(UserError, match="missing"):
        delta_m({"semseg": 1.0}, base, directions)
    with pytest.raises(UserError, match="divide"):
        delta_m(base, {**base, "semseg": 0.0}, directions)
