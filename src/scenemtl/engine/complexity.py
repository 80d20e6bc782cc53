"""Parameters, MACs and peak training memory of a model (``scenemtl complexity``, the
GMACs column of ``study report``).

- Parameters: per top-level module (one level deeper for per-task ``ModuleDict``s) and total.
- MACs: ``torch.utils.flop_counter`` over one forward at batch size 1; it counts
  convolutions and matrix products as 2 FLOPs per multiply-accumulate, so MACs = FLOPs / 2.
  BatchNorm, activations, pooling and interpolation are not counted.
- Peak memory of one forward+backward at batch size 1: on CUDA
  ``torch.cuda.max_memory_allocated``; on the CPU the growth of the peak resident set
  (Linux ``VmHWM``, reset through ``/proc/self/clear_refs``) of a fresh Python process
  whose allocator returns freed blocks to the OS at once, after a warm-up step. It
  includes activations, autograd buffers and the weight gradients, not the weights.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import os
import re
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from scenemtl.errors import UserError
from scenemtl.models.config import ModelConfig
from scenemtl.models.registry import build_model, check_config
from scenemtl.tasks import legacy_heads
from scenemtl.yamlfile import read_yaml_mapping

DEFAULT_SIZE = (256, 512)
"""Input (H, W) of ``scenemtl complexity`` when ``--size`` is not given."""


def load_model_config(path: str | Path) -> ModelConfig:
    """The ``model.net`` section of a YAML config as a :class:`ModelConfig`.

    Also accepts the ``model.init_args.net`` form that LightningCLI writes when the model
    has a ``class_path``. A config without that section gives the defaults.
    """
    p = Path(path)
    doc = read_yaml_mapping(p)
    model = doc.get("model") or {}
    if not isinstance(model, Mapping):
        raise UserError(f"{p}: model: expected a mapping, got {type(model).__name__}")
    if "net" not in model and isinstance(model.get("init_args"), Mapping):
        model = model["init_args"]
    net: Any = model.get("net")
    if isinstance(net, Mapping) and "init_args" in net:
        net = net["init_args"]
    try:
        cfg = ModelConfig.from_dict(net)
        check_config(cfg)
        return cfg
    except UserError as e:
        raise UserError(f"{p}: {e}") from None
    except TypeError as e:  # a value of a type the dataclass cannot take at all
        raise UserError(f"{p}: model.net: {e}") from None


@dataclasses.dataclass
class Row:
    name: str
    params: int
    macs: float | None
    depth: int


def module_rows(model: nn.Module, flops: Mapping[str, float]) -> list[Row]:
    """Rows for the top-level modules, and the entries of top-level ModuleDicts.

    ``flops`` maps the flop counter's module keys (``"<Root>.encoder"``) to FLOPs.
    """
    root = type(model).__name__

    def macs_of(module: nn.Module, name: str) -> float | None:
        key = f"{root}.{name}"
        if key in flops:
            return flops[key] / 2
        # containers are never called themselves: add up their called children
        parts = [macs_of(m, f"{name}.{n}") for n, m in module.named_children()]
        known = [p for p in parts if p is not None]
        return sum(known) if known else None

    rows = []
    for name, module in model.named_children():
        n_params = sum(p.numel() for p in module.parameters())
        rows.append(Row(name, n_params, macs_of(module, name), 0))
        if isinstance(module, nn.ModuleDict):
            for sub, child in module.items():
                full = f"{name}.{sub}"
                rows.append(
                    Row(full, sum(p.numel() for p in child.parameters()), macs_of(child, full), 1)
                )
    return rows


def count_macs(model: nn.Module, size: tuple[int, int]) -> tuple[float, dict[str, float]]:
    """(total MACs, FLOPs per module key) of one forward of a [1, 3, H, W] input."""
    from torch.utils.flop_counter import FlopCounterMode

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(torch.zeros(1, 3, *size))
    finally:
        model.train(was_training)
    per_module = {k: float(sum(v.values())) for k, v in counter.get_flop_counts().items()}
    return counter.get_total_flops() / 2, per_module


def run_macs(run_dir: str | Path) -> float | None:
    """MACs of one forward of a trained run's network at its full image size (the
    validation input), from its ``hparams.yaml``; None if the run does not say enough."""
    from scenemtl.tasks import build_tasks
    from scenemtl.yamlfile import read_yaml_file

    try:
        hparams = read_yaml_file(Path(run_dir) / "hparams.yaml", "hparams.yaml")
        net = dict(hparams["net"], weights=None)
        heads = {t.name: t.channels for t in build_tasks(hparams["task_specs"])}
        size = tuple(hparams.get("synth_size") or (128, 256))
        if hparams.get("root"):
            from scenemtl.data.format import read_info

            size = tuple(read_info(hparams["root"]).image_size)
        model = build_model(ModelConfig.from_dict(net), heads)
        return count_macs(model, size)[0]
    except (OSError, KeyError, TypeError, ValueError, UserError):
        return None


def _rss_bytes(field: str) -> int:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise OSError(f"{field} not in /proc/self/status")


def _train_step(model: nn.Module, x: torch.Tensor) -> None:
    outputs = model(x)
    loss = sum(o.float().mean() for outs in outputs.values() for o in outs)
    loss.backward()


def _measure_in_this_process(cfg: ModelConfig, size: tuple[int, int]) -> int:
    """Peak RSS growth (bytes) of one forward+backward; see the module docstring."""
    torch.manual_seed(0)
    model = build_model(cfg, legacy_heads()).train()
    x = torch.randn(1, 3, *size)
    _train_step(model, x)  # warm-up: one-time allocations of the backends
    model.zero_grad(set_to_none=True)
    gc.collect()
    with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
        f.write("5")  # resets VmHWM to the current RSS
    base = _rss_bytes("VmRSS")
    _train_step(model, x)
    return _rss_bytes("VmHWM") - base


def peak_memory(cfg: ModelConfig, size: tuple[int, int]) -> tuple[int | None, str]:
    """(peak bytes of one forward+backward at batch size 1, how it was measured).

    Bytes is None when this platform offers no way to measure it.
    """
    cfg = dataclasses.replace(cfg, weights=None)
    if torch.cuda.is_available():
        device = torch.device("cuda")
        model = build_model(cfg, legacy_heads()).to(device).train()
        x = torch.randn(1, 3, *size, device=device)
        _train_step(model, x)
        model.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        _train_step(model, x)
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base, "torch.cuda.max_memory_allocated"
    if not Path("/proc/self/clear_refs").exists():
        return None, "not measured (needs CUDA or Linux /proc)"
    env = dict(os.environ)
    # big blocks through mmap, freed blocks back to the OS: RSS then follows live tensors
    env.update(MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="0")
    src = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    payload = json.dumps({"cfg": dataclasses.asdict(cfg), "size": list(size)})
    proc = subprocess.run(
        [sys.executable, "-m", "scenemtl.engine.complexity", "--measure-peak-memory", payload],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    match = re.search(r"^PEAK (\d+)$", proc.stdout, re.MULTILINE)
    if proc.returncode != 0 or not match:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return None, f"not measured (measuring process failed: {tail})"
    return int(match.group(1)), "peak RSS growth of a fresh CPU process (Linux VmHWM)"


def _measure_main(payload: str) -> None:
    data = json.loads(payload)
    cfg = ModelConfig.from_dict(data["cfg"])
    print(f"PEAK {_measure_in_this_process(cfg, tuple(data['size']))}", flush=True)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--measure-peak-memory":
        _measure_main(sys.argv[2])
    else:
        raise SystemExit("usage: scenemtl complexity --config CFG [--size HxW]")
