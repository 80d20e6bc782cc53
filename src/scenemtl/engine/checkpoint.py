"""Reading scenemtl checkpoints: weights-only, hyperparameters type-checked, old layouts
migrated.

A checkpoint is data from a file: :func:`read_checkpoint` loads it without unpickling
anything and checks every hyperparameter :class:`~scenemtl.engine.module.MultiTaskModule`
takes against the type its signature states (:func:`hparams_problem`);
:func:`check_tasks` refuses a checkpoint of other tasks than the run's;
:func:`migrate_checkpoint` renames the state keys of checkpoints written before tasks
were data. Every command that loads a checkpoint goes through here.
"""

from __future__ import annotations

import functools
import os
import pickle
import types
import typing
from pathlib import Path
from typing import Any

import torch

from scenemtl.errors import UserError
from scenemtl.models.config import ModelConfig
from scenemtl.tasks import TaskSpecs, build_task, legacy_task_specs


def checkpoint_global_step(path: str | os.PathLike) -> int | None:
    """The optimizer steps a Lightning checkpoint had taken (``None`` if it does not say).

    Memory-mapped and weights-only: the tensors are not read.
    """
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except (OSError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError):
        return None
    step = ckpt.get("global_step") if isinstance(ckpt, dict) else None
    return step if isinstance(step, int) else None


def read_checkpoint(
    path: str | os.PathLike, module_class: type, map_location: str = "cpu"
) -> dict[str, Any]:
    """A scenemtl checkpoint's contents, loaded weights-only (nothing is unpickled), its
    hyper-parameters checked against ``module_class``'s constructor
    (:func:`hparams_problem`; the LightningModule passes itself: this module sits below it).

    Raises:
        UserError: missing file, or a file that is not a Lightning checkpoint of scenemtl
            (garbage, text, a zip, an empty or truncated file, a bare tensor).
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} not found")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except (
        OSError,
        RuntimeError,
        EOFError,
        ValueError,
        TypeError,
        KeyError,
        pickle.UnpicklingError,
    ) as e:
        raise UserError(f"{path}: not a scenemtl checkpoint ({type(e).__name__})") from None
    if (
        not isinstance(ckpt, dict)
        or not isinstance(ckpt.get("state_dict"), dict)
        or not isinstance(ckpt.get("hyper_parameters"), dict)
    ):
        raise UserError(f"{path}: not a scenemtl checkpoint (no state_dict and hyperparameters)")
    problem = hparams_problem(ckpt["hyper_parameters"], module_class)
    if problem:
        raise UserError(f"{path}: hyperparameters do not fit this scenemtl ({problem})")
    return ckpt


def hparams_problem(hparams: dict[Any, Any], module_class: type) -> str | None:
    """What is wrong with a checkpoint's ``hyper_parameters``, or None.

    Every key is a string; every key ``module_class`` (the LightningModule) takes holds a
    value of the type its signature states (``net``: a mapping of :class:`ModelConfig`
    fields of their types), checked recursively through lists, tuples and mappings. Keys
    the module does not take are left to its constructor (which refuses them); values
    typed ``Any`` are left to the code that reads them. Range checks stay with the
    constructor.
    """
    for key in hparams:
        if not isinstance(key, str):
            return f"key {key!r} is not a string"
    hints = _init_hints(module_class)
    for key, value in hparams.items():
        if key in hints and not _fits(value, hints[key]):
            return f"{key}: {_shown(value)} is not {_describe(hints[key])}"
    return None


@functools.cache
def _init_hints(module_class: type) -> dict[str, Any]:
    hints = typing.get_type_hints(module_class.__init__)
    hints.pop("return", None)
    return hints


@functools.cache
def _net_hints() -> dict[str, Any]:
    return typing.get_type_hints(ModelConfig)


def _fits(value: Any, hint: Any) -> bool:
    """Whether ``value`` (plain data from a weights-only load) has the type ``hint``."""
    if hint is Any:
        return True
    if hint is ModelConfig:
        fields = _net_hints()
        return isinstance(value, dict) and all(
            isinstance(k, str) and k in fields and _fits(v, fields[k]) for k, v in value.items()
        )
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, a) for a in args)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin is list:
        return isinstance(value, (list, tuple)) and all(_fits(v, args[0]) for v in value)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(_fits(v, args[0]) for v in value)
        return len(value) == len(args) and all(
            _fits(v, a) for v, a in zip(value, args, strict=True)
        )
    if origin is dict:
        return isinstance(value, dict) and all(
            _fits(k, args[0]) and _fits(v, args[1]) for k, v in value.items()
        )
    raise TypeError(f"hparams_problem: no check for the type {hint!r}")  # a bug of ours


def _describe(hint: Any) -> str:
    """``hint`` as the error line says it: ``a mapping of model.net options or None``."""
    if hint is ModelConfig:
        return "a mapping of model.net options (of their types)"
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(hint))
    if hint is type(None):
        return "None"
    if isinstance(hint, type):
        return hint.__name__
    return str(hint).replace("typing.", "")


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:57]}..."


# State keys of checkpoints written before tasks were data: the depth normalization was
# the module's own `depth_space` (and shared by the loss).
_LEGACY_STATE_KEYS = {
    "depth_space.mean": "tasks.depth.space.mean",
    "depth_space.std": "tasks.depth.space.std",
}
_LEGACY_DROPPED_PREFIXES = ("criterion.depth_space.",)


def migrate_checkpoint(checkpoint: dict[str, Any]) -> None:
    """Rename, in place, the state keys of checkpoints written before tasks were data."""
    state = checkpoint.get("state_dict")
    if not isinstance(state, dict):
        return
    for old, new in _LEGACY_STATE_KEYS.items():
        if old in state and new not in state:
            state[new] = state.pop(old)
    for key in [k for k in state if k.startswith(_LEGACY_DROPPED_PREFIXES)]:
        del state[key]


def check_tasks(checkpoint: dict[str, Any], current: TaskSpecs) -> None:
    """Refuse a checkpoint whose network learned other tasks than ``current`` (task name
    -> spec, the run's), or other class counts: its weights cannot be loaded.

    Raises:
        UserError: one line naming both task lists.
    """
    stored = checkpoint.get("hyper_parameters", {}).get("task_specs") or legacy_task_specs()
    if list(stored) != list(current) or any(
        _spec_shape(n, stored[n]) != _spec_shape(n, spec) for n, spec in current.items()
    ):
        raise UserError(
            "the checkpoint learned tasks "
            f"{_describe_specs(stored)}, but this run's data gives "
            f"{_describe_specs(current)}; "
            "choose matching data.tasks / data.root"
        )


def _spec_shape(name: str, spec: dict[str, Any]) -> tuple[Any, ...]:
    """What of a spec decides the network's weights: its kind and its task's output
    channels (e.g. a segmentation task's class count)."""
    return (spec.get("kind"), build_task(name, spec).channels)


def _describe_specs(specs: dict[str, dict[str, Any]]) -> str:
    parts = []
    for name, spec in specs.items():
        table = build_task(name, spec).class_table()
        parts.append(f"{name} ({len(table)} classes)" if table else name)
    return ", ".join(parts)
