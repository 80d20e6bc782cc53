"""scripts/backbone_costs.py without its timing and memory parts, on one tiny family: the
table has a row per (encoder, architecture) and its parameter counts are the models'."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from scenemtl.models.config import ModelConfig
from scenemtl.models.registry import build_model
from scenemtl.tasks import legacy_heads

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "backbone_costs.py"


def _script():
    spec = importlib.util.spec_from_file_location("backbone_costs", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_cost_table_without_timing(capsys) -> None:
    script = _script()
    argv = ["--encoders", "convnext_tiny", "--encoder-options", '{"embed_dim": 8}']
    argv += ["--architectures", "joint", "branched", "--sizes", "32x64", "64x64"]
    argv += ["--channels", "8", "--skip-channels", "4", "--no-memory", "--no-timing"]
    assert script.main(argv) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("| encoder | architecture | parameters | GMACs 32x64 | GMACs 64x64")
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in lines[2:]]
    assert [r[:2] for r in rows] == [["convnext_tiny", "joint"], ["convnext_tiny", "branched"]]
    for row in rows:
        cfg = ModelConfig(
            architecture=row[1],
            encoder="convnext_tiny",
            encoder_options={"embed_dim": 8},
            channels=8,
            skip_channels=4,
        )
        n = sum(p.numel() for p in build_model(cfg, legacy_heads()).parameters())
        assert row[2] == f"{n / 1e6:.1f}M"
        assert row[-1] == script.PENDING and row[-2] == script.PENDING
