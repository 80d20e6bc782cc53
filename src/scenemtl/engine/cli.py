"""LightningCLI wiring: ``scenemtl fit|validate|test|predict --config CFG``.

Every run lives in ``<run.root>/<run.name>/<version>/`` with config.yaml, metrics.csv,
TensorBoard events and checkpoints/{best,last}.ckpt. ``--ckpt_path last`` resumes the
newest run of that name that has a last.ckpt, in its own directory; a checkpoint path
inside a run directory also logs into that run.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import warnings
from pathlib import Path
from typing import Any

from jsonargparse import Namespace
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.loggers import TensorBoardLogger

from scenemtl.data.datamodule import SceneDataModule
from scenemtl.engine.callbacks import RunRecordCallback, VisualizationCallback
from scenemtl.engine.loggers import AppendingCSVLogger
from scenemtl.engine.module import MultiTaskModule
from scenemtl.engine.submission_callback import SubmissionCallback
from scenemtl.errors import UserError

_VERSION = re.compile(r"^version_(\d+)$")
_VERSION_ENV = "SCENEMTL_RUN_VERSION"


def _versions(run_dir: Path) -> list[tuple[int, Path]]:
    if not run_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in run_dir.iterdir() if (m := _VERSION.match(p.name))]
    return sorted(found)


def resolve_run(
    root: Path, name: str, ckpt_path: str | None, reuse_checkpoint_run: bool = True
) -> tuple[str, str | None]:
    """The version folder to log into, and the checkpoint path to load (resolved).

    * no checkpoint: a new ``version_N``;
    * ``last``: the newest version of ``name`` that holds checkpoints/last.ckpt;
    * a file inside ``root/name/version_N/checkpoints``: that version, unless
      ``reuse_checkpoint_run`` is False (then a new version).
    """
    run_dir = root / name
    versions = _versions(run_dir)
    if ckpt_path == "last":
        for _, path in reversed(versions):
            last = path / "checkpoints" / "last.ckpt"
            if last.is_file():
                return path.name, str(last)
        raise UserError(f"--ckpt_path last: no {run_dir}/version_*/checkpoints/last.ckpt to resume")
    if ckpt_path is not None:
        ckpt = Path(ckpt_path)
        if not ckpt.is_file():
            raise UserError(f"--ckpt_path {ckpt_path}: file not found")
        parent = ckpt.resolve().parent
        in_run = parent.name == "checkpoints" and _VERSION.match(parent.parent.name)
        if reuse_checkpoint_run and in_run and parent.parent.parent == run_dir.resolve():
            return parent.parent.name, str(ckpt)
    next_version = versions[-1][0] + 1 if versions else 0
    return f"version_{next_version}", ckpt_path


class FitConfigCallback(SaveConfigCallback):
    """Saves config.yaml for `fit` only: evaluating a run's checkpoint must not replace
    the configuration the run was trained with."""

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if stage == "fit":
            super().setup(trainer, pl_module, stage)


class SceneCLI(LightningCLI):
    """LightningCLI with scenemtl's run-directory layout and checkpoints."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument("--run.root", type=str, default="runs", help="folder of all runs")
        parser.add_argument(
            "--run.name",
            type=str | None,
            default=None,
            help="run name (default: the config file's stem)",
        )
        parser.add_argument(
            "--run.checkpoint_every_n_steps",
            type=int,
            default=0,
            help="also refresh last.ckpt every N optimizer steps (0: at epoch ends only)",
        )
        parser.add_lightning_class_args(VisualizationCallback, "visualize")
        parser.add_lightning_class_args(SubmissionCallback, "submission")

    # Evaluation-time switches: the command line decides them, not the checkpoint.
    EVALUATION_HPARAMS = ("tta_scales", "tta_flip")

    def _parse_ckpt_path(self) -> None:
        """As LightningCLI (the checkpoint's hyperparameters define the network), except
        that evaluation-time switches given for this command are kept."""
        sub = self.config.get("subcommand")
        keep = {}
        if sub:
            model_cfg = self.config[sub].get("model")
            keep = {k: model_cfg.get(k) for k in self.EVALUATION_HPARAMS if model_cfg}
        super()._parse_ckpt_path()
        for key, value in keep.items():
            self.config[sub]["model"][key] = value

    def _run_config(self) -> Namespace:
        return self.config[self.subcommand] if self.subcommand else self.config

    def instantiate_trainer(self, **kwargs: Any) -> Any:
        cfg = self._run_config()
        run = cfg.run
        name = run.name
        if name is None:
            configs = cfg.get("config") or []
            name = Path(str(configs[-1])).stem if configs else "default"
            if self.subcommand == "validate":
                name = f"{name}-validate"
        root = Path(run.root)
        ckpt = cfg.get("ckpt_path") if self.subcommand else None
        # val/ rows in a training run's trace would change its best-grader row
        version, ckpt = resolve_run(
            root, name, ckpt, reuse_checkpoint_run=self.subcommand != "validate"
        )
        # DDP workers re-run this command line; they must log into rank 0's version even
        # if rank 0 already created its directory.
        if os.environ.get("LOCAL_RANK", "0") != "0" and _VERSION_ENV in os.environ:
            version = os.environ[_VERSION_ENV]
        else:
            os.environ[_VERSION_ENV] = version
        if self.subcommand:
            self.config_init[self.subcommand]["ckpt_path"] = ckpt
        loggers = [
            TensorBoardLogger(root, name=name, version=version, default_hp_metric=False),
            # flushed often so that a killed run keeps its trace up to the crash
            AppendingCSVLogger(root, name=name, version=version, flush_logs_every_n_steps=10),
        ]
        ckpt_dir = root / name / version / "checkpoints"
        every = run.checkpoint_every_n_steps
        if every < 0:
            raise UserError(f"run.checkpoint_every_n_steps must be >= 0, got {every}")
        configured = self._get(self.config_init, "trainer", default={}).get("callbacks")
        callbacks = list(configured or [])
        callbacks += [
            ModelCheckpoint(
                dirpath=ckpt_dir,
                filename="best",
                monitor="val/grader",
                mode="max",
                save_top_k=1,
                auto_insert_metric_name=False,
                enable_version_counter=False,
            ),
            ModelCheckpoint(
                dirpath=ckpt_dir,
                filename="last",
                save_top_k=1,
                every_n_train_steps=every or None,
                enable_version_counter=False,
            ),
        ]
        if self.subcommand == "fit":
            callbacks.append(RunRecordCallback(root / name / version))
        kwargs["logger"] = loggers
        kwargs["callbacks"] = callbacks
        return super().instantiate_trainer(**kwargs)


def _user_error_in_chain(exc: BaseException) -> UserError | None:
    """jsonargparse wraps errors raised while instantiating classes; find ours."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, UserError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def run_lightning_cli(argv: list[str]) -> int:
    """Run one LightningCLI subcommand; returns the exit status."""
    # Library deprecation chatter that users can do nothing about.
    warnings.filterwarnings("ignore", message=".*args parameter is intended to run from within")
    warnings.filterwarnings("ignore", message=".*skip_none parameter was deprecated")
    # AppendingCSVLogger keeps earlier rows, so Lightning's warning does not apply
    warnings.filterwarnings(
        "ignore", message=".*Previous log files in this directory will be deleted"
    )
    warnings.filterwarnings("ignore", message=".*isinstance\\(treespec, LeafSpec\\)")
    _hide_advertising()
    try:
        _make_cli(argv)
    except (ValueError, TypeError) as e:
        found = _user_error_in_chain(e)
        if found is None:
            raise
        raise found from None
    return 0


class _NoTips(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).startswith("💡 Tip")


def _hide_advertising() -> None:
    """Lightning advertises a cloud logger at every run; our users log locally."""
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _NoTips) for f in logger.filters):
            logger.addFilter(_NoTips())


def _make_cli(argv: list[str]) -> SceneCLI:
    return SceneCLI(
        MultiTaskModule,
        SceneDataModule,
        args=argv,
        save_config_callback=FitConfigCallback,
        save_config_kwargs={"overwrite": True},
        parser_kwargs={"prog": "scenemtl", "default_env": False},
        seed_everything_default=0,
        trainer_defaults={"logger": False},
        auto_configure_optimizers=False,
    )


if __name__ == "__main__":  # pragma: no cover
    sys.exit(run_lightning_cli(sys.argv[1:]))
