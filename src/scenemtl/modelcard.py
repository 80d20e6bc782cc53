"""The model card (``README.md``) of a model folder, from the model and its run folder.

A card has Hugging Face's YAML metadata (``library_name``, ``tags``) and says what the
network is, how to use it, what it predicts in which units, how it was trained (its run,
dataset and the command that trains it again) with the run's metrics, and the class
table. Run, dataset, command and metrics are there when the model was loaded from a
checkpoint inside its run folder (``<run>/checkpoints/*.ckpt``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from scenemtl.reporting.run_dir import RunDir

if TYPE_CHECKING:
    from scenemtl.api import Model

MAX_CONFIG_BYTES = 4 * 2**20


def run_of(source: str | os.PathLike | None) -> RunDir | None:
    """The run folder of a checkpoint file, if the model came from one."""
    if source is None or str(source).startswith("hf://") or not Path(source).is_file():
        return None
    return RunDir.of_checkpoint(source)


def training_config(source: str | os.PathLike | None) -> str | None:
    """The text of the run's ``config.yaml`` (None without one, or when unreadable)."""
    run = run_of(source)
    if run is None or not run.config.is_file():
        return None
    try:
        if run.config.stat().st_size > MAX_CONFIG_BYTES:
            return None
        return run.config.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None


def _dataset(config_text: str | None) -> str | None:
    """``data.root`` (and ``data.tasks``) of a training config, as the card says it."""
    if not config_text:
        return None
    from scenemtl.errors import UserError
    from scenemtl.yamlfile import load_yaml_text

    try:
        config = load_yaml_text(config_text, "config.yaml")
    except UserError:
        return None
    data = config.get("data") if isinstance(config, dict) else None
    if not isinstance(data, dict) or not data.get("root"):
        return None
    tasks = data.get("tasks")
    return f"`{data['root']}`" + (f" (tasks {', '.join(map(str, tasks))})" if tasks else "")


def _metrics(run: RunDir | None) -> str | None:
    if run is None:
        return None
    from scenemtl.reporting.runs import format_best, summarize_run

    summary = summarize_run(run.path)
    if summary.status == "unreadable" or not (summary.best or summary.test):
        return None
    return format_best(summary)


STUDY_RESULTS = Path("report") / "results.csv"
"""Where ``scenemtl study report`` writes a study's table (with Δm per variant)."""


def _study_delta(run: RunDir | None) -> str | None:
    """The line on Δm when the run belongs to a study that was reported: a study's runs
    are ``<study>/<variant>/seed_<s>/version_<n>`` and its report's ``results.csv`` holds
    each variant's Δm (mean ± std over seeds) against the single-task baselines."""
    if run is None:
        return None
    variant_dir = run.path.parent.parent
    study_dir = variant_dir.parent
    table = study_dir / STUDY_RESULTS
    if not run.path.parent.name.startswith("seed_") or not table.is_file():
        return None
    import csv

    try:
        with open(table, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error):
        return None
    row = next((r for r in rows if r.get("variant") == variant_dir.name), None)
    delta = (row or {}).get("Δm (%)")
    if not delta:
        return None
    return (
        f"In study `{study_dir.name}` (variant `{variant_dir.name}`, {row.get('runs', '?')} "
        f"seeds): Δm = {delta} % against the single-task baselines (mean signed relative "
        f"difference over the tasks, positive is better; from `{STUDY_RESULTS}`)."
    )


def model_card(model: Model, config: dict[str, Any], has_training_config: bool) -> str:
    """The ``README.md`` of ``model``'s folder (``config``: its config.json)."""
    run = run_of(model.source)
    name = run.name if run else Path(str(model.source or "model")).stem
    tasks = model.module.task_list
    tags = ["scenemtl", "multi-task-learning", *(tag for t in tasks for tag in t.card_tags())]
    net = config["net"]
    lines = [
        "---",
        "library_name: scenemtl",
        "tags:",
        *(f"- {t}" for t in dict.fromkeys(tags)),
        "---",
        "",
        f"# {name}",
        "",
        f"A multi-task network trained with scenemtl: the `{net.get('architecture')}` "
        f"architecture on a `{net.get('encoder')}` encoder, predicting "
        f"{', '.join(t.name for t in tasks)} from one RGB image.",
        "",
        "## Use",
        "",
        "```python",
        "import scenemtl",
        'model = scenemtl.load("hf://USER/REPO")  # this repository, or the path of this folder',
        'prediction = model.predict("street.jpg")  # task name -> numpy array',
        "```",
        "",
        "```bash",
        "scenemtl predict --ckpt_path hf://USER/REPO --input photos/ --output preds/",
        "```",
        "",
        "| task | kind | prediction |",
        "|---|---|---|",
    ]
    for task in tasks:
        lines.append(f"| {task.name} | {task.kind} | {task.card_output()} |")
    lines += [
        "",
        "Input: RGB, any size up to 16.8 MP; normalized inside scenemtl as "
        "`(rgb / 255 - mean) / std` with ImageNet's mean and std (config.json `input`).",
        "",
    ]
    config_text = model.extras.get("training_config.yaml") or training_config(model.source)
    training = []
    if run is not None:
        training.append(f"- run: `{run.path.parent.name}/{run.path.name}`")
    if dataset := _dataset(config_text):
        training.append(f"- dataset: {dataset}")
    if has_training_config:
        training.append("- command: `scenemtl fit --config training_config.yaml`")
    if training:
        lines += ["## Training", "", *training, ""]
    if metrics := _metrics(run):
        lines += ["## Metrics", "", metrics, ""]
    if delta := _study_delta(run):
        lines += [delta, ""]
    for task in tasks:
        classes = task.class_table()
        if not classes:
            continue
        lines += [f"## Classes of {task.name}", "", "| id | name | color |", "|---|---|---|"]
        for i, c in enumerate(classes):
            lines.append(f"| {i} | {c.get('name')} | {tuple(c.get('color', ()))} |")
        lines.append("")
    lines += [
        "## Files",
        "",
        "`model.safetensors` (weights), `config.json` (network, tasks, input "
        "normalization), `classes.json` (class tables), this card"
        + (", `training_config.yaml`" if has_training_config else "")
        + ".",
        "",
    ]
    return "\n".join(lines)


__all__ = ["model_card", "run_of", "training_config"]
