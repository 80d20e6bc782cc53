"""The bf16 cost probe: warning once when bf16 is slow, never when fast, the per-machine
cache (used on the second call, corrupt files ignored and rewritten), and the fit hook.
The measurement is injected: this suite's machines may or may not have bf16 instructions."""

from __future__ import annotations

import io
import json
import math
from types import SimpleNamespace

import pytest
import torch

from scenemtl.engine import precision
from scenemtl.engine.callbacks import Bf16CostCallback


@pytest.fixture
def probe(monkeypatch, tmp_path):
    """A fake measurement returning ``probe.factor`` and counting its calls; the cache in
    a fresh folder."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    state = SimpleNamespace(factor=16.0, calls=0)

    def fake() -> float:
        state.calls += 1
        return state.factor

    monkeypatch.setattr(precision, "measure_bf16_factor", fake)
    return state


def test_slow_bf16_warns_once_in_one_line_and_the_cache_spares_the_second_probe(probe):
    out = io.StringIO()
    line = precision.warn_if_bf16_slow("bf16-mixed", "cpu", stream=out)
    assert probe.calls == 1
    assert out.getvalue() == line + "\n" and out.getvalue().count("\n") == 1
    assert line.startswith("scenemtl: warning: bf16-mixed runs 16.0x slower than fp32")
    assert "32-true" in line and str(precision.cache_path()) in line
    stored = json.loads(precision.cache_path().read_text())["entries"]
    assert stored[precision.machine_key()]["factor"] == 16.0

    again = precision.bf16_cost()
    assert again.cached and again.factor == 16.0 and probe.calls == 1


@pytest.mark.parametrize("factor", [0.4, 1.0, precision.SLOW_FACTOR])
def test_bf16_as_fast_as_fp32_gives_no_warning(probe, factor):
    probe.factor = factor
    out = io.StringIO()
    assert precision.warn_if_bf16_slow("bf16-mixed", "cpu", stream=out) is None
    assert out.getvalue() == "" and probe.calls == 1


@pytest.mark.parametrize(
    "precision_flag, device", [("32-true", "cpu"), ("16-mixed", "cpu"), ("bf16-mixed", "cuda")]
)
def test_no_probe_unless_bf16_on_the_cpu(probe, precision_flag, device):
    assert precision.warn_if_bf16_slow(precision_flag, device, stream=io.StringIO()) is None
    assert probe.calls == 0 and not precision.cache_path().exists()


def test_bf16_true_is_bf16_too(probe):
    assert precision.bf16_warning("bf16-true", "cpu") is not None


@pytest.mark.parametrize(
    "content",
    [
        "{not json",
        "[1, 2]",
        '{"entries": [1]}',
        '{"entries": {"KEY": {"factor": "slow", "probe_s": 0.1}}}',
        '{"entries": {"KEY": {"factor": -3.0, "probe_s": 0.1}}}',
        '{"entries": {"KEY": {"factor": NaN, "probe_s": 0.1}}}',
        '{"entries": {"KEY": {"factor": true, "probe_s": 0.1}}}',
        '{"entries": {"KEY": {"probe_s": 0.1}}}',
    ],
)
def test_a_corrupt_cache_is_ignored_and_rewritten(probe, content):
    path = precision.cache_path()
    path.parent.mkdir(parents=True)
    path.write_text(content.replace("KEY", precision.machine_key()))
    cost = precision.bf16_cost()
    assert not cost.cached and cost.factor == 16.0 and probe.calls == 1
    entries = json.loads(path.read_text())["entries"]
    assert list(entries) == [precision.machine_key()]
    assert precision.bf16_cost().cached and probe.calls == 1
    assert not list(path.parent.glob(".*.tmp"))  # the atomic write left no temporary


def test_another_machine_probes_again_and_both_entries_stay(probe, monkeypatch):
    monkeypatch.setattr(precision, "machine_key", lambda: "cpu A | no-bf16-flags | torch 1")
    precision.bf16_cost()
    monkeypatch.setattr(precision, "machine_key", lambda: "cpu B | amx_bf16 | torch 1")
    probe.factor = 0.5
    assert precision.bf16_cost().factor == 0.5 and probe.calls == 2
    entries = json.loads(precision.cache_path().read_text())["entries"]
    assert {k: v["factor"] for k, v in entries.items()} == {
        "cpu A | no-bf16-flags | torch 1": 16.0,
        "cpu B | amx_bf16 | torch 1": 0.5,
    }


def test_an_unwritable_cache_only_costs_a_probe_each_time(probe, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    path = blocker / "scenemtl" / precision.CACHE_NAME  # its parent cannot be made
    assert precision.bf16_cost(path).factor == 16.0
    assert precision.bf16_cost(path).factor == 16.0 and probe.calls == 2


def test_the_key_names_the_cpu_its_bf16_flags_and_torch(monkeypatch):
    monkeypatch.setattr(precision, "_cpuinfo", lambda: ("Some CPU", {"avx2", "amx_bf16"}))
    key = precision.machine_key()
    assert key.startswith("Some CPU | amx_bf16 | torch " + torch.__version__)
    monkeypatch.setattr(precision, "_cpuinfo", lambda: ("Some CPU", {"avx2"}))
    assert "no-bf16-flags" in precision.machine_key() and precision.machine_key() != key


def test_the_real_probe_measures_a_ratio_without_touching_rng_or_threads():
    threads = torch.get_num_threads()
    rng = torch.get_rng_state()
    factor = precision.measure_bf16_factor(repeats=3, budget_s=0.1)
    assert math.isfinite(factor) and factor > 0
    assert torch.get_num_threads() == threads
    assert torch.equal(torch.get_rng_state(), rng)  # a byte state, not a float path


def _trainer(flag: str, device: str, rank_zero: bool = True) -> SimpleNamespace:
    return SimpleNamespace(
        is_global_zero=rank_zero,
        precision=flag,
        strategy=SimpleNamespace(root_device=torch.device(device)),
    )


def test_the_fit_callback_warns_on_rank_zero_only(probe, capsys):
    Bf16CostCallback().on_fit_start(_trainer("bf16-mixed", "cpu"), None)
    err = capsys.readouterr().err
    assert err.count("scenemtl: warning:") == 1 and "16.0x slower" in err
    Bf16CostCallback().on_fit_start(_trainer("bf16-mixed", "cpu", rank_zero=False), None)
    Bf16CostCallback().on_fit_start(_trainer("32-true", "cpu"), None)
    assert capsys.readouterr().err == ""
