"""Loggers a user adds with ``--trainer.logger`` (MLflow, W&B) beside the run folder's."""

from __future__ import annotations

import numpy as np
import pytest

from scenemtl.engine.loggers import log_image
from tests.helpers import run_scenemtl, tiny_config

pytestmark = pytest.mark.slow


def _assert_run_folder_complete(runs) -> None:
    (run,) = (runs / "tiny").iterdir()
    assert (run / "metrics.csv").is_file()
    assert any(p.name.startswith("events.out.tfevents") for p in run.iterdir())
    assert (run / "checkpoints" / "best.ckpt").is_file()


def test_mlflow_gets_parameters_metrics_and_prediction_images(tmp_path, tiny_root):
    mlflow = pytest.importorskip("mlflow")
    config = tiny_config(tmp_path, tiny_root, **{"trainer.max_epochs": 1})
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    done = run_scenemtl(
        "fit",
        "--config",
        str(config),
        "--trainer.logger",
        "lightning.pytorch.loggers.MLFlowLogger",
        "--trainer.logger.tracking_uri",
        store,
        "--trainer.logger.experiment_name",
        "tiny",
        "--trainer.logger.artifact_location",
        str(tmp_path / "artifacts"),
    )
    assert done.returncode == 0, done.stderr[-2000:]
    _assert_run_folder_complete(tmp_path / "runs")
    client = mlflow.MlflowClient(store)
    (run,) = client.search_runs([client.get_experiment_by_name("tiny").experiment_id])
    assert run.data.params["loss_weighting"] == "fixed"
    assert {"val/semseg", "val/depth", "train/loss"} <= set(run.data.metrics)
    images = [a.path for a in client.list_artifacts(run.info.run_id, "images")]
    assert any(p.startswith("images/val_predictions") and p.endswith(".png") for p in images)


def test_wandb_offline_gets_parameters_metrics_and_prediction_images(
    tmp_path, tiny_root, monkeypatch
):
    pytest.importorskip("wandb")
    config = tiny_config(tmp_path, tiny_root, **{"trainer.max_epochs": 1})
    monkeypatch.setenv("WANDB_SILENT", "true")
    done = run_scenemtl(
        "fit",
        "--config",
        str(config),
        "--trainer.logger",
        "lightning.pytorch.loggers.WandbLogger",
        "--trainer.logger.offline",
        "true",
        "--trainer.logger.save_dir",
        str(tmp_path / "wb"),
        "--trainer.logger.project",
        "tiny",
    )
    assert done.returncode == 0, done.stderr[-2000:]
    _assert_run_folder_complete(tmp_path / "runs")
    (offline,) = (tmp_path / "wb" / "wandb").glob("offline-run-*")
    assert list((offline / "files" / "media" / "images" / "val").glob("predictions_*.png"))
    # W&B 0.2x+ writes its run log from a Go service and ships no Python reader for it;
    # the keys are protobuf strings, stored as they are
    (log,) = offline.glob("run-*.wandb")
    content = log.read_bytes()
    for key in (b"val/semseg", b"train/loss", b"loss_weighting"):
        assert key in content, key


def test_something_that_is_not_a_logger_is_refused_in_one_line(tmp_path, tiny_root):
    config = tiny_config(tmp_path, tiny_root, **{"trainer.max_epochs": 1})
    done = run_scenemtl(
        "fit", "--config", str(config), "--trainer.logger", "scenemtl.data.SceneDataModule"
    )
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().count("\n") == 0, done.stderr
    assert "trainer.logger" in done.stderr


class _Images:
    def __init__(self) -> None:
        self.calls = []

    def log_image(self, *args, **kwargs):  # MLflow client's signature
        self.calls.append((args, kwargs))


def test_log_image_serves_each_kind_of_logger_by_what_it_offers():
    image = np.zeros((4, 6, 3), np.uint8)

    class MlflowLike:
        run_id = "r1"
        experiment = _Images()

    class WandbLike:
        experiment = object()

        def __init__(self) -> None:
            self.calls = []

        def log_image(self, key, images, step):
            self.calls.append((key, len(images), step))

    class MetricsOnly:
        experiment = object()

    mlflow_like, wandb_like = MlflowLike(), WandbLike()
    assert log_image(mlflow_like, "val/predictions", image, 3)
    ((args, kwargs),) = mlflow_like.experiment.calls
    assert args[0] == "r1" and kwargs == {"key": "val_predictions", "step": 3}
    assert log_image(wandb_like, "val/predictions", image, 3)
    assert wandb_like.calls == [("val/predictions", 1, 3)]
    assert not log_image(MetricsOnly(), "val/predictions", image, 3)
