"""The demo's plan (from configs/demo.yaml) and its time estimate (from a probe)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from scenemtl.commands import demo
from scenemtl.commands.demo import DemoPlan, demo_plan, estimate, minutes
from scenemtl.data.procedural import SynthParams
from scenemtl.errors import UserError

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "demo.yaml"


def test_the_plan_is_the_configs():
    plan = demo_plan(CONFIG)
    import yaml

    cfg = yaml.safe_load(CONFIG.read_text())
    assert plan.epochs == cfg["trainer"]["max_epochs"]
    assert plan.params.train == cfg["data"]["train_limit"]
    # the splits a grader and the validation curve use stay the default dataset's
    assert (plan.params.val, plan.params.test) == (SynthParams().val, SynthParams().test)
    assert plan.params.size == tuple(cfg["data"]["synth_size"])
    assert plan.steps_per_epoch == cfg["data"]["train_limit"] // cfg["data"]["batch_size"]
    text = plan.describe()
    assert f"{plan.epochs} epochs" in text and f"{plan.params.train} training" in text


def test_a_config_that_is_not_a_demo_config_is_one_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: {crop_size: 7}\n")
    with pytest.raises(UserError, match="not a demo config"):
        demo_plan(bad)


def test_the_estimate_scales_the_probes(tmp_path, monkeypatch):
    params = SynthParams(train=100, val=20, test=10)
    root = tmp_path / "data"
    monkeypatch.setattr(DemoPlan, "root", property(lambda self: root))
    plan = DemoPlan(CONFIG, params, epochs=3, batch_size=8, val_batch_size=16, crop=None, net={})

    def network(plan):
        return 0.5, 2.0

    got = estimate(plan, probe=network, render_probe=lambda p: 0.25, cores=2)
    val_batches, test_batches = math.ceil(20 / 16), math.ceil(10 / 16)
    per_epoch = (100 // 8) * 0.5 + val_batches * 2.0
    cpu_fit = demo.STARTUP_CPU_S + 3 * per_epoch + test_batches * 2.0
    cpu_test = demo.STARTUP_CPU_S + test_batches * 2.0
    assert got.render == pytest.approx(130 * 0.25 * demo.RENDER_OVERHEAD / 2)
    assert got.train == pytest.approx(cpu_fit / demo.THREAD_SPEEDUP)
    assert got.test == pytest.approx(cpu_test / demo.THREAD_SPEEDUP)
    assert got.total == pytest.approx(got.render + got.train + got.test)
    # cached: nothing to render (and the generator is not probed)
    root.mkdir()
    (root / "dataset.json").write_text("{}")
    cached = estimate(plan, probe=network, render_probe=lambda p: 1 / 0, cores=2)
    assert cached.render == 0
    # one core: no second thread
    assert estimate(plan, probe=network, cores=1).train == pytest.approx(cpu_fit)


@pytest.mark.parametrize(
    ("seconds", "text"), [(5.4, "5 s"), (60, "1 min 00 s"), (425.6, "7 min 06 s")]
)
def test_minutes(seconds, text):
    assert minutes(seconds) == text
