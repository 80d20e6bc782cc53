"""LightningCLI wiring: ``scenemtl fit|validate|test|predict --config CFG``.

Every run lives in ``<run.root>/<run.name>/<version>/`` with config.yaml, metrics.csv,
TensorBoard events and checkpoints/{best,last}.ckpt. ``--ckpt_path last`` resumes the
newest run of that name that has a last.ckpt, in its own directory; a checkpoint path
inside a run directory also logs into that run.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from pathlib import Path
from typing import Any

from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.loggers import TensorBoardLogger

from scenemtl.commands.submission_callback import SubmissionCallback
from scenemtl.data.datamodule import SceneDataModule
from scenemtl.engine.callbacks import RunRecordCallback, VisualizationCallback
from scenemtl.engine.loggers import AppendingCSVLogger
from scenemtl.engine.module import MultiTaskModule, read_checkpoint
from scenemtl.engine.run_dir import RunDir, RunFamily
from scenemtl.errors import UserError

_VERSION_ENV = "SCENEMTL_RUN_VERSION"


def resolve_run(
    root: Path, name: str, ckpt_path: str | None, reuse_checkpoint_run: bool = True
) -> tuple[RunDir, str | None]:
    """The run folder to log into, and the checkpoint path to load (resolved).

    * no checkpoint: a newly reserved ``version_N``;
    * ``last``: the newest version of ``name`` that holds checkpoints/last.ckpt;
    * a file inside ``root/name/version_N/checkpoints``: that version, unless
      ``reuse_checkpoint_run`` is False (then a new version).
    """
    family = RunFamily(root, name)
    if ckpt_path == "last":
        run = family.latest_resumable()
        return run, str(run.last_ckpt)
    if ckpt_path is not None:
        if not Path(ckpt_path).is_file():
            raise UserError(f"--ckpt_path {ckpt_path}: file not found")
        owner = RunDir.of_checkpoint(ckpt_path)
        same_family = owner is not None and owner.path.parent == family.path.resolve()
        if reuse_checkpoint_run and same_family:
            return owner, ckpt_path
    return family.reserve(), ckpt_path


class FitConfigCallback(SaveConfigCallback):
    """Saves config.yaml for `fit` only: evaluating a run's checkpoint must not replace
    the configuration the run was trained with."""

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if stage == "fit":
            super().setup(trainer, pl_module, stage)


class SceneCLI(LightningCLI):
    """LightningCLI with scenemtl's run folders, task wiring and checkpoints.

    Lightning hooks used, and why:

    * ``add_arguments_to_parser``: the ``run.*`` keys, and a link that hands the data's
      task specs (``data.tasks`` over the dataset's class table) to ``model.task_specs``.
    * ``parse_arguments``: checks ``--ckpt_path`` with a weights-only load before
      LightningCLI reads it (its own load would print a traceback), and remembers the
      evaluation switches (TTA) given on the command line.
    * ``before_instantiate_classes``: puts those switches back over the checkpoint's
      hyperparameters (the command line decides how to evaluate; the checkpoint decides
      the network), and reserves the run folder and resolves ``--ckpt_path last``.
    * ``instantiate_trainer``: loggers and checkpoint callbacks for that folder.
    """

    EVALUATION_HPARAMS = ("tta_scales", "tta_flip")

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
        parser.add_argument(
            "--run.monitor",
            type=str | None,
            default=None,
            help="metric that picks best.ckpt, e.g. val/semseg (default: val/grader when "
            "the run learns semseg and depth, else the task's headline metric)",
        )
        parser.add_argument(
            "--run.monitor_mode",
            type=str | None,
            default=None,
            help="max or min for --run.monitor (default: the metric's direction)",
        )
        parser.add_lightning_class_args(VisualizationCallback, "visualize")
        parser.add_lightning_class_args(SubmissionCallback, "submission")
        parser.link_arguments(
            "data", "model.task_specs", compute_fn=_task_specs, apply_on="instantiate"
        )

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        super().parse_arguments(parser, args)
        sub = self.config.get("subcommand")
        self._evaluation_switches: dict[str, Any] = {}
        if not sub:
            return
        ckpt = self.config[sub].get("ckpt_path")
        if ckpt and ckpt != "last":
            if not Path(ckpt).is_file():
                raise UserError(f"--ckpt_path {ckpt}: file not found")
            read_checkpoint(ckpt)  # one line for anything that is not a checkpoint
        model_cfg = self.config[sub].get("model")
        if model_cfg:
            init = model_cfg
            self._evaluation_switches = {k: init.get(k) for k in self.EVALUATION_HPARAMS}

    def before_instantiate_classes(self) -> None:
        sub = self.subcommand
        cfg = self._run_config()
        if sub:
            model_cfg = cfg.get("model")
            if model_cfg is not None:
                for key, value in self._evaluation_switches.items():
                    model_cfg[key] = value
        run = cfg.run
        name = run.name
        if name is None:
            configs = cfg.get("config") or []
            name = Path(str(configs[-1])).stem if configs else "default"
            if sub == "validate":
                name = f"{name}-validate"
        if run.checkpoint_every_n_steps < 0:
            raise UserError(
                f"run.checkpoint_every_n_steps must be >= 0, got {run.checkpoint_every_n_steps}"
            )
        if run.monitor_mode not in (None, "max", "min"):
            raise UserError(f"run.monitor_mode must be max or min, got {run.monitor_mode!r}")
        root = Path(run.root)
        ckpt = cfg.get("ckpt_path") if sub else None
        # DDP workers re-run this command line; they must log into rank 0's version.
        if os.environ.get("LOCAL_RANK", "0") != "0" and _VERSION_ENV in os.environ:
            self.run_dir = RunDir(root / name / os.environ[_VERSION_ENV])
            if ckpt == "last":
                ckpt = str(self.run_dir.last_ckpt)
        else:
            # val/ rows in a training run's trace would change its best row
            self.run_dir, ckpt = resolve_run(
                root, name, ckpt, reuse_checkpoint_run=sub != "validate"
            )
            os.environ[_VERSION_ENV] = self.run_dir.version
        if sub:
            cfg["ckpt_path"] = ckpt

    def _run_config(self) -> Any:
        return self.config[self.subcommand] if self.subcommand else self.config

    def instantiate_trainer(self, **kwargs: Any) -> Any:
        cfg = self._run_config()
        run_dir: RunDir = self.run_dir
        root, name, version = run_dir.path.parent.parent, run_dir.name, run_dir.version
        loggers = [
            TensorBoardLogger(root, name=name, version=version, default_hp_metric=False),
            # flushed often so that a killed run keeps its trace up to the crash
            AppendingCSVLogger(root, name=name, version=version, flush_logs_every_n_steps=10),
        ]
        monitor, mode = self.model.monitor()
        if cfg.run.monitor is not None:
            monitor, mode = cfg.run.monitor, cfg.run.monitor_mode or "max"
        elif cfg.run.monitor_mode is not None:
            mode = cfg.run.monitor_mode
        configured = self._get(self.config_init, "trainer", default={}).get("callbacks")
        callbacks = list(configured or [])
        callbacks += [
            ModelCheckpoint(
                dirpath=run_dir.checkpoints,
                filename=RunDir.BEST,
                monitor=monitor,
                mode=mode,
                save_top_k=1,
                auto_insert_metric_name=False,
                enable_version_counter=False,
            ),
            ModelCheckpoint(
                dirpath=run_dir.checkpoints,
                filename=RunDir.LAST,
                save_top_k=1,
                every_n_train_steps=cfg.run.checkpoint_every_n_steps or None,
                enable_version_counter=False,
            ),
        ]
        if self.subcommand == "fit":
            callbacks.append(RunRecordCallback(run_dir, monitor=monitor, mode=mode))
        kwargs["logger"] = loggers
        kwargs["callbacks"] = callbacks
        return super().instantiate_trainer(**kwargs)


def _task_specs(datamodule: SceneDataModule) -> dict[str, Any]:
    return datamodule.task_specs


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
