"""``scenemtl complexity``: parameters, MACs and peak training memory of a configured model.

What is counted and how is :mod:`scenemtl.engine.complexity`; this is its report.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from scenemtl.engine.complexity import (
    DEFAULT_SIZE,
    count_macs,
    load_model_config,
    module_rows,
    peak_memory,
)
from scenemtl.errors import UserError
from scenemtl.models.registry import build_model
from scenemtl.tasks import legacy_heads


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
    model = build_model(cfg, legacy_heads())
    total_macs, flops = count_macs(model, size)
    rows = module_rows(model, flops)
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
