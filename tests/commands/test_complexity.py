"""scenemtl.commands.complexity: config loading, parameter and MAC counts, peak memory."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
import torch

from scenemtl.commands import complexity
from scenemtl.errors import UserError
from scenemtl.models import ModelConfig, build_model
from scenemtl.tasks import legacy_heads

TINY = """\
model:
  net:
    architecture: {arch}
    encoder: resnet18
    channels: 16
    skip_channels: 8
    dilation: [false, false, true]
"""


def write(tmp_path: Path, text: str, name: str = "cfg.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_load_model_config_reads_model_net(tmp_path: Path) -> None:
    cfg = complexity.load_model_config(write(tmp_path, TINY.format(arch="branched")))
    assert cfg == ModelConfig(
        architecture="branched",
        encoder="resnet18",
        channels=16,
        skip_channels=8,
        dilation=(False, False, True),
    )


def test_load_model_config_accepts_class_path_form_and_defaults(tmp_path: Path) -> None:
    text = "model:\n  class_path: x.Y\n  init_args:\n    net:\n      architecture: distillation\n"
    assert complexity.load_model_config(write(tmp_path, text)).architecture == "distillation"
    assert complexity.load_model_config(write(tmp_path, "trainer: {max_epochs: 1}\n")) == (
        ModelConfig()
    )


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("model: {net: {architecture: nope}}\n", "unknown architecture 'nope'"),
        ("model: {net: {dilations: [true]}}\n", "unknown option 'dilations'"),
        ("model: {net: {aspp_rates: [1, 2]}}\n", "aspp_rates"),
        ("model: {net: [1, 2]}\n", "expected a mapping"),
        ("model: [1, 2]\n", "model: expected a mapping"),
        ("- just\n- a list\n", "top level"),
        ("model: {net: {architecture: joint\n", "not valid YAML"),
    ],
)
def test_bad_configs_are_one_line_user_errors(tmp_path: Path, text: str, needle: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(UserError) as err:
        complexity.load_model_config(path)
    msg = str(err.value)
    assert needle in msg and "\n" not in msg
    assert str(path) in msg


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="config file not found"):
        complexity.load_model_config(tmp_path / "nope.yaml")


def test_count_macs_of_a_known_convolution() -> None:
    conv = torch.nn.Conv2d(3, 8, 3, padding=1)
    macs, _ = complexity.count_macs(conv, (10, 12))
    assert macs == 8 * 3 * 9 * 10 * 12


def _table(report: str) -> dict[str, tuple[int, float | None]]:
    rows = {}
    for line in report.splitlines():
        m = re.fullmatch(r"\s*(\S+)\s+([\d,]+)\s+(?:([\d.]+) ([MG])|-)", line)
        if m:
            macs = float(m.group(3)) * (1e9 if m.group(4) == "G" else 1e6) if m.group(3) else None
            rows[m.group(1)] = (int(m.group(2).replace(",", "")), macs)
    return rows


@pytest.mark.parametrize("arch", ["joint", "distillation"])
def test_run_report_adds_up(tmp_path: Path, arch: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # memory is measured in its own test; here it would only cost a subprocess
    monkeypatch.setattr(complexity, "peak_memory", lambda cfg, size: (None, "skipped"))
    path = write(tmp_path, TINY.format(arch=arch))
    report = complexity.run(path, (64, 96))
    rows = _table(report)
    model = build_model(complexity.load_model_config(path), legacy_heads())
    assert rows["total"][0] == sum(p.numel() for p in model.parameters())
    top = [name for name, _ in model.named_children()]
    assert sum(rows[n][0] for n in top) == rows["total"][0]
    # printed with 3-4 significant digits
    assert sum(rows[n][1] for n in top) == pytest.approx(rows["total"][1], rel=0.01)
    macs, _ = complexity.count_macs(model, (64, 96))
    assert rows["total"][1] == pytest.approx(macs, rel=0.002)
    if arch == "distillation":
        # per-task entries of the ModuleDicts add up to their container
        assert rows["attention.semseg"][0] + rows["attention.depth"][0] == rows["attention"][0]
    assert "output stride 16" in report and "1x3x64x96" in report


def test_macs_grow_with_size_and_architecture() -> None:
    joint = build_model(
        ModelConfig(encoder="resnet18", channels=16, skip_channels=8), legacy_heads()
    )
    distill = build_model(
        ModelConfig(architecture="distillation", encoder="resnet18", channels=16, skip_channels=8),
        legacy_heads(),
    )
    small, _ = complexity.count_macs(joint, (64, 64))
    large, _ = complexity.count_macs(joint, (128, 128))
    # fully convolutional: MACs proportional to the pixel count
    assert large == pytest.approx(4 * small, rel=0.02)
    assert complexity.count_macs(distill, (64, 64))[0] > small


@pytest.mark.slow
@pytest.mark.skipif(
    not sys.platform.startswith("linux") or torch.cuda.is_available(),
    reason="CPU measurement reads Linux /proc",
)
def test_peak_memory_covers_gradients_and_grows_with_size() -> None:
    cfg = ModelConfig(encoder="resnet18", channels=16, skip_channels=8)
    n_params = sum(p.numel() for p in build_model(cfg, legacy_heads()).parameters())
    small, method = complexity.peak_memory(cfg, (64, 64))
    assert small is not None, method
    assert "VmHWM" in method
    # every weight gradient is alive at the end of backward
    assert small >= 4 * n_params
    large, _ = complexity.peak_memory(cfg, (192, 256))
    assert large is not None and large > small
