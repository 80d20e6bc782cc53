"""The cost table of docs/models.md ("Encoder families: costs"): per encoder family x
architecture, parameters, MACs at 256x512 and 448x576, peak training memory and CPU
latency at batch 1 (torch eager and onnxruntime).

Parameters, MACs and memory come from the project's complexity code
(:mod:`scenemtl.engine.complexity`, as ``scenemtl complexity``): MACs of one forward at
batch 1, 19-class semseg + depth heads; memory = peak RSS growth of one forward+backward
at batch 1 in a fresh CPU process. Latency: median wall time of ``--runs`` forwards at
batch 1, 256x512, torch eager and onnxruntime on the exported graph, both with
``--threads`` intra-op threads. Timing needs an idle machine; ``--no-timing`` leaves it
out (cells say "pending").

    python scripts/backbone_costs.py --no-timing            # params, MACs, memory
    python scripts/backbone_costs.py --threads 2 --runs 20  # everything, idle machine
    python scripts/backbone_costs.py --encoders convnext_tiny --encoder-options \
        '{"embed_dim": 8}' --architectures joint --sizes 32x64 --no-memory --no-timing
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

from scenemtl.argtypes import size_hw
from scenemtl.engine.complexity import count_macs, peak_memory
from scenemtl.models.config import ModelConfig
from scenemtl.models.registry import ARCHITECTURES, build_model
from scenemtl.tasks import legacy_heads

ENCODERS = (
    "resnet50",
    "convnext_tiny",
    "swin_tiny_patch4_window7_224",
    "vit_small_patch16_224",
    "dinov2_vits14_reg4",
    "mobilenetv3_large_100",
)
"""One member per family (its smallest published one; ResNet-50 as the CNN reference)."""
ARCHS = ("joint", "branched", "invpt")
"""The joint and branched DeepLabV3+ and InvPT (its default options)."""
SIZES = ((256, 512), (448, 576))
LATENCY_SIZE = (256, 512)
PENDING = "not measured yet"


def latency_ms(
    cfg: ModelConfig, size: tuple[int, int], runs: int, threads: int
) -> tuple[float, float]:
    """(torch eager, onnxruntime) median ms of one forward at batch 1."""
    from scenemtl.commands.export import (
        InferenceWrapper,
        export_to_file,
        median_latency_ms,
        ort_session,
    )
    from scenemtl.engine.module import MultiTaskModule

    torch.manual_seed(0)
    module = MultiTaskModule(net=cfg).eval()
    wrapper = InferenceWrapper.of(module).eval()
    x = torch.randn(1, 3, *size)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:

        def once() -> None:
            with torch.inference_mode():
                wrapper(x)

        eager = median_latency_ms(once, runs)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "model.onnx"
            export_to_file(wrapper, path, size)
            session = ort_session(path, threads)
            image = x.numpy()
            ort = median_latency_ms(lambda: session.run(None, {"image": image}), runs)
    finally:
        torch.set_num_threads(previous)
    return eager, ort


def rows(args: argparse.Namespace) -> list[list[str]]:
    archs = [a for a in args.architectures if a in ARCHITECTURES]
    out = []
    for encoder in args.encoders:
        for arch in archs:
            cfg = ModelConfig(
                architecture=arch,
                encoder=encoder,
                encoder_options=dict(args.encoder_options),
                channels=args.channels,
                skip_channels=args.skip_channels,
            )
            model = build_model(cfg, legacy_heads())
            params = sum(p.numel() for p in model.parameters())
            macs = [count_macs(model, s)[0] for s in args.sizes]
            del model
            if args.no_memory:
                memory = "-"
            else:
                peak, _ = peak_memory(cfg, args.sizes[0])
                memory = f"{peak / 2**20:.0f} MiB" if peak is not None else "not measured"
            if args.no_timing:
                eager = ort = PENDING
            else:
                e, o = latency_ms(cfg, LATENCY_SIZE, args.runs, args.threads)
                eager, ort = f"{e:.0f} ms", f"{o:.0f} ms"
            row = [encoder, arch, f"{params / 1e6:.1f}M"]
            row += [f"{m / 1e9:.1f}" for m in macs]
            row += [memory, eager, ort]
            out.append(row)
            print(" | ".join(row), file=sys.stderr, flush=True)
    return out


def markdown(table: list[list[str]], sizes: list[tuple[int, int]]) -> str:
    mem = f"{sizes[0][0]}x{sizes[0][1]}"
    head = ["encoder", "architecture", "parameters"]
    head += [f"GMACs {h}x{w}" for h, w in sizes]
    head += [f"peak train memory {mem} (batch 1)", "CPU torch (batch 1)", "CPU onnxruntime"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r) + " |" for r in table]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--encoders", nargs="+", default=list(ENCODERS))
    p.add_argument("--architectures", nargs="+", default=list(ARCHS))
    p.add_argument("--encoder-options", type=json.loads, default={})
    p.add_argument("--sizes", nargs="+", type=size_hw, default=list(SIZES))
    p.add_argument("--channels", type=int, default=256)
    p.add_argument("--skip-channels", type=int, default=48)
    p.add_argument("--no-memory", action="store_true", help="leave peak memory out")
    p.add_argument("--no-timing", action="store_true", help="leave latency out (busy machine)")
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = p.parse_args(argv)
    print(markdown(rows(args), args.sizes))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
