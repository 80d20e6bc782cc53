"""What bf16 costs on this CPU: a short probe, cached per machine, and the warning line.

A CPU without bf16 instructions (no AVX-512-BF16 / AMX on x86, no BF16 on Arm) makes
PyTorch emulate bf16 arithmetic: a training step under bf16 autocast then runs about
15-20x slower than in fp32, silently. :func:`bf16_cost` measures the ratio once per
machine with a small convolution block (forward and backward, fp32 against bf16 autocast,
well under a second) and caches it; :func:`warn_if_bf16_slow` prints one line when the
ratio says bf16 is slower. ``fit`` (a callback at fit start), ``bench`` and the study
workers call it; tests replace :func:`measure_bf16_factor`.

The cache is a JSON file ``<user cache>/scenemtl/bf16_probe.json`` (``$XDG_CACHE_HOME``,
else ``~/.cache``), keyed by the CPU model name, its bf16 flags, the torch version and
ATen's CPU capability and oneDNN's instruction set cap (``ATEN_CPU_CAPABILITY`` and
``ONEDNN_MAX_CPU_ISA`` change the kernels), so machines sharing a home directory keep
separate entries. It is replaced atomically; a file that
does not parse is ignored and rewritten.
"""

from __future__ import annotations

import json
import math
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import torch
import torch.nn.functional as F

from scenemtl.atomic import atomic_write_bytes

SLOW_FACTOR = 1.5
"""bf16 at least this many times slower than fp32 gets the warning: below it, the
difference is within what a busy machine makes of two short timings."""

CACHE_NAME = "bf16_probe.json"
BF16_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")
"""/proc/cpuinfo flags (x86) and features (Arm) that mean native bf16 arithmetic."""


@dataclass(frozen=True)
class Bf16Cost:
    factor: float
    """Time of the probe under bf16 autocast / its time in fp32 (> 1: bf16 is slower)."""
    probe_s: float
    """Wall time the probe took when it was measured."""
    cached: bool
    """Read from the cache (the probe did not run in this call)."""


def cache_path() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "scenemtl" / CACHE_NAME


def _cpuinfo() -> tuple[str, set[str]]:
    """(CPU model name, its flags) from /proc/cpuinfo; elsewhere the platform's name."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return platform.processor() or platform.machine(), set()
    model, flags = "", set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "cpu model", "hardware") and not model:
            model = value.strip()
        elif key in ("flags", "features") and not flags:
            flags = set(value.split())
    return model or platform.machine(), flags


def machine_key() -> str:
    """What the probe's result depends on: CPU model, its bf16 flags, torch and the
    kernel set ATen chose for this CPU."""
    model, flags = _cpuinfo()
    bf16 = ",".join(f for f in BF16_FLAGS if f in flags) or "no-bf16-flags"
    capability = torch.backends.cpu.get_cpu_capability()
    onednn = os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA")
    if onednn:  # oneDNN, which runs the convolutions, told to use fewer instructions
        capability += f" onednn<={onednn}"
    return f"{model} | {bf16} | torch {torch.__version__} | {capability}"


def measure_bf16_factor(repeats: int = 10, budget_s: float = 0.3) -> float:
    """Best time of a 3x3 conv, batch norm and ReLU (1x64x32x32, forward and backward: a
    typical layer of the demo network) under bf16 autocast over its best fp32 time, in
    one thread. Passes alternate, and stop after ``repeats`` pairs or once
    ``budget_s`` is spent (at least 3 pairs): a CPU with bf16 instructions needs ~1 ms per
    pass, an emulating one some 15-20x more (fp32 ~3 ms on a 2-core AVX2 machine).

    One thread: the ratio is a property of the kernels, and a short single-threaded pass
    is far less disturbed by other processes than one whose threads wait for each other
    (on a loaded 2-core machine a 2-thread pass took 50x longer, the ratio meant nothing).
    The best of several passes is the one no other process interrupted."""
    # a private generator: the probe runs after seed_everything and must not move the
    # global random state a training run draws from
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, 64, 32, 32, generator=gen)
    w1 = torch.randn(64, 64, 3, 3, generator=gen).mul_(0.05).requires_grad_()
    gamma = torch.ones(64, requires_grad=True)
    beta = torch.zeros(64, requires_grad=True)

    def block() -> None:
        h = F.batch_norm(F.conv2d(x, w1, padding=1), None, None, gamma, beta, training=True)
        F.relu(h).float().square().mean().backward()

    def once(bf16: bool) -> float:
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            block()
        return time.perf_counter() - start

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        once(False), once(True)  # warm-up: kernel selection, oneDNN primitive caches
        started = time.perf_counter()
        fp32, bf16 = math.inf, math.inf
        for i in range(repeats):
            fp32 = min(fp32, once(False))
            bf16 = min(bf16, once(True))
            if i >= 2 and time.perf_counter() - started > budget_s:
                break
    finally:
        torch.set_num_threads(threads)
    return bf16 / fp32


def _read_cache(path: Path) -> dict[str, dict[str, float]]:
    """The cache's entries; {} for a missing, unreadable or malformed file."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    entries = data.get("entries") if isinstance(data, dict) else None
    return entries if isinstance(entries, dict) else {}


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _valid(entry: object) -> bool:
    """A cache entry with a positive finite factor and a probe time >= 0."""
    if not isinstance(entry, dict):
        return False
    factor, probe_s = entry.get("factor"), entry.get("probe_s")
    return _number(factor) and factor > 0 and _number(probe_s) and probe_s >= 0


def bf16_cost(path: Path | None = None) -> Bf16Cost:
    """This machine's bf16/fp32 time ratio, from the cache or measured (and cached)."""
    path = path or cache_path()
    key = machine_key()
    entries = _read_cache(path)
    entry = entries.get(key)
    if _valid(entry):
        return Bf16Cost(float(entry["factor"]), float(entry["probe_s"]), cached=True)
    started = time.perf_counter()
    factor = measure_bf16_factor()
    probe_s = time.perf_counter() - started
    kept = {k: v for k, v in entries.items() if _valid(v)}  # drops what was corrupt
    kept[key] = {"factor": factor, "probe_s": probe_s}
    try:
        payload = json.dumps({"entries": kept}, indent=2) + "\n"
        atomic_write_bytes(path, payload.encode("utf-8"))
    except OSError:
        pass  # a read-only home: the probe runs again next time, nothing else changes
    return Bf16Cost(factor, probe_s, cached=False)


def uses_bf16(precision: object) -> bool:
    """Lightning precisions that compute in bf16 (``bf16``, ``bf16-mixed``, ``bf16-true``)."""
    return str(precision).startswith("bf16")


def bf16_warning(precision: object, device_type: str, path: Path | None = None) -> str | None:
    """What to tell a user of ``precision`` on ``device_type``, or None (not bf16, not the
    CPU, or bf16 not more than ``SLOW_FACTOR`` times slower here). Probes (or reads the
    cache) only for bf16 on the CPU."""
    if device_type != "cpu" or not uses_bf16(precision):
        return None
    cost = bf16_cost(path)
    if cost.factor <= SLOW_FACTOR:
        return None
    return (
        f"{precision} runs {cost.factor:.1f}x slower than fp32 on this CPU (a short probe, "
        f"cached in {path or cache_path()}): --trainer.precision 32-true is faster here"
    )


def warn_if_bf16_slow(
    precision: object, device_type: str, stream: TextIO | None = None, path: Path | None = None
) -> str | None:
    """Print :func:`bf16_warning` as one ``scenemtl: warning:`` line to ``stream`` (stderr)
    if there is one; returns the line."""
    message = bf16_warning(precision, device_type, path)
    if message is None:
        return None
    line = f"scenemtl: warning: {message}"
    print(line, file=stream or sys.stderr, flush=True)
    return line
