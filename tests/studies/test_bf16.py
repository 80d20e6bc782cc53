"""A study worker announces the bf16 warning once (not per trial) when its variants run
bf16 on a CPU where the probe (injected) says bf16 is slower; fp32 studies probe nothing."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from scenemtl.engine import precision
from scenemtl.studies import runner
from scenemtl.studies.bf16 import bf16_notice, trainer_option
from scenemtl.studies.spec import Dimension, Search, Variant, load_study


@pytest.fixture
def probe(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    calls = []

    def fake() -> float:
        calls.append(1)
        return 16.0

    monkeypatch.setattr(precision, "measure_bf16_factor", fake)
    return calls


def _config(tmp_path: Path, name: str, trainer: dict) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"trainer": trainer}))
    return path


def test_the_options_resolve_configs_in_order_then_overrides(tmp_path):
    a = _config(tmp_path, "a", {"precision": "bf16-mixed", "accelerator": "cpu"})
    b = _config(tmp_path, "b", {"precision": "32-true"})
    assert trainer_option(Variant("v", (a,), {}), "precision") == "bf16-mixed"
    assert trainer_option(Variant("v", (a, b), {}), "precision") == "32-true"
    over = Variant("v", (a, b), {"trainer.precision": "bf16-true"})
    assert trainer_option(over, "precision") == "bf16-true"
    assert trainer_option(over, "accelerator") == "cpu"
    assert trainer_option(Variant("v", (), {}), "precision") is None


def test_the_notice_names_the_bf16_variants_on_the_cpu(tmp_path, probe):
    cpu = _config(tmp_path, "cpu", {"accelerator": "cpu"})
    fp32 = Variant("fp32", (cpu,), {"trainer.precision": "32-true"})
    bf16 = Variant("bf16", (cpu,), {"trainer.precision": "bf16-mixed"})
    gpu = Variant("gpu", (cpu,), {"trainer.precision": "bf16-mixed", "trainer.accelerator": "gpu"})
    notice = bf16_notice([fp32, bf16, gpu])
    assert notice is not None and notice.startswith("warning: bf16: bf16-mixed runs 16.0x")
    assert bf16_notice([fp32, gpu]) is None
    dim = Dimension("trainer.precision", choices=("32-true", "bf16-mixed"))
    searched = Search(trials=2, space=(dim,))
    assert "fp32 (searched trainer.precision)" in bf16_notice([fp32], searched)
    assert len(probe) == 1  # measured once, then the cache


def test_an_fp32_study_probes_nothing(tmp_path, probe):
    cpu = _config(tmp_path, "cpu", {"accelerator": "cpu", "precision": "32-true"})
    assert bf16_notice([Variant("a", (cpu,), {}), Variant("b", (cpu,), {})]) is None
    assert probe == []


def test_a_worker_announces_once_for_all_its_trials(tmp_path, probe, monkeypatch):
    _config(tmp_path, "base", {"accelerator": "cpu"})
    study = tmp_path / "study.yaml"
    study.write_text(
        yaml.safe_dump(
            {
                "name": "p",
                "config": "base.yaml",
                "seeds": [0, 1],
                "variants": [
                    {"name": "fp32", "overrides": {"trainer.precision": "32-true"}},
                    {"name": "bf16", "overrides": {"trainer.precision": "bf16-mixed"}},
                ],
            }
        )
    )
    fits = []

    def fake_fit(family, args, monitor, mode, announce):
        fits.append(family.path)
        return runner.CellResult(family.path, 1.0, False, 1.0)

    monkeypatch.setattr(runner, "fit_cell", fake_fit)
    lines: list[str] = []
    spec = load_study(study)
    assert runner.run_study(spec, tmp_path / "runs", heartbeat_s=0, announce=lines.append) == 0
    assert len(fits) == 4
    notices = [ln for ln in lines if "slower than fp32" in ln]
    assert notices == [bf16_notice(spec.all_variants)] and notices[0].startswith("warning: bf16:")
    assert len(probe) == 1
