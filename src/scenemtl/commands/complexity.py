"""``scenemtl complexity``: parameters, MACs and peak training memory of a configured model.

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
from scenemtl.yamlfile import read_yaml_mapping

DEFAULT_SIZE = (256, 512)


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


def _module_rows(model: nn.Module, flops: Mapping[str, float]) -> list[Row]:
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
    model = build_model(cfg).train()
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
        model = build_model(cfg).to(device).train()
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
        [sys.executable, "-m", "scenemtl.commands.complexity", "--measure-peak-memory", payload],
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


def _fmt_int(n: int) -> str:
    return f"{n:,}"


def _fmt_macs(macs: float | None) -> str:
    if macs is None:
        return "-"
    return f"{macs / 1e9:.2f} G" if macs >= 1e9 else f"{macs / 1e6:.1f} M"


def run(config_path: str | Path, size: tuple[int, int] = DEFAULT_SIZE) -> str:
    """The complexity report of the model in ``config_path`` at input ``size`` (H, W).

    Weights are never loaded: counts do not depend on them.
    """
    h, w = size
    if h < 1 or w < 1:
        raise UserError(f"--size: height and width must be positive, got {h}x{w}")
    cfg = dataclasses.replace(load_model_config(config_path), weights=None)
    model = build_model(cfg)
    total_macs, flops = count_macs(model, size)
    rows = _module_rows(model, flops)
    total_params = sum(p.numel() for p in model.parameters())
    peak, method = peak_memory(cfg, size)

    dilation = getattr(cfg.encoder_config(), "dilation", None)  # a ResNet option
    dil = (
        f", dilation [{', '.join('true' if d else 'false' for d in dilation)}]"
        if dilation is not None
        else ""
    )
    lines = [
        f"model: {cfg.architecture}, encoder {cfg.encoder}{dil} "
        f"(output stride {cfg.output_stride}), aspp {str(cfg.aspp).lower()}, "
        f"skip {str(cfg.skip).lower()}, input 1x3x{h}x{w}",
        f"{'module':<28}{'parameters':>14}{'MACs':>12}",
    ]
    for row in rows:
        name = "  " * row.depth + row.name
        lines.append(f"{name:<28}{_fmt_int(row.params):>14}{_fmt_macs(row.macs):>12}")
    lines.append(f"{'total':<28}{_fmt_int(total_params):>14}{_fmt_macs(total_macs):>12}")
    lines.append("MACs: torch.utils.flop_counter FLOPs / 2 (convolutions and matrix products only)")
    if peak is None:
        lines.append(f"peak memory, forward+backward at batch size 1: {method}")
    else:
        lines.append(
            f"peak memory, forward+backward at batch size 1: {peak / 2**20:.1f} MiB ({method})"
        )
    return "\n".join(lines)


def _measure_main(payload: str) -> None:
    data = json.loads(payload)
    cfg = ModelConfig.from_dict(data["cfg"])
    print(f"PEAK {_measure_in_this_process(cfg, tuple(data['size']))}", flush=True)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--measure-peak-memory":
        _measure_main(sys.argv[2])
    else:
        raise SystemExit("usage: scenemtl complexity --config CFG [--size HxW]")
