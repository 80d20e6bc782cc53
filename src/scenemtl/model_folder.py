"""The model folder: a trained network as files any machine can load, without its run.

::

    <folder>/model.safetensors    the network's weights and the tasks' state (depth
                                  normalization), names as in the module's state_dict
    <folder>/config.json          what rebuilds the network: architecture and net
                                  options, each task's spec (class table, depth encoding)
                                  and options, the input normalization
    <folder>/classes.json         the class table of each task with classes
    <folder>/README.md            the model card (Hugging Face metadata, usage, metrics)
    <folder>/training_config.yaml the config that trained it (when its run folder has one)

Nothing in the folder is pickled: the weights are safetensors, everything else JSON,
YAML or Markdown, so loading a folder from the Hub runs no code of its author.
``config.json`` holds none of the training options (optimizer, schedule, balancing):
loading builds the module with their defaults, which predictions never use.

A folder is written into a staging folder beside the target and renamed into place, so
it is complete or absent; saving onto an existing model folder replaces it the same way.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from scenemtl import __version__
from scenemtl.errors import UserError

if TYPE_CHECKING:
    from scenemtl.api import Model
    from scenemtl.engine.module import MultiTaskModule
    from scenemtl.tasks.base import Task

FORMAT = "scenemtl-model"
FORMAT_VERSION = 1
WEIGHTS = "model.safetensors"
CONFIG = "config.json"
CLASSES = "classes.json"
CARD = "README.md"
TRAINING_CONFIG = "training_config.yaml"
MAX_TEXT_BYTES = 16 * 2**20
"""Largest config.json, classes.json, README.md or training_config.yaml read (a folder
from the Hub is someone else's input)."""
_STATE_PREFIXES = ("net.", "tasks.")
"""What of the module's state a folder keeps: the network and the tasks' state. The loss
balancer's and the metrics' state are training's."""


# --------------------------------------------------------------------------------------
# config.json


def model_config(module: MultiTaskModule) -> dict[str, Any]:
    """The JSON-able description that rebuilds ``module``'s network and tasks."""
    from scenemtl.data.transforms import IMAGENET_MEAN, IMAGENET_STD
    from scenemtl.tasks import FLAT_TASK_OPTIONS, options_of_learned_tasks

    cfg = module.net.cfg
    net = dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) else dict(cfg)
    net["weights"] = None  # the folder's weights replace any initialization
    specs = module.current_task_specs()
    hp = module.hparams
    options, _ = options_of_learned_tasks(
        specs,
        hp.get("provided_tasks"),
        hp.get("task_options"),
        {k: hp.get(k) for k in FLAT_TASK_OPTIONS},
    )
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "scenemtl_version": __version__,
        "net": net,
        "tasks": {
            name: {"spec": spec, "options": options.get(name, {})} for name, spec in specs.items()
        },
        "input": {
            "color": "RGB",
            "dtype": "uint8",
            "layout": "[H,W,3]",
            "scale": 255.0,
            "mean": list(IMAGENET_MEAN),
            "std": list(IMAGENET_STD),
        },
        "weights": WEIGHTS,
    }


def class_tables(tasks: Iterable[Task]) -> dict[str, list[dict[str, Any]]]:
    """Task name -> class table, for the tasks that have one (:meth:`Task.class_table`)."""
    return {task.name: table for task in tasks if (table := task.class_table()) is not None}


def _read_text(path: Path, folder: Path) -> str:
    try:
        size = path.stat().st_size
        if size > MAX_TEXT_BYTES:
            raise UserError(f"{folder}: {path.name} is {size} bytes, above {MAX_TEXT_BYTES}")
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise UserError(f"{folder}: {path.name} is not UTF-8 text") from None


def _read_json(path: Path, folder: Path) -> Any:
    try:
        return json.loads(_read_text(path, folder))
    except ValueError as e:
        raise UserError(f"{folder}: {path.name} is not valid JSON ({e})") from None


def _check_config(config: Any, folder: Path) -> dict[str, Any]:
    """The parts of a config.json that are not checked by the module's own constructor."""
    from scenemtl.data.transforms import IMAGENET_MEAN, IMAGENET_STD

    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise UserError(f"{folder}: {CONFIG} is not a scenemtl model config (format {FORMAT!r})")
    version = config.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise UserError(f"{folder}: {CONFIG} has no valid format_version")
    if version > FORMAT_VERSION:
        raise UserError(
            f"{folder}: written by a newer scenemtl ({config.get('scenemtl_version')}, "
            f"format {version}); this one reads format {FORMAT_VERSION}: upgrade scenemtl"
        )
    tasks = config.get("tasks")
    if not (
        isinstance(tasks, dict)
        and tasks
        and all(
            isinstance(t, dict)
            and isinstance(t.get("spec"), dict)
            and isinstance(t.get("options", {}), dict)
            for t in tasks.values()
        )
    ):
        raise UserError(f"{folder}: {CONFIG} 'tasks' is not {{name: {{spec, options}}}}")
    if not isinstance(config.get("net"), dict):
        raise UserError(f"{folder}: {CONFIG} 'net' is not a mapping of model.net options")
    norm = config.get("input")
    expected = {"scale": 255.0, "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}
    if not isinstance(norm, dict) or not all(_close(norm.get(k), v) for k, v in expected.items()):
        raise UserError(
            f"{folder}: {CONFIG} 'input' normalization is not scenemtl's (RGB / 255, "
            f"ImageNet mean {list(IMAGENET_MEAN)} and std {list(IMAGENET_STD)})"
        )
    return config


def _close(value: Any, expected: float | list[float]) -> bool:
    if isinstance(expected, list):
        return (
            isinstance(value, list)
            and len(value) == len(expected)
            and all(_close(v, e) for v, e in zip(value, expected, strict=True))
        )
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isclose(value, expected, rel_tol=1e-9)
    )


# --------------------------------------------------------------------------------------
# reading


def read_model_folder(folder: Path) -> tuple[MultiTaskModule, dict[str, str]]:
    """The module of a model folder (eval mode, on the CPU) and its text files.

    Returns:
        the module and ``{"README.md": card, "training_config.yaml": config}`` for those
        present (carried along when the model is saved again).

    Raises:
        UserError: one line naming the folder and what is wrong.
    """
    from scenemtl.engine.checkpoint import hparams_problem
    from scenemtl.engine.module import MultiTaskModule

    folder = Path(folder)
    if not (folder / CONFIG).is_file():
        raise UserError(f"{folder}: not a scenemtl model folder (no {CONFIG})")
    config = _check_config(_read_json(folder / CONFIG, folder), folder)
    specs = {name: t["spec"] for name, t in config["tasks"].items()}
    options = {name: t.get("options", {}) for name, t in config["tasks"].items()}
    hparams = {"net": config["net"], "task_specs": specs, "task_options": options}
    problem = hparams_problem(hparams, MultiTaskModule)
    if problem:
        raise UserError(f"{folder}: {CONFIG} does not fit this scenemtl ({problem})")
    net = dict(config["net"])
    net["weights"] = None
    try:
        module = MultiTaskModule(net=net, task_specs=specs, task_options=options)
    except (TypeError, ValueError, UserError) as e:
        raise UserError(f"{folder}: {CONFIG} does not fit this scenemtl ({e})") from None
    if (folder / CLASSES).is_file():
        tables = _read_json(folder / CLASSES, folder)
        if tables != class_tables(module.task_list):
            raise UserError(f"{folder}: {CLASSES} differs from the class tables of {CONFIG}")
    _load_weights(module, folder / WEIGHTS, folder)
    extras = {
        name: _read_text(folder / name, folder)
        for name in (CARD, TRAINING_CONFIG)
        if (folder / name).is_file()
    }
    return module.eval(), extras


def _load_weights(module: MultiTaskModule, path: Path, folder: Path) -> None:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not path.is_file():
        raise UserError(f"{folder}: no {path.name}")
    try:
        state = load_file(path, device="cpu")
    except (SafetensorError, OSError, ValueError) as e:
        raise UserError(f"{folder}: {path.name} is not a safetensors file ({e})") from None
    expected = {k for k in module.state_dict() if k.startswith(_STATE_PREFIXES)}
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        what = f"missing {missing[0]}" if missing else f"unexpected {unexpected[0]}"
        n = len(missing) + len(unexpected)
        raise UserError(
            f"{folder}: {path.name} does not fit the network of {CONFIG} ({what}"
            + (f" and {n - 1} more" if n > 1 else "")
            + ")"
        )
    try:
        module.load_state_dict(state, strict=False)
    except RuntimeError as e:
        first = str(e).strip().splitlines()
        raise UserError(
            f"{folder}: {path.name} does not fit the network of {CONFIG} "
            f"({first[-1].strip() if first else 'shape mismatch'})"
        ) from None
    module.stats_adopted.fill_(True)  # the tasks' statistics came with the weights


# --------------------------------------------------------------------------------------
# writing


def weights_of(module: MultiTaskModule) -> dict[str, Any]:
    """The tensors a folder keeps: network and task state, CPU, contiguous, unshared
    (safetensors refuses tensors that share memory)."""
    return {
        k: v.detach().to("cpu").contiguous().clone()
        for k, v in module.state_dict().items()
        if k.startswith(_STATE_PREFIXES)
    }


def _is_model_folder(path: Path) -> bool:
    try:
        config = json.loads((path / CONFIG).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and config.get("format") == FORMAT


def write_model_folder(model: Model, target: Path) -> Path:
    """Write ``model`` as a model folder at ``target`` (see the module docstring).

    Raises:
        UserError: ``target`` is a file, or a non-empty folder that is not a model folder.
    """
    from safetensors.torch import save_file

    from scenemtl.data.staging import remove_dead_partials, staging
    from scenemtl.modelcard import model_card, training_config

    target = Path(target)
    if target.exists() and not target.is_dir():
        raise UserError(f"{target} exists and is not a folder")
    if target.is_dir() and any(target.iterdir()) and not _is_model_folder(target):
        raise UserError(f"{target} is a folder with other files; save into a new folder")
    config = model_config(model.module)
    extras = dict(getattr(model, "extras", {}) or {})
    if TRAINING_CONFIG not in extras and (text := training_config(model.source)):
        extras[TRAINING_CONFIG] = text
    card = extras.get(CARD) or model_card(
        model, config, has_training_config=TRAINING_CONFIG in extras
    )
    remove_dead_partials(target)
    with staging(target) as staged:
        save_file(weights_of(model.module), str(staged / WEIGHTS), metadata={"format": "pt"})
        _write_text(staged / CONFIG, json.dumps(config, indent=2) + "\n")
        tables = class_tables(model.module.task_list)
        _write_text(staged / CLASSES, json.dumps(tables, indent=2) + "\n")
        _write_text(staged / CARD, card)
        if TRAINING_CONFIG in extras:
            _write_text(staged / TRAINING_CONFIG, extras[TRAINING_CONFIG])
        replaced = staged.parent / "replaced"
        if target.exists():
            os.rename(target, replaced)  # removed with the staging folder
        try:
            os.rename(staged, target)
        except BaseException:
            if replaced.exists():
                os.rename(replaced, target)
            raise
    return target


def _write_text(path: Path, text: str) -> None:
    path.write_text(text, encoding="utf-8")


__all__ = [
    "CARD",
    "CLASSES",
    "CONFIG",
    "FORMAT",
    "FORMAT_VERSION",
    "TRAINING_CONFIG",
    "WEIGHTS",
    "class_tables",
    "model_config",
    "read_model_folder",
    "weights_of",
    "write_model_folder",
]
