"""studies/backbones.yaml: every preset parses, every variant is a valid model
configuration (the cpu preset's are built, without training), every variant of a preset
has the same wall-clock budget, and the cpu preset's variants train from scratch."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from scenemtl.models.config import ModelConfig
from scenemtl.models.encoders.registry import family_name
from scenemtl.models.registry import build_model, check_config
from scenemtl.studies.spec import load_study, presets_of
from scenemtl.tasks import legacy_heads

STUDY = Path(__file__).resolve().parents[2] / "studies" / "backbones.yaml"


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def composed(variant) -> dict[str, Any]:
    """The run's config as ``scenemtl fit`` composes it: the config files in order, then
    the dotted overrides (a mapping value replaces the whole key, as on the command line)."""
    doc: dict[str, Any] = {}
    for path in variant.configs:
        doc = _merge(doc, yaml.safe_load(path.read_text()) or {})
    for dotted, value in variant.overrides.items():
        *parents, last = dotted.split(".")
        node = doc
        for key in parents:
            node = node.setdefault(key, {})
        node[last] = copy.deepcopy(value)
    return doc


def test_the_study_compares_every_family() -> None:
    spec = load_study(STUDY)
    families = {family_name(composed(v)["model"]["net"]["encoder"]) for v in spec.variants}
    assert families == {"resnet", "convnext", "swin", "vit", "mobilenetv3"}
    assert set(presets_of(STUDY)) == {"cpu", "gpu"}


@pytest.mark.parametrize("preset", [None, "gpu", "cpu"])
def test_every_variant_is_a_model_with_the_same_budget(preset) -> None:
    spec = load_study(STUDY, preset)
    budgets = set()
    for variant in spec.all_variants:
        doc = composed(variant)
        cfg = ModelConfig.from_dict(doc["model"]["net"])
        check_config(cfg)
        budgets.add(doc["trainer"]["max_time"])
        if preset == "cpu":
            assert doc["model"]["net"]["weights"] is None, variant.name  # from scratch
            build_model(cfg, legacy_heads())
        else:
            assert doc["model"]["net"]["weights"] in ("imagenet", "published"), variant.name
    assert len(budgets) == 1  # equal wall time
    if preset == "cpu":
        # 3.5 minutes x (6 variants + 2 baselines) x 2 seeds: the hour the preset promises
        assert budgets == {"00:00:03:30"} and len(spec.cells()) == 16
