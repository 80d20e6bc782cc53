"""A study worker's bf16 warning: once per worker, before its first run.

A study's runs are ``scenemtl fit`` children whose output goes to their fit.log, where
each prints :mod:`scenemtl.engine.precision`'s warning once (per fit). The worker's own
terminal would see nothing, so the worker resolves each variant's ``trainer.precision``
and ``trainer.accelerator`` (configs in order, then overrides; for ``study tune`` also the
searched choices) and announces one line naming the variants that compute in bf16 on the
CPU, when the probe says bf16 is slower here.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from scenemtl.errors import UserError
from scenemtl.studies.spec import Search, Variant
from scenemtl.yamlfile import read_yaml_mapping

GPU_ACCELERATORS = ("gpu", "cuda", "mps", "tpu")


def trainer_option(variant: Variant, name: str) -> Any:
    """``trainer.<name>`` as the variant's fit will see it (None: Lightning's default).
    A config that cannot be read counts as not setting it: the fit reports it."""
    value = None
    for config in variant.configs:
        try:
            trainer = read_yaml_mapping(config).get("trainer")
        except UserError:
            continue
        if isinstance(trainer, dict) and name in trainer:
            value = trainer[name]
    return variant.overrides.get(f"trainer.{name}", value)


def _runs_on_cpu(accelerator: Any) -> bool:
    name = str(accelerator or "auto").lower()
    if name == "cpu":
        return True
    if name in GPU_ACCELERATORS:
        return False
    import torch

    return not torch.cuda.is_available()  # "auto" (or a plugin: counted as auto)


def bf16_notice(variants: Iterable[Variant], search: Search | None = None) -> str | None:
    """One line for the variants (and searched precisions) that run bf16 on this CPU when
    bf16 is slower here, else None. Probes (or reads the cache) only if one does."""
    from scenemtl.engine.precision import bf16_warning, uses_bf16

    named: list[str] = []
    precision = ""
    for variant in variants:
        value = trainer_option(variant, "precision")
        searched = [
            c
            for dim in (search.space if search else ())
            if dim.key == "trainer.precision"
            for c in dim.choices or ()
            if uses_bf16(c)
        ]
        chosen = searched[0] if searched else value
        if uses_bf16(chosen) and _runs_on_cpu(trainer_option(variant, "accelerator")):
            named.append(variant.name + (" (searched trainer.precision)" if searched else ""))
            precision = precision or str(chosen)
    if not named:
        return None
    message = bf16_warning(precision, "cpu")
    if message is None:
        return None
    return f"warning: {', '.join(named)}: {message}"
