"""The study file: a question as YAML.

::

    name: course                    # default: the file's stem
    description: the course ladder
    config: ../configs/template.yaml   # base config(s), relative to this file
    overrides: {trainer.max_epochs: 16}  # dotted keys, for every run
    seeds: [0, 1, 2]
    monitor: val/grader             # what picks a run's best epoch (default: the run's)
    monitor_mode: max               # its direction (default: max)
    variants:
      - name: template
      - name: dilation
        config: ../configs/dilation.yaml
        overrides: {model.net.aspp: false}
    baselines:                      # single-task runs, the reference of Δm
      variant: dilation             # whose settings they use (default: the first variant)
      tasks: [semseg, depth]
    search:                         # for `scenemtl study tune`
      trials: 20
      space:
        model.optimizer: [sgd, adam]                 # a list: categorical
        model.lr: {low: 1.0e-5, high: 1.0e-1, log: true}
        data.batch_size: {low: 4, high: 16, step: 4}  # ints stay ints
    presets:
      cpu:                          # --preset cpu: scaled to a 2-core machine
        config: cpu.yaml            # a partial config merged over the variants'
        seeds: [0, 1]
        variants: [template, dilation]   # a subset (default: all)
        overrides: {model.net.encoder: resnet18}
        variant_overrides: {template: {model.lr: 0.01}}

A run's options are applied in this order, later wins: the configs (the study's, the
variant's, the preset's), the study's overrides, the preset's, the variant's, the preset's for
that variant. The runs of a study live in ``<runs>/<name>[-<preset>]/``.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from scenemtl.errors import UserError
from scenemtl.names import check_name, is_name
from scenemtl.yamlfile import read_yaml_mapping

_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)*$")
MAX_SEED = 2**32 - 1
"""Largest seed (``seeds``, ``search.seed``): what ``seed_everything`` takes."""
MAX_TRIALS = 100_000
"""Largest ``search.trials`` (and ``study tune --trials``)."""
MAX_STUDY_RUNS = 10_000
"""Most runs of one study: (variants + baselines) x seeds, each queued as a trial."""
BASELINE_PREFIX = "single_"
"""Variant name of the single-task baseline of task ``t``: ``single_<t>``."""


@dataclass(frozen=True)
class Variant:
    """One arm of a study: configs plus dotted overrides."""

    name: str
    configs: tuple[Path, ...]
    overrides: dict[str, Any]
    baseline_of: str | None = None
    """The task this variant is the single-task baseline of (None: a compared variant)."""

    def cli_args(self) -> list[str]:
        """The ``scenemtl fit`` options that make this variant (without run folder/seed)."""
        args: list[str] = []
        for config in self.configs:
            args += ["--config", str(config)]
        for key, value in self.overrides.items():
            args.append(f"--{key}={format_value(value)}")
        return args


@dataclass(frozen=True)
class Dimension:
    """One searched option of ``study tune``."""

    key: str
    choices: tuple[Any, ...] | None = None
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None

    @property
    def is_int(self) -> bool:
        return self.choices is None and all(
            isinstance(v, int) and not isinstance(v, bool) for v in (self.low, self.high)
        )


@dataclass(frozen=True)
class Search:
    trials: int
    space: tuple[Dimension, ...]
    seed: int = 0
    warmup_epochs: int = 1
    """Epochs a trial runs before the pruner may stop it."""
    startup_trials: int = 3
    """Trials that run to the end before pruning starts (median pruner)."""


@dataclass(frozen=True)
class StudySpec:
    """A study file, resolved for one preset."""

    name: str
    """The study's name with its preset: the folder and the Optuna study name."""
    path: Path
    preset: str | None
    description: str
    seeds: tuple[int, ...]
    variants: tuple[Variant, ...]
    baselines: tuple[Variant, ...]
    monitor: str | None
    monitor_mode: str
    search: Search | None
    base_configs: tuple[Path, ...] = ()
    base_overrides: dict[str, Any] = field(default_factory=dict)

    @property
    def all_variants(self) -> tuple[Variant, ...]:
        """Compared variants, then baselines: every arm that runs."""
        return self.variants + self.baselines

    def variant(self, name: str) -> Variant:
        for v in self.all_variants:
            if v.name == name:
                return v
        raise UserError(f"study {self.name}: no variant {name!r}")

    def cells(self) -> list[tuple[str, int]]:
        """Every (variant, seed) to run, in order."""
        return [(v.name, s) for v in self.all_variants for s in self.seeds]

    def study_dir(self, runs_root: str | os.PathLike) -> Path:
        return Path(runs_root) / self.name


def format_value(value: Any) -> str:
    """A YAML value as jsonargparse reads it from a command line."""
    if isinstance(value, str):
        return value
    return yaml.safe_dump(value, default_flow_style=True, width=10**6).strip().removesuffix("\n...")


# --------------------------------------------------------------------------------------
# loading


def _fail(path: Path, message: str) -> UserError:
    return UserError(f"{path}: {message}")


def _mapping(value: Any, path: Path, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise _fail(path, f"{where} must be a mapping, got {type(value).__name__}")
    return dict(value)


def _overrides(value: Any, path: Path, where: str) -> dict[str, Any]:
    found = _mapping(value, path, where)
    for key in found:
        if not isinstance(key, str) or not _KEY.fullmatch(key):
            raise _fail(path, f"{where}: {key!r} is not a dotted option name like model.lr")
        if key in ("config", "seed_everything", "run.root", "run.name"):
            raise _fail(path, f"{where}: {key} is set by the study itself")
    return found


def _configs(value: Any, path: Path, where: str) -> tuple[Path, ...]:
    if value is None:
        return ()
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(p, str) for p in items):
        raise _fail(path, f"{where} must be a path or a list of paths")
    resolved = []
    for item in items:
        try:
            p = (path.parent / item).resolve() if not os.path.isabs(item) else Path(item)
            found = p.is_file()
        except (OSError, ValueError) as e:  # a name too long, a NUL byte
            raise _fail(
                path, f"{where}: config file {item[:80]!r} cannot be read ({e.__class__.__name__})"
            ) from None
        if not found:
            raise _fail(path, f"{where}: config file {item} not found (looked at {p})")
        resolved.append(p)
    return tuple(resolved)


def _name(value: Any, path: Path, where: str) -> str:
    """A name that becomes a folder (study, preset, variant): see :mod:`scenemtl.names`."""
    return check_name(value, f"{path}: {where}")


def _seeds(value: Any, path: Path, where: str) -> tuple[int, ...]:
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value]
    if (
        not isinstance(value, list)
        or not value
        or not all(
            isinstance(s, int) and not isinstance(s, bool) and 0 <= s <= MAX_SEED for s in value
        )
    ):
        raise _fail(
            path, f"{where} must be a non-empty list of integers in 0..{MAX_SEED}, got {value!r}"
        )
    if len(set(value)) != len(value):
        raise _fail(path, f"{where} lists a seed twice: {value}")
    return tuple(value)


def _number(value: Any, path: Path, where: str) -> float | int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _fail(path, f"{where} must be a number, got {value!r}")
    return value


def _dimension(key: str, value: Any, path: Path) -> Dimension:
    where = f"search.space.{key}"
    if not isinstance(key, str) or not _KEY.fullmatch(key):
        raise _fail(path, f"search.space: {key!r} is not a dotted option name")
    if isinstance(value, list):
        if not value:
            raise _fail(path, f"{where}: no choices")
        return Dimension(key, choices=tuple(value))
    spec = _mapping(value, path, where)
    unknown = set(spec) - {"low", "high", "log", "step"}
    if unknown or "low" not in spec or "high" not in spec:
        raise _fail(path, f"{where}: a list of choices or {{low, high, log?, step?}}")
    low = _number(spec["low"], path, f"{where}.low")
    high = _number(spec["high"], path, f"{where}.high")
    log = bool(spec.get("log", False))
    step = spec.get("step")
    if step is not None:
        step = _number(step, path, f"{where}.step")
        if step <= 0:
            raise _fail(path, f"{where}.step must be > 0")
    if not low < high:
        raise _fail(path, f"{where}: low must be below high, got {low} and {high}")
    if log and low <= 0:
        raise _fail(path, f"{where}: a log range needs low > 0, got {low}")
    if log and step is not None:
        raise _fail(path, f"{where}: log and step cannot be combined")
    integers = not isinstance(low, float) and not isinstance(high, float)
    if integers and step is not None and not float(step).is_integer():
        raise _fail(path, f"{where}: an integer range needs an integer step, got {step}")
    return Dimension(key, low=low, high=high, log=log, step=step)


def _search(value: Any, path: Path) -> Search | None:
    if value is None:
        return None
    spec = _mapping(value, path, "search")
    unknown = set(spec) - {"trials", "space", "seed", "warmup_epochs", "startup_trials"}
    if unknown:
        raise _fail(path, f"search: unknown key {sorted(unknown, key=str)[0]!r}")
    space = _mapping(spec.get("space"), path, "search.space")
    if not space:
        raise _fail(path, "search.space names no option to search")
    counts = {}
    for key in ("trials", "seed", "warmup_epochs", "startup_trials"):
        if key in spec:
            n = spec[key]
            low, high = (1, MAX_TRIALS) if key == "trials" else (0, MAX_SEED)
            if isinstance(n, bool) or not isinstance(n, int) or not low <= n <= high:
                raise _fail(path, f"search.{key} must be an integer in {low}..{high}")
            counts[key] = n
    return Search(
        trials=counts.get("trials", 20),
        space=tuple(_dimension(k, v, path) for k, v in space.items()),
        seed=counts.get("seed", 0),
        warmup_epochs=counts.get("warmup_epochs", 1),
        startup_trials=counts.get("startup_trials", 3),
    )


_TOP_KEYS = {
    "name",
    "description",
    "config",
    "overrides",
    "seeds",
    "monitor",
    "monitor_mode",
    "variants",
    "baselines",
    "search",
    "presets",
}
_PRESET_KEYS = {
    "config",
    "seeds",
    "variants",
    "overrides",
    "variant_overrides",
    "search",
    "description",
}


def load_study(path: str | os.PathLike, preset: str | None = None) -> StudySpec:
    """Read and check a study file, resolved for ``preset``.

    Raises:
        UserError: one line naming the file and what is wrong with it.
    """
    p = Path(path)
    doc = read_yaml_mapping(p, "study file")
    unknown = set(doc) - _TOP_KEYS
    if unknown:
        raise _fail(
            p,
            f"unknown key {sorted(unknown, key=str)[0]!r}; "
            f"a study has {', '.join(sorted(_TOP_KEYS))}",
        )
    base_name = _name(doc.get("name", p.stem), p, "name")
    presets = _mapping(doc.get("presets"), p, "presets")
    chosen: dict[str, Any] = {}
    if preset is not None:
        if preset not in presets:
            known = ", ".join(map(str, presets)) or "none"
            raise _fail(p, f"no preset {preset!r}; presets: {known}")
        chosen = _mapping(presets[preset], p, f"presets.{preset}")
        unknown = set(chosen) - _PRESET_KEYS
        if unknown:
            raise _fail(p, f"presets.{preset}: unknown key {sorted(unknown, key=str)[0]!r}")
        _name(preset, p, "preset")
    where = f"presets.{preset}" if preset else ""

    base_configs = _configs(doc.get("config"), p, "config")
    preset_configs = _configs(chosen.get("config"), p, f"{where}.config")
    study_overrides = _overrides(doc.get("overrides"), p, "overrides")
    preset_overrides = _overrides(chosen.get("overrides"), p, f"{where}.overrides")
    per_variant = _mapping(chosen.get("variant_overrides"), p, f"{where}.variant_overrides")

    raw_variants = doc.get("variants")
    if not isinstance(raw_variants, list) or not raw_variants:
        raise _fail(p, "variants must be a non-empty list of {name, config?, overrides?}")
    declared: dict[str, Variant] = {}
    for i, raw in enumerate(raw_variants):
        item = _mapping(raw, p, f"variants[{i}]")
        extra = set(item) - {"name", "config", "overrides", "description"}
        if extra:
            raise _fail(p, f"variants[{i}]: unknown key {sorted(extra, key=str)[0]!r}")
        name = _name(item.get("name"), p, f"variants[{i}].name")
        if name in declared or name.startswith(BASELINE_PREFIX):
            why = "twice" if name in declared else f"with the baselines' prefix {BASELINE_PREFIX}"
            raise _fail(p, f"variants: {name!r} named {why}")
        own = _overrides(item.get("overrides"), p, f"variants[{i}].overrides")
        declared[name] = Variant(
            name,
            base_configs
            + _configs(item.get("config"), p, f"variants[{i}].config")
            + preset_configs,
            {**study_overrides, **preset_overrides, **own},
        )
    for name in per_variant:
        if name not in declared:
            raise _fail(p, f"{where}.variant_overrides: no variant {name!r}")

    def with_preset(v: Variant) -> Variant:
        extra = _overrides(per_variant.get(v.name), p, f"{where}.variant_overrides.{v.name}")
        return Variant(v.name, v.configs, {**v.overrides, **extra}, v.baseline_of)

    selected = chosen.get("variants")
    if selected is None:
        names = list(declared)
    else:
        if (
            not isinstance(selected, list)
            or not selected
            or not all(isinstance(n, str) for n in selected)
        ):
            raise _fail(p, f"{where}.variants must be a non-empty list of variant names")
        missing = [n for n in selected if n not in declared]
        if missing:
            raise _fail(p, f"{where}.variants: no variant {missing[0]!r}")
        names = list(selected)
    variants = tuple(with_preset(declared[n]) for n in names)

    baselines: tuple[Variant, ...] = ()
    raw_baselines = doc.get("baselines")
    if raw_baselines is not None:
        spec = _mapping(raw_baselines, p, "baselines")
        extra = set(spec) - {"variant", "tasks"}
        if extra:
            raise _fail(p, f"baselines: unknown key {sorted(extra, key=str)[0]!r}")
        of = spec.get("variant", next(iter(declared)))
        if not isinstance(of, str) or of not in declared:
            raise _fail(p, f"baselines.variant: no variant {of!r}")
        tasks = spec.get("tasks")
        if not isinstance(tasks, list) or not tasks or not all(is_name(t) for t in tasks):
            raise _fail(p, "baselines.tasks must be a non-empty list of task names")
        source = with_preset(declared[of])
        baselines = tuple(
            Variant(
                f"{BASELINE_PREFIX}{task}",
                source.configs,
                {**source.overrides, **single_task_overrides(task)},
                baseline_of=task,
            )
            for task in tasks
        )

    seeds = _seeds(
        chosen.get("seeds", doc.get("seeds", [0])), p, f"{where}.seeds" if where else "seeds"
    )
    monitor = doc.get("monitor")
    if monitor is not None and not isinstance(monitor, str):
        raise _fail(p, "monitor must be a metric name like val/grader")
    mode = doc.get("monitor_mode", "max")
    if mode not in ("max", "min"):
        raise _fail(p, f"monitor_mode must be max or min, got {mode!r}")
    search = _search(chosen.get("search", doc.get("search")), p)
    runs = (len(variants) + len(baselines)) * len(seeds)
    if runs > MAX_STUDY_RUNS:
        raise _fail(
            p,
            f"{len(variants) + len(baselines)} variant(s) x {len(seeds)} seed(s) make {runs} "
            f"runs, more than the maximum {MAX_STUDY_RUNS}",
        )
    description = chosen.get("description") or doc.get("description") or ""
    return StudySpec(
        name=f"{base_name}-{preset}" if preset else base_name,
        path=p.resolve(),
        preset=preset,
        description=str(description).strip(),
        seeds=seeds,
        variants=variants,
        baselines=baselines,
        monitor=monitor,
        monitor_mode=mode,
        search=search,
        base_configs=base_configs,
        base_overrides={**study_overrides, **preset_overrides},
    )


def single_task_overrides(task: str) -> dict[str, Any]:
    """What makes a multi-task variant learn ``task`` alone: ``data.tasks``. The options
    and loss weights the variant sets for the other tasks stay: the run ignores them
    (:func:`scenemtl.tasks.options_of_learned_tasks`, as for any ``--data.tasks`` run).
    The baseline's own loss weight becomes the default 1: a constant factor of its only
    loss (Adam does not see it; SGD sees it as a learning-rate factor)."""
    return {"data.tasks": [task], "model.loss_weights": None}


def presets_of(path: str | os.PathLike) -> list[str]:
    """The preset names a study file declares (for `report` without --preset)."""
    try:
        presets = read_yaml_mapping(path, "study file").get("presets")
    except (OSError, UserError):
        return []
    return [str(k) for k in presets] if isinstance(presets, Mapping) else []


def monitor_args(spec: StudySpec, variant: Variant | None = None) -> list[str]:
    """The ``fit`` options of the study's monitor (none: each run's default). A
    single-task baseline keeps its own default (its task's headline metric): the study's
    monitor, e.g. the grader, needs both tasks."""
    if spec.monitor is None or (variant is not None and variant.baseline_of):
        return []
    return [f"--run.monitor={spec.monitor}", f"--run.monitor_mode={spec.monitor_mode}"]


__all__: Sequence[str] = [
    "BASELINE_PREFIX",
    "Dimension",
    "Search",
    "StudySpec",
    "Variant",
    "format_value",
    "load_study",
    "monitor_args",
    "presets_of",
]
