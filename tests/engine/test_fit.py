"""End-to-end runs of `scenemtl fit` on a tiny dataset."""

from __future__ import annotations

import json

import pytest
import torch

from scenemtl.cli import main
from scenemtl.engine import precision
from scenemtl.engine.schedules import PolyFactor
from tests.helpers import read_metrics, tiny_config


def run_cli(argv, capsys=None):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    return exc.value.code


def test_poly_factor():
    f = PolyFactor(total=10, power=0.9, floor=1e-3)
    assert f(0) == 1.0
    assert f(5) == pytest.approx(0.5**0.9)
    assert f(10) == 1e-3 and f(20) == 1e-3
    assert f(9) > f(10)


@pytest.mark.slow
def test_fit_leaves_a_complete_run_directory(tmp_path, tiny_root):
    cfg = tiny_config(tmp_path, tiny_root)
    assert run_cli(["fit", "--config", str(cfg)]) == 0
    run_dir = tmp_path / "runs" / "tiny" / "version_0"
    assert (run_dir / "config.yaml").is_file()
    assert (run_dir / "checkpoints" / "best.ckpt").is_file()
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert list(run_dir.glob("events.out.tfevents.*"))
    rows = read_metrics(run_dir)
    val = [r for r in rows if r.get("val/grader")]
    assert len(val) == 2  # one validation per epoch
    for r in val:
        assert 0 <= float(r["val/semseg"]) <= 100
        assert float(r["val/depth"]) >= 0
        assert float(r["val/grader"]) == pytest.approx(
            max(float(r["val/semseg"]) - 50, 0) + max(50 - float(r["val/depth"]), 0), abs=1e-4
        )
    lrs = [float(r["lr"]) for r in rows if r.get("lr")]
    assert lrs[0] == pytest.approx(1e-3) and lrs == sorted(lrs, reverse=True)
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu")
    assert ckpt["global_step"] == 8  # 2 epochs x 4 batches
    # the depth normalization travelled with the weights
    assert bool(ckpt["state_dict"]["stats_adopted"])
    # `test` with the run's checkpoint logs into a new version of the run's name: the
    # training run stays byte for byte as it was
    best = run_dir / "checkpoints" / "best.ckpt"
    files = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    assert run_cli(["test", "--config", str(cfg), "--ckpt_path", str(best)]) == 0
    assert {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()} == files
    tested = read_metrics(tmp_path / "runs" / "tiny" / "version_1")
    assert [r for r in tested if r.get("test/grader")] and not [
        r for r in tested if r.get("val/grader")
    ]
    # a second run gets its own version (one step is enough to show it)
    limits = ["--trainer.limit_train_batches", "1", "--trainer.limit_val_batches", "1"]
    assert run_cli(["fit", "--config", str(cfg), "--trainer.max_epochs", "1", *limits]) == 0
    assert (tmp_path / "runs" / "tiny" / "version_2" / "checkpoints" / "last.ckpt").is_file()


@pytest.mark.parametrize(
    "override, message",
    [
        (["--model.lr", "-1"], "model.lr must be a positive number"),
        (["--model.optimizer", "rmsprop"], "model.optimizer 'rmsprop' unknown"),
        (["--model.net.architecture", "unet"], "unet"),
        (["--data.root", "/nonexistent/ds"], "does not exist"),
        (["--data.crop_size", "[512, 512]"], "crop_size"),
        (["--model.loss_weights", "{normals: 1.0}"], "unknown task"),
    ],
)
def test_invalid_config_fails_before_training(tmp_path, tiny_root, capsys, override, message):
    cfg = tiny_config(tmp_path, tiny_root)
    code = run_cli(["fit", "--config", str(cfg), *override])
    err = capsys.readouterr().err
    assert code != 0
    assert message in err
    assert "Traceback" not in err
    assert not (tmp_path / "runs" / "tiny" / "version_0" / "checkpoints").exists()


@pytest.mark.slow
def test_non_finite_loss_stops_with_step_and_keeps_best(tmp_path, tiny_root, capsys, monkeypatch):
    from scenemtl.losses import MultiTaskLoss

    original = MultiTaskLoss.forward
    calls = {"train": 0}

    def poisoned(self, outputs, batch):
        out = original(self, outputs, batch)
        if torch.is_grad_enabled():
            calls["train"] += 1
            if calls["train"] == 6:  # step 5, in the second epoch
                out.total = out.total * float("nan")
        return out

    monkeypatch.setattr(MultiTaskLoss, "forward", poisoned)
    cfg = tiny_config(tmp_path, tiny_root)
    code = run_cli(["fit", "--config", str(cfg)])
    err = capsys.readouterr().err
    assert code == 1
    assert "non-finite training loss at step 5" in err and "Traceback" not in err
    best = tmp_path / "runs" / "tiny" / "version_0" / "checkpoints" / "best.ckpt"
    ckpt = torch.load(best, weights_only=True, map_location="cpu")
    assert ckpt["global_step"] == 4  # from the end of epoch 0, never overwritten
    assert all(
        torch.isfinite(v).all() for v in ckpt["state_dict"].values() if v.is_floating_point()
    )
    run_dir = best.parents[1]
    record = json.loads((run_dir / "run.json").read_text())
    assert record["status"] == "diverged" and "non-finite training loss" in record["error"]
    # a resume that finishes: the crash becomes history, not the run's current error
    monkeypatch.setattr(MultiTaskLoss, "forward", original)
    assert run_cli(["fit", "--config", str(cfg), "--ckpt_path", "last"]) == 0
    record = json.loads((run_dir / "run.json").read_text())
    assert record["status"] == "finished" and "error" not in record
    assert len(record["previous_errors"]) == 1
    assert "non-finite training loss at step 5" in record["previous_errors"][0]


@pytest.fixture(scope="module")
def one_epoch_run(tiny_fit):
    """(config, run folder) of the suite's one-epoch tiny fit (tests/conftest.py), read by
    the tests below or evaluated into new versions of its name (never version_0)."""
    return tiny_fit


@pytest.mark.slow
def test_from_checkpoint_restores_network_and_depth_statistics(one_epoch_run, tmp_path, tiny_root):
    import json

    from scenemtl.engine.module import MultiTaskModule
    from scenemtl.errors import UserError

    best = one_epoch_run[1] / "checkpoints" / "best.ckpt"
    module = MultiTaskModule.from_checkpoint(best)
    stats = json.loads((tiny_root / "dataset.json").read_text())["stats"]
    depth = module.tasks["depth"]
    assert float(depth.space.mean) == pytest.approx(stats["depth_m"]["mean"], rel=1e-6)
    assert not module.training
    preds = module.predict_step({"image": torch.zeros(1, 3, 32, 48)})
    assert preds["semseg"].shape == (1, 32, 48) and (preds["depth"] > 0).all()
    broken = tmp_path / "broken.ckpt"
    broken.write_bytes(b"PK\x03\x04 not a checkpoint")
    with pytest.raises(UserError, match="not a scenemtl checkpoint"):
        MultiTaskModule.from_checkpoint(broken)


def test_tta_hparams_drive_evaluation_outputs():
    from scenemtl.engine.module import MultiTaskModule
    from scenemtl.errors import UserError
    from scenemtl.tta import tta_outputs

    net = {"architecture": "joint", "encoder": "resnet18", "channels": 16, "skip_channels": 8}
    torch.manual_seed(0)
    plain = MultiTaskModule(net=net).eval()
    tta = MultiTaskModule(net=net, tta_scales=[0.75, 1.0], tta_flip=True).eval()
    tta.load_state_dict(plain.state_dict())
    image = torch.randn(1, 3, 40, 56)
    with torch.no_grad():
        assert torch.equal(plain.eval_outputs(image)["depth"][-1], plain(image)["depth"][-1])
        merged = tta_outputs(tta, image, tta.task_list, [0.75, 1.0], True)
        got = tta.eval_outputs(image)
        assert torch.allclose(got["depth"][0], merged["depth"])
        assert not torch.allclose(got["depth"][0], plain(image)["depth"][-1])
        assert tta.predict_step({"image": image})["semseg"].shape == (1, 40, 56)
    with pytest.raises(UserError, match="TTA scale"):
        MultiTaskModule(net=net, tta_scales=[0.0])


@pytest.mark.slow
def test_validate_applies_tta_from_the_command_line_in_its_own_run(one_epoch_run):
    cfg, run_dir = one_epoch_run
    trace_before = (run_dir / "metrics.csv").read_bytes()
    versions_before = set(run_dir.parent.iterdir())  # other tests may evaluate it too
    best = str(run_dir / "checkpoints" / "best.ckpt")
    assert run_cli(["validate", "--config", str(cfg), "--ckpt_path", best]) == 0
    assert (
        run_cli(
            [
                "validate",
                "--config",
                str(cfg),
                "--ckpt_path",
                best,
                "--model.tta_scales",
                "[0.5, 1.0]",
                "--model.tta_flip",
                "true",
            ]
        )
        == 0
    )
    # an explicitly named run gets new versions: the training run's trace stays as it was
    new = set(run_dir.parent.iterdir()) - versions_before
    plain, tta = (read_metrics(v)[-1] for v in sorted(new, key=lambda v: int(v.name[8:])))
    assert plain["val/depth"] != tta["val/depth"]
    assert (run_dir / "metrics.csv").read_bytes() == trace_before  # training trace untouched


@pytest.mark.slow
def test_bf16_channels_last_and_clipping_train(tmp_path, tiny_root, monkeypatch, capsys):
    # a CPU that emulates bf16, as far as the cost probe knows: fit warns once, at start
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(precision, "measure_bf16_factor", lambda: 16.0)
    cfg = tiny_config(tmp_path, tiny_root, **{"trainer.max_epochs": 1})
    code = run_cli(
        [
            "fit",
            "--config",
            str(cfg),
            "--trainer.precision",
            "bf16-mixed",
            "--model.channels_last",
            "true",
            "--trainer.gradient_clip_val",
            "1.0",
        ]
    )
    assert code == 0
    warnings = [ln for ln in capsys.readouterr().err.splitlines() if "x slower than fp32" in ln]
    assert warnings == [f"scenemtl: warning: {precision.bf16_warning('bf16-mixed', 'cpu')}"]
    rows = read_metrics(tmp_path / "runs" / "tiny" / "version_0")
    val = [r for r in rows if r.get("val/grader")]
    assert val and all(float(r["val/depth"]) >= 0 for r in val)


@pytest.mark.slow
@pytest.mark.parametrize(
    "weighting, space, loss",
    [("uncertainty", "inverse", "silog"), ("dwa", "log", "l2")],
)
def test_loss_options_train_through_the_cli(tmp_path, tiny_root, weighting, space, loss):
    # three epochs (DWA follows the loss ratios from the third on) of 2 of the 4 batches
    cfg = tiny_config(
        tmp_path, tiny_root, **{"trainer.max_epochs": 3, "trainer.limit_train_batches": 0.5}
    )
    code = run_cli(
        [
            "fit",
            "--config",
            str(cfg),
            "--model.loss_weighting",
            weighting,
            "--model.depth_space",
            space,
            "--model.depth_loss",
            loss,
        ]
    )
    assert code == 0
    rows = [r for r in read_metrics(tmp_path / "runs" / "tiny" / "version_0") if r.get("lr")]
    first, last = rows[0], rows[-1]
    if weighting == "uncertainty":  # learned weights move from their start
        assert float(last["train/weight_depth"]) != float(first["train/weight_depth"])
    else:  # DWA keeps equal weights for two epochs, then follows the loss ratios
        assert {float(r["train/weight_depth"]) for r in rows if r["epoch"] in ("0", "1")} == {1.0}
        assert float(last["train/weight_depth"]) != 1.0
    ckpt = torch.load(
        tmp_path / "runs/tiny/version_0/checkpoints/last.ckpt",
        weights_only=True,
        map_location="cpu",
    )
    assert ckpt["hyper_parameters"]["depth_space"] == space


@pytest.mark.slow
def test_diverged_weights_stop_the_run_and_keep_last_ckpt_loadable(
    tmp_path, tiny_root, capsys, monkeypatch
):
    """A finite loss whose update overflows the weights (what `--model.lr 1e6` does):
    one line naming the step and the parameter, run.json "diverged", and last.ckpt
    still the last state with finite weights."""
    from scenemtl.engine.module import MultiTaskModule

    original = MultiTaskModule.optimizer_step

    def overflowing(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        if self.global_step == 5:  # the update of step 5 (0-based), in the second epoch
            with torch.no_grad():
                next(self.net.parameters()).fill_(float("inf"))
        return out

    monkeypatch.setattr(MultiTaskModule, "optimizer_step", overflowing)
    cfg = tiny_config(tmp_path, tiny_root)
    code = run_cli(["fit", "--config", str(cfg)])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err
    (line,) = [x for x in err.splitlines() if x.startswith("scenemtl: ")]
    assert "training diverged at step 5" in line and "non-finite weights" in line
    run_dir = tmp_path / "runs" / "tiny" / "version_0"
    record = json.loads((run_dir / "run.json").read_text())
    assert record["status"] == "diverged" and "step 5" in record["error"]
    last = run_dir / "checkpoints" / "last.ckpt"
    ckpt = torch.load(last, weights_only=True, map_location="cpu")
    assert ckpt["global_step"] == 4
    assert all(
        torch.isfinite(v).all() for v in ckpt["state_dict"].values() if v.is_floating_point()
    )
    module = MultiTaskModule.from_checkpoint(last, map_location="cpu")
    assert all(torch.isfinite(p).all() for p in module.parameters())


def test_conflict_monitor_leaves_out_only_the_pairs_with_a_zero_gradient():
    from scenemtl.balancing.conflict import gradient_conflict

    g = torch.tensor([[3.0, 4.0, 0.0], [0.0, 0.0, 0.0], [-3.0, 4.0, 0.0]], dtype=torch.float64)
    out = gradient_conflict(g @ g.T, ["semseg", "depth", "normals"])  # depth has weight 0
    assert set(out) == {"grad_cos_semseg_normals", "grad_norm_ratio_semseg_normals"}
    assert out["grad_cos_semseg_normals"] == pytest.approx((-9 + 16) / 25)
    assert out["grad_norm_ratio_semseg_normals"] == pytest.approx(1.0)
