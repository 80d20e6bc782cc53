"""LightningCLI wiring: ``scenemtl fit|validate|test|predict --config CFG``.

Every run lives in ``<run.root>/<run.name>/<version>/`` with config.yaml, metrics.csv,
TensorBoard events and checkpoints/{best,last}.ckpt. ``fit --ckpt_path last`` resumes the
newest run of that name that has a last.ckpt, in its own directory, and so does ``fit``
with a checkpoint path inside a run of that name. ``validate`` and ``test`` always log
into a new version folder (default name ``<config stem>-validate`` / ``-test``): evaluating
a checkpoint never rewrites the run that produced it.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import math
import os
import re
import shutil
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.loggers import Logger, TensorBoardLogger

from scenemtl.commands.submission_callback import SubmissionCallback
from scenemtl.data.datamodule import MAX_BATCH_PIXELS, SceneDataModule, open_info
from scenemtl.engine.callbacks import (
    Bf16CostCallback,
    DivergenceGuard,
    EvaluationRecordCallback,
    RunRecordCallback,
    VisualizationCallback,
)
from scenemtl.engine.checkpoint import checkpoint_global_step, read_checkpoint
from scenemtl.engine.interrupts import interrupts_raise
from scenemtl.engine.loggers import AppendingCSVLogger
from scenemtl.engine.module import MultiTaskModule
from scenemtl.errors import UsageError, UserError, one_line, raised_in
from scenemtl.models.config import FLAT_OPTIONS, ModelConfig
from scenemtl.models.registry import net_fields
from scenemtl.reporting.run_dir import RunDir, RunFamily
from scenemtl.tasks import dataset_task_specs

_VERSION_ENV = "SCENEMTL_RUN_VERSION"


def resolve_run(
    root: Path, name: str, ckpt_path: str | None, reuse_checkpoint_run: bool = True
) -> tuple[RunDir, str | None]:
    """The run folder to log into, and the checkpoint path to load (resolved).

    * no checkpoint: a newly reserved ``version_N``;
    * ``last``: the newest version of ``name`` that holds checkpoints/last.ckpt;
    * a file inside ``root/name/version_N/checkpoints``: that version (resuming a fit),
      unless ``reuse_checkpoint_run`` is False (evaluation: then a new version).
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
    """Saves config.yaml for `fit` only: the run table reads a run's configuration from
    it, and an evaluation's folder is described by its run.json."""

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if stage == "fit":
            super().setup(trainer, pl_module, stage)


@dataclass
class _Outcome:
    """What one command did, for :func:`run_lightning_cli` to act on after it fails."""

    reserved: RunDir | None = None
    """The version folder this process created (removed again if it stays empty)."""
    created: list[Path] = dataclasses.field(default_factory=list)
    """Folders above it that this process created (idem)."""
    interrupted: bool = False
    """The command was interrupted (Ctrl-C)."""


NET_INIT_ONLY = ("weights",)
"""``model.net`` fields that only choose the initialization: every other field changes
the network a checkpoint's weights belong to."""


class SceneCLI(LightningCLI):
    """LightningCLI with scenemtl's run folders, task wiring and checkpoints.

    Lightning hooks used, and why:

    * ``add_arguments_to_parser``: the ``run.*`` keys, and links that hand the data's
      task specs (``data.tasks`` over the dataset's class table) to ``model.task_specs``
      and the names of the tasks it provides to ``model.provided_tasks``.
    * ``parse_arguments``: checks ``--ckpt_path`` with a weights-only load before
      LightningCLI reads it (its own load would print a traceback), and remembers the
      evaluation switches (TTA) and the network options given in the config files or on
      the command line.
    * ``before_instantiate_classes``: puts those switches back over the checkpoint's
      hyperparameters (the command line decides how to evaluate; the checkpoint decides
      the network), refuses network options that contradict the checkpoint, trainer
      options Lightning would refuse with a traceback, a dataset without statistics and a
      training batch in which BatchNorm sees one value per channel; then it reserves the
      run folder and resolves ``--ckpt_path last``.
    * ``instantiate_trainer``: loggers and checkpoint callbacks for that folder, and the
      loggers the user added (``--trainer.logger``).
    """

    EVALUATION_HPARAMS = ("tta_scales", "tta_flip")

    def __init__(self, *args: Any, outcome: _Outcome | None = None, **kwargs: Any) -> None:
        self.outcome = outcome if outcome is not None else _Outcome()
        super().__init__(*args, **kwargs)

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
        parser.link_arguments(
            "data", "model.provided_tasks", compute_fn=_provided_tasks, apply_on="instantiate"
        )

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        super().parse_arguments(parser, args)
        sub = self.config.get("subcommand")
        self._evaluation_switches: dict[str, Any] = {}
        self._net_asked: dict[str, Any] = {}
        self._net_explicit: set[str] = set()
        self._ckpt_net: Any = None
        _check_seed((self.config[sub] if sub else self.config).get("seed_everything"))
        if not sub:
            return
        ckpt = self.config[sub].get("ckpt_path")
        if ckpt and ckpt != "last":
            if not Path(ckpt).is_file():
                raise UserError(f"--ckpt_path {ckpt}: file not found")
            # one line for anything that is not a checkpoint
            self._ckpt_net = read_checkpoint(ckpt, MultiTaskModule)["hyper_parameters"].get("net")
        model_cfg = self.config[sub].get("model")
        if model_cfg:
            init = model_cfg
            self._evaluation_switches = {k: init.get(k) for k in self.EVALUATION_HPARAMS}
            # LightningCLI is about to replace the model options by the checkpoint's:
            # keep what was asked for, to compare with the checkpoint's network
            self._net_asked = _net_fields(model_cfg.get("net"))
            self._net_explicit = _explicit_net_keys(self.config[sub].get("config"), args)

    def before_instantiate_classes(self) -> None:
        sub = self.subcommand
        cfg = self._run_config()
        if sub:
            model_cfg = cfg.get("model")
            if model_cfg is not None:
                for key, value in self._evaluation_switches.items():
                    model_cfg[key] = value
            _check_trainer_options(cfg.get("trainer"))
        run = cfg.run
        configs = cfg.get("config") or []
        # the name the checkpoint's run has (`last` looks there), and the name to log into
        source_name = run.name or (Path(str(configs[-1])).stem if configs else "default")
        name = source_name
        if run.name is None and sub in ("validate", "test"):
            name = f"{source_name}-{sub}"
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
                ckpt = str(RunFamily(root, source_name).latest_resumable().last_ckpt)
        else:
            # everything that can be refused is refused before a folder is reserved
            if ckpt == "last":
                # `last` builds the configured network: all of it must match the
                # checkpoint's; a named checkpoint brings its own network (LightningCLI
                # reads its hyperparameters), so only explicit options must agree
                ckpt = str(RunFamily(root, source_name).latest_resumable().last_ckpt)
                _check_network(ckpt, self._net_asked)
            elif ckpt is not None:
                explicit = {
                    k: v for k, v in self._net_asked.items() if _is_explicit(k, self._net_explicit)
                }
                _check_network(ckpt, explicit, self._ckpt_net)
            _check_data(cfg.get("data"), cfg.get("model"), training=sub == "fit")
            # fit resumes in the checkpoint's run; evaluation never writes into it
            existing = {r.path.resolve() for r in RunFamily(root, name).versions()}
            created = [p for p in (root, root / name) if not p.exists()]
            self.run_dir, ckpt = resolve_run(root, name, ckpt, reuse_checkpoint_run=sub == "fit")
            if self.run_dir.path.resolve() not in existing:
                self.outcome.reserved = self.run_dir
                self.outcome.created = created
            os.environ[_VERSION_ENV] = self.run_dir.version
        if sub:
            cfg["ckpt_path"] = ckpt

    def _run_config(self) -> Any:
        return self.config[self.subcommand] if self.subcommand else self.config

    def instantiate_trainer(self, **kwargs: Any) -> Any:
        cfg = self._run_config()
        run_dir: RunDir = self.run_dir
        root, name, version = run_dir.path.parent.parent, run_dir.name, run_dir.version
        ckpt = cfg.get("ckpt_path")
        resumes_here = (
            self.subcommand == "fit"
            and ckpt is not None
            and Path(ckpt).resolve().is_relative_to(run_dir.path.resolve())
        )
        loggers = [
            TensorBoardLogger(root, name=name, version=version, default_hp_metric=False),
            # flushed often so that a killed run keeps its trace up to the crash; a resumed
            # fit drops the rows its checkpoint had not seen (it logs them again)
            AppendingCSVLogger(
                root,
                name=name,
                version=version,
                flush_logs_every_n_steps=10,
                resume_step=checkpoint_global_step(ckpt) if resumes_here else None,
            ),
        ]
        loggers += _user_loggers(self._get(self.config_init, "trainer", default={}).get("logger"))
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
            callbacks.append(Bf16CostCallback())
            callbacks.append(DivergenceGuard())
        elif self.subcommand in ("validate", "test"):
            callbacks.append(
                EvaluationRecordCallback(run_dir, cfg.get("ckpt_path"), self.subcommand)
            )
        kwargs["logger"] = loggers
        kwargs["callbacks"] = callbacks
        try:
            return super().instantiate_trainer(**kwargs)
        except MisconfigurationException as e:
            raise UserError(f"trainer options: {one_line(e)}") from None
        except (ValueError, TypeError) as e:
            # Trainer's own checks of its arguments (an unknown strategy or precision
            # name, a value of the wrong type): the user's options, not a bug
            if not raised_in(e, ("lightning", "lightning_fabric")):
                raise
            raise UserError(f"trainer options: {one_line(e)}") from None


def _user_loggers(configured: Any) -> list[Logger]:
    """The loggers a user gave with ``--trainer.logger`` (one or a list; W&B, MLflow, ...):
    they log beside the run folder's TensorBoard and CSV loggers, which a run always has
    (the run folder stays complete). ``true``/``false`` add none."""
    if configured is None or isinstance(configured, bool):
        return []
    given = list(configured) if isinstance(configured, (list, tuple)) else [configured]
    for logger in given:
        if not isinstance(logger, Logger):
            raise UserError(
                f"trainer.logger: {type(logger).__name__} is not a Lightning logger "
                "(give a class such as lightning.pytorch.loggers.MLFlowLogger)"
            )
    return given


def _task_specs(datamodule: SceneDataModule) -> dict[str, Any]:
    return datamodule.task_specs


def _provided_tasks(datamodule: SceneDataModule) -> list[str]:
    return list(dataset_task_specs(datamodule.info))


# --------------------------------------------------------------------------------------
# checks of what Lightning or torch would refuse with a traceback


def _plain_net(net: Any) -> dict[str, Any]:
    """``model.net`` (a Namespace, dict, ModelConfig or None) as a plain mapping."""
    if net is None:
        return {}
    if dataclasses.is_dataclass(net):
        return dataclasses.asdict(net)  # type: ignore[arg-type]
    if hasattr(net, "as_dict"):
        return net.as_dict()
    return dict(net)


def _net_fields(net: Any) -> dict[str, Any]:
    """``model.net`` as comparable plain values (:func:`net_fields`: flat keys moved
    into their sections, which are completed with the architecture's and encoder's
    defaults and keyed ``options.<name>`` / ``encoder_options.<name>``)."""
    values = {k: v for k, v in _plain_net(net).items() if k not in NET_INIT_ONLY}
    return {k: v for k, v in net_fields(values).items() if k not in NET_INIT_ONLY}


def _is_explicit(key: str, explicit: set[str]) -> bool:
    """Whether the comparable field ``key`` was set by one of the ``explicit`` keys
    (a field, a whole section, or a flat key of :data:`FLAT_OPTIONS`)."""
    flat = {f"{sec}.{option}" for k, (sec, option, _) in FLAT_OPTIONS.items() if k in explicit}
    return key in explicit or key.split(".")[0] in explicit or key in flat


def _mapping_at(data: Any, *keys: str) -> dict[str, Any]:
    for key in keys:
        data = data.get(key) if isinstance(data, dict) else None
    return data if isinstance(data, dict) else {}


def _explicit_net_keys(config_files: Any, argv: Any) -> set[str]:
    """The ``model.net`` fields set in the config files or on the command line."""
    keys: set[str] = set()
    for path in config_files or []:
        try:
            data = yaml.safe_load(Path(str(path)).read_text(encoding="utf-8"))
        except (OSError, ValueError, yaml.YAMLError):
            continue
        keys |= set(_mapping_at(data, "model", "net"))
    args = [str(a) for a in (argv or [])]
    for i, arg in enumerate(args):
        option, _, inline = arg.partition("=")
        value = inline if "=" in arg else (args[i + 1] if i + 1 < len(args) else "")
        if option.startswith("--model.net."):
            keys.add(option.removeprefix("--model.net.").split(".")[0])
        elif option in ("--model.net", "--model"):
            try:
                data = yaml.safe_load(value)
            except yaml.YAMLError:
                continue
            keys |= set(_mapping_at({"net": data} if option == "--model.net" else data, "net"))
    return keys


def _check_network(ckpt: str, asked: dict[str, Any], stored: Any = None) -> None:
    """Refuse network options that contradict the network the checkpoint holds
    (``stored``: its ``model.net`` hyperparameters, if already read)."""
    if not asked:
        return
    if stored is None:
        stored = read_checkpoint(ckpt, MultiTaskModule)["hyper_parameters"].get("net")
    if not isinstance(stored, dict):
        return  # a checkpoint without its network description: the weights decide
    try:
        held = _net_fields(stored)
    except UserError:
        return  # building the checkpoint's network will say what is wrong with it
    differ = [k for k, v in asked.items() if k in held and held[k] != v]
    if differ:
        theirs = ", ".join(f"model.net.{k}={held[k]!r}" for k in differ)
        ours = ", ".join(f"model.net.{k}={asked[k]!r}" for k in differ)
        raise UserError(
            f"--ckpt_path {ckpt} holds a network with {theirs}, but the configuration asks "
            f"for {ours}; drop the option(s) or choose a matching checkpoint"
        )


MAX_SEED = 2**32 - 1
"""Largest ``seed_everything`` (numpy's seed range; Lightning raises ValueError above)."""


def _check_seed(seed: Any) -> None:
    """One line for a seed Lightning's ``seed_everything`` would refuse with a traceback
    (it is set right after parsing, before the classes are built)."""
    if seed is None or isinstance(seed, bool):
        return
    if not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise UserError(
            f"seed_everything must be an integer in 0..{MAX_SEED} (or true: a random seed), "
            f"got {seed!r}"
        )


MAX_EPOCHS = 1_000_000
"""Largest ``trainer.max_epochs`` (-1 is "no limit"): the schedules size themselves from
the number of steps it implies."""
MAX_STEPS = 1_000_000_000
"""Largest ``trainer.max_steps`` (-1 is "no limit")."""


def _check_trainer_options(trainer: Any) -> None:
    """One line for trainer options Lightning would refuse with a traceback."""
    if trainer is None:
        return
    max_epochs = trainer.get("max_epochs")
    if max_epochs is not None and not -1 <= max_epochs <= MAX_EPOCHS:
        raise UserError(
            f"trainer.max_epochs must be in 0..{MAX_EPOCHS} (or -1: no limit), got {max_epochs}"
        )
    max_steps = trainer.get("max_steps")
    if max_steps is not None and not -1 <= max_steps <= MAX_STEPS:
        raise UserError(
            f"trainer.max_steps must be in 0..{MAX_STEPS} (or -1: no limit), got {max_steps}"
        )
    accelerator = trainer.get("accelerator")
    if isinstance(accelerator, str) and accelerator.lower() in ("gpu", "cuda"):
        import torch

        if not torch.cuda.is_available():
            raise UserError(
                f"trainer.accelerator {accelerator}: this machine has no usable GPU "
                "(torch.cuda.is_available() is False); use --trainer.accelerator cpu"
            )


def _check_data(data: Any, model: Any, training: bool) -> None:
    """What the DataModule and the first training step would refuse, refused before a run
    folder is made: a dataset without statistics, and (``training``) a batch in which
    BatchNorm sees one value per channel: B x H x W = 1 at the network's coarsest feature
    map (1/32, or 1/16 or 1/8 with dilation)."""
    if data is None:
        return
    info = (
        open_info(data.root, data.get("format", "auto"), data.get("labels"))
        if data.get("root") is not None
        else None
    )
    if info is not None and not info.stats:
        raise UserError(
            f"{data.root}/dataset.json has no statistics: run "
            f"`scenemtl data stats --root {data.root}` first"
        )
    if info is not None:
        _check_batch_pixels(
            "data.val_batch_size", data.get("val_batch_size", 1), info.image_size, "images"
        )
    if not training:
        return
    net = _plain_net(model.get("net") if model is not None else None)
    stride = ModelConfig.from_dict(net).output_stride
    image_hw = tuple(info.image_size) if info is not None else tuple(data.synth_size)
    crop = data.get("crop_size")
    h, w = (crop, crop) if isinstance(crop, int) else tuple(crop or image_hw)
    batch = data.batch_size
    _check_batch_pixels("data.batch_size", batch, (h, w), "crops")
    why = f"data.batch_size {batch}"
    if info is not None and "train" in info.splits:
        n = info.split_size("train")
        if data.get("train_limit") is not None:
            n = min(n, data.train_limit)
        if 0 < n < batch:
            batch, why = n, f"a training split of {n} image(s)"
    if batch * math.ceil(h / stride) * math.ceil(w / stride) == 1:
        raise UserError(
            f"{why} with {h}x{w} training images leaves BatchNorm one value per channel at "
            f"1/{stride} resolution, where it cannot train; use data.batch_size >= 2 or "
            f"data.crop_size above {stride} pixels"
        )


def _check_batch_pixels(key: str, batch: Any, hw: Any, what: str) -> None:
    """Refuse a batch of more than :data:`MAX_BATCH_PIXELS` pixels before it is made."""
    try:
        h, w = (int(v) for v in hw)
        pixels = int(batch) * h * w
    except (TypeError, ValueError, OverflowError):
        return  # the DataModule names what is wrong with these values
    if pixels > MAX_BATCH_PIXELS:
        raise UserError(
            f"{key} {batch} with {what} of {h}x{w} makes batches of {pixels} pixels, more "
            f"than the maximum {MAX_BATCH_PIXELS}; use a smaller batch or data.crop_size"
        )


def _usage_line(message: str, command: str) -> str:
    """jsonargparse's multi-line parse error as one line: the key, and the value given."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    if not lines:
        return f"cannot parse the command line; see scenemtl {command} --help"
    head = re.sub(r'^Parser key "([^"]+)":?', r"\1:", lines[0])
    given = next((ln for ln in lines if ln.startswith("Given value:")), None)
    subtypes = next((ln for ln in lines if ln.startswith("Subtypes:")), None)
    if given is not None:
        detail = "invalid value " + given.removeprefix("Given value:").strip()
        if subtypes is not None:
            detail += " (expected " + subtypes.removeprefix("Subtypes:").strip() + ")"
    elif len(lines) > 1 and head.endswith(":"):
        detail = lines[1].lstrip("- ")
    else:
        detail = ""
    text = f"{head} {detail}".strip()
    text = re.sub(r"<class '(?:[\w]+\.)*(\w+)'>", r"\1", text)
    return f"{text}; see scenemtl {command} --help".replace("  ", " ")


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
    """Run one LightningCLI subcommand; returns the exit status.

    Raises:
        UserError: bad input, as one line (also for the errors of Lightning and torch
            that stand for bad options, see the checks above).
        KeyboardInterrupt: Ctrl-C (Lightning's own exit with status 1 is turned back
            into it by :func:`~scenemtl.engine.interrupts.interrupts_raise`; the CLI
            makes it status 130).
    """
    # Library deprecation chatter that users can do nothing about.
    warnings.filterwarnings("ignore", message=".*args parameter is intended to run from within")
    warnings.filterwarnings("ignore", message=".*skip_none parameter was deprecated")
    # AppendingCSVLogger keeps earlier rows, so Lightning's warning does not apply
    warnings.filterwarnings(
        "ignore", message=".*Previous log files in this directory will be deleted"
    )
    warnings.filterwarnings("ignore", message=".*isinstance\\(treespec, LeafSpec\\)")
    # the module's hook serves bare DataLoaders (predict); the DataModule's wins in fit
    warnings.filterwarnings("ignore", message=".*overridden `on_after_batch_transfer` in both")
    _hide_advertising()
    outcome = _Outcome()
    done = False
    try:
        with interrupts_raise():
            _make_cli(argv, outcome)
        done = True
    except KeyboardInterrupt:
        outcome.interrupted = True
        raise
    except (ValueError, TypeError) as e:
        found = _user_error_in_chain(e)
        if found is not None:
            raise found from None
        if str(e).startswith("Expected more than 1 value per channel when training"):
            raise UserError(
                f"BatchNorm cannot train on one value per channel ({one_line(e)}); use a "
                "larger data.batch_size or data.crop_size"
            ) from None
        raise
    except MisconfigurationException as e:
        raise UserError(f"trainer options: {one_line(e)}") from None
    except argparse.ArgumentError as e:
        command = argv[0] if argv and not argv[0].startswith("-") else ""
        raise UsageError(_usage_line(str(e), command)) from None
    finally:
        if not done and outcome.reserved is not None:
            if outcome.interrupted and _unfinished(outcome.reserved, argv):
                # nothing in it to keep: see _unfinished
                shutil.rmtree(outcome.reserved.path, ignore_errors=True)
            # a run refused before it wrote anything leaves no trace (rmdir: only if empty)
            for folder in [outcome.reserved.path, *reversed(outcome.created)]:
                with contextlib.suppress(OSError):
                    folder.rmdir()
    return 0


def _unfinished(run: RunDir, argv: list[str]) -> bool:
    """Whether the folder this process reserved for ``run`` holds nothing worth keeping
    after Ctrl-C: an evaluation (``validate``/``test``) writes its run.json only when it
    is complete, so an interrupted one is a half-filled metrics.csv; a ``fit`` interrupted
    before training started has no run.json yet (config.yaml and an empty event file). A
    fit that trained keeps its folder: run.json says ``interrupted`` and last.ckpt
    resumes it."""
    return (argv[:1] != ["fit"]) or not run.record.is_file()


class _NoTips(logging.Filter):
    NOISE = ("💡 Tip", "Seed set to")

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).startswith(self.NOISE)


def _hide_advertising() -> None:
    """Lightning advertises a cloud logger at every run (our users log locally) and
    announces the seed (config.yaml has it): neither belongs above an error line."""
    for name in (
        "lightning.pytorch.utilities.rank_zero",
        "lightning.fabric.utilities.rank_zero",
        "lightning.fabric.utilities.seed",
    ):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _NoTips) for f in logger.filters):
            logger.addFilter(_NoTips())


def _make_cli(argv: list[str], outcome: _Outcome | None = None) -> SceneCLI:
    return SceneCLI(
        MultiTaskModule,
        SceneDataModule,
        args=argv,
        save_config_callback=FitConfigCallback,
        save_config_kwargs={"overwrite": True},
        # parse errors raise (and become one line) instead of printing the whole usage
        parser_kwargs={"prog": "scenemtl", "default_env": False, "exit_on_error": False},
        seed_everything_default=0,
        trainer_defaults={"logger": False},
        auto_configure_optimizers=False,
        outcome=outcome,
    )


if __name__ == "__main__":  # pragma: no cover
    sys.exit(run_lightning_cli(sys.argv[1:]))
