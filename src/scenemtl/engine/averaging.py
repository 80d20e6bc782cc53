"""The multi-task papers' reporting rule: metrics averaged over the last epochs.

MTAN (Liu et al. 2019) and the papers that kept its protocol (CAGrad, Nash-MTL, FAMO)
evaluate the "test" set (the release's val split) after every epoch and report each
metric averaged over the last 10 epochs, rather than at a selected checkpoint.

Two ways to get those numbers:

* :class:`LastEpochsAverage`, a callback: after every validation of a fit it logs
  ``val_last<K>/<metric>``, the mean of ``val/<metric>`` over the last K validations
  (fewer while fewer have run), to every logger; the row of the final epoch in
  ``metrics.csv`` holds the protocol's numbers. Lightning calls callbacks' epoch-end
  hooks before the module logs its metrics, so the callback reads them in
  ``on_validation_end`` and writes to the loggers itself.
* :func:`average_last_epochs`, the same from a finished run's ``metrics.csv`` (any run,
  also one trained without the callback).
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.trainer.states import TrainerFn

from scenemtl.errors import UserError

DEFAULT_EPOCHS = 10
PREFIX = "val/"


def _prefix(epochs: int) -> str:
    return f"val_last{epochs}/"


class LastEpochsAverage(L.Callback):
    """Log the mean of every ``val/`` metric over the last ``epochs`` validations.

    Args:
        epochs: how many validations to average (10 in the papers).
        metrics: the ``val/`` keys to average without the prefix (e.g. ``["semseg",
            "depth_mae"]``); default: every ``val/`` metric except ``val/loss``.
    """

    def __init__(self, epochs: int = DEFAULT_EPOCHS, metrics: Sequence[str] | None = None) -> None:
        super().__init__()
        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
            raise UserError(f"LastEpochsAverage: epochs must be an integer >= 1, got {epochs!r}")
        self.epochs = epochs
        self.metrics = list(metrics) if metrics is not None else None
        self.history: list[dict[str, float]] = []

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING:
            return
        values = {}
        for key, value in trainer.callback_metrics.items():
            if not key.startswith(PREFIX) or key == f"{PREFIX}loss":
                continue
            name = key[len(PREFIX) :]
            if self.metrics is None or name in self.metrics:
                values[name] = float(value)
        if not values:
            return
        self.history = [*self.history, values][-self.epochs :]
        means = self.averages()
        if trainer.is_global_zero:
            logged = {f"{_prefix(self.epochs)}{k}": v for k, v in means.items()}
            logged["epoch"] = trainer.current_epoch
            for logger in trainer.loggers:
                logger.log_metrics(logged, step=trainer.global_step)

    def averages(self) -> dict[str, float]:
        """Metric -> mean over the kept validations (NaN values are left out)."""
        out = {}
        for name in {k for row in self.history for k in row}:
            seen = [row[name] for row in self.history if name in row and not math.isnan(row[name])]
            out[name] = sum(seen) / len(seen) if seen else math.nan
        return dict(sorted(out.items()))

    def state_dict(self) -> dict[str, Any]:
        return {"epochs": self.epochs, "history": self.history}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = list(state_dict.get("history", []))[-self.epochs :]


def average_last_epochs(
    metrics_csv: str | os.PathLike, epochs: int = DEFAULT_EPOCHS, prefix: str = PREFIX
) -> dict[str, float]:
    """Each ``prefix`` metric of a ``metrics.csv`` averaged over its last ``epochs`` epochs.

    A row belongs to the epoch in its ``epoch`` column; an epoch's value of a metric is
    the last one logged in that epoch (a resumed run may repeat an epoch). Epochs where
    a metric is missing or NaN do not count for it.

    Raises:
        UserError: no such file, or no ``prefix`` column with a value.
    """
    path = Path(metrics_csv)
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise UserError(f"epochs must be an integer >= 1, got {epochs!r}")
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except FileNotFoundError:
        raise UserError(f"{path}: file not found") from None
    per_epoch: dict[int, dict[str, float]] = {}
    for row in rows:
        try:
            epoch = int(float(row.get("epoch") or "nan"))
        except ValueError:
            continue
        for key, text in row.items():
            if not key or not key.startswith(prefix) or key == f"{prefix}loss" or not text:
                continue
            try:
                value = float(text)
            except ValueError:
                continue
            if not math.isnan(value):
                per_epoch.setdefault(epoch, {})[key[len(prefix) :]] = value
    if not per_epoch:
        raise UserError(f"{path}: no {prefix}* metric logged")
    last = [per_epoch[e] for e in sorted(per_epoch)[-epochs:]]
    names = sorted({k for row in last for k in row})
    out = {}
    for name in names:
        seen = [row[name] for row in last if name in row]
        out[name] = sum(seen) / len(seen)
    return out
