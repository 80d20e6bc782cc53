"""What ``scenemtl demo`` (``make demo``) will do, and about how long it takes here.

The demo renders the procedural dataset its config trains on (``data.train_limit``
training images, the default validation and test splits; cached after the first run),
trains the config and tests it. Before it starts, :func:`estimate` times this machine in
CPU time of one thread (a few seconds): the generator on two images and the demo network
on two training steps and one validation batch, scaled to the run and spread over the
cores. The probe's CPU per training step matched a whole 500-step run's within ~7 %
(docs/synth.md, "The demo's budget"); :data:`THREAD_SPEEDUP` is measured once, idle.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scenemtl.data.procedural import SynthParams, default_root
from scenemtl.errors import UserError
from scenemtl.yamlfile import load_yaml_text

STARTUP_CPU_S = 12.0
"""CPU seconds of one Lightning command's start (imports, building, checkpoints)."""
RENDER_OVERHEAD = 1.1
"""CPU of a rendered image with its JPEG/PNG encoding and writing / rendering alone
(docs/synth.md: encoding and writing are 2-4 % of an image, the rest ~5 %)."""
THREAD_SPEEDUP = 1.5
"""Training's speed-up from one intra-op thread to two on 2 free cores: an idle `make demo`
on 2026-12-07 trained in 3 min 08 s where 1.7 predicted 2 min 44 s, i.e. ~1.5
(docs/synth.md, "The demo's budget")."""


@dataclass(frozen=True)
class DemoPlan:
    """The demo's work, from its config."""

    config: Path
    params: SynthParams
    epochs: int
    batch_size: int
    val_batch_size: int
    crop: tuple[int, int] | None
    net: dict[str, Any]

    @property
    def steps_per_epoch(self) -> int:
        # the training loader drops the last incomplete batch
        return max(self.params.train // self.batch_size, 1)

    @property
    def root(self) -> Path:
        return default_root(self.params)

    def describe(self) -> str:
        """One paragraph: what the demo will do."""
        p = self.params
        h, w = p.size
        crop = f"{self.crop[0]}x{self.crop[1]} crops" if self.crop else "whole images"
        cached = "cached" if (self.root / "dataset.json").is_file() else "to render"
        return (
            f"demo: {p.train} training + {p.val} validation + {p.test} test images of "
            f"{h}x{w} ({cached}, {self.root}); trains {self.config} for {self.epochs} "
            f"epochs of {self.steps_per_epoch} steps (batch {self.batch_size}, {crop}), "
            f"validating after each, then tests the best checkpoint"
        )


def demo_plan(config: Path) -> DemoPlan:
    """The plan of the demo config at ``config``."""
    cfg = load_yaml_text(config.read_text(), str(config)) or {}
    data = cfg.get("data") or {}
    trainer = cfg.get("trainer") or {}
    model = cfg.get("model") or {}
    defaults = SynthParams()
    train = data.get("train_limit") or defaults.train
    size = tuple(data.get("synth_size") or defaults.size)
    crop = data.get("crop_size")
    try:
        return DemoPlan(
            config=config,
            params=SynthParams(train=int(train), size=(int(size[0]), int(size[1]))),
            epochs=int(trainer.get("max_epochs") or 1),
            batch_size=int(data.get("batch_size") or 4),
            val_batch_size=int(data.get("val_batch_size") or 8),
            crop=(int(crop[0]), int(crop[1])) if crop else None,
            net=dict(model.get("net") or {}),
        )
    except (TypeError, ValueError, IndexError) as e:
        raise UserError(f"{config}: not a demo config ({e})") from None


@dataclass
class Estimate:
    """Seconds of wall time per stage."""

    render: float
    train: float
    test: float

    @property
    def total(self) -> float:
        return self.render + self.train + self.test


def estimate(
    plan: DemoPlan,
    probe: Callable[[DemoPlan], tuple[float, float]] | None = None,
    render_probe: Callable[[SynthParams], float] | None = None,
    cores: int | None = None,
) -> Estimate:
    """About how long the demo takes on this machine with its cores free.

    The probes measure CPU time of one thread, which other jobs on the machine inflate
    much less than wall time; the wall time is CPU time spread over the cores (the
    generator's workers over all of them, training over its two intra-op threads).

    Args:
        plan: the demo's work.
        probe: plan -> (CPU seconds per training step, per validation batch), one
            thread; default :func:`probe_network`.
        render_probe: params -> CPU seconds per rendered image; default
            :func:`probe_generator` (not called when the dataset is cached).
        cores: the machine's cores (default: ``os.cpu_count()``).
    """
    cores = max(cores or os.cpu_count() or 1, 1)
    render = 0.0
    if not (plan.root / "dataset.json").is_file():
        p = plan.params
        per_image = (render_probe or probe_generator)(p) * RENDER_OVERHEAD
        render = (p.train + p.val + p.test) * per_image / cores
    step_s, val_s = (probe or probe_network)(plan)
    val_batches = math.ceil(plan.params.val / plan.val_batch_size)
    test_batches = math.ceil(plan.params.test / plan.val_batch_size)
    speedup = THREAD_SPEEDUP if cores >= 2 else 1.0
    per_epoch = plan.steps_per_epoch * step_s + val_batches * val_s
    # fit ends by predicting the test split for submission.zip; test runs it again
    train = (STARTUP_CPU_S + plan.epochs * per_epoch + test_batches * val_s) / speedup
    test = (STARTUP_CPU_S + test_batches * val_s) / speedup
    return Estimate(render=render, train=train, test=test)


def probe_generator(params: SynthParams) -> float:
    """CPU seconds to render one image of ``params`` (two images, one thread)."""
    from scenemtl.data.procedural import render_sample

    render_sample(params, "train", 0)  # warm-up (noise tiles, imports)
    start = time.process_time()
    for i in (1, 2):
        render_sample(params, "train", i)
    return (time.process_time() - start) / 2


def probe_network(plan: DemoPlan) -> tuple[float, float]:
    """(CPU seconds per training step, per validation batch) of the demo's network at
    its batch sizes and input sizes, with one intra-op thread, after a warm-up call."""
    import torch

    from scenemtl.models import ModelConfig, build_model
    from scenemtl.tasks import legacy_heads

    net = build_model(ModelConfig(**{**plan.net, "weights": None}), legacy_heads())
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-6)
    h, w = plan.params.size
    ch, cw = plan.crop or (h, w)
    x = torch.randn(plan.batch_size, 3, ch, cw)

    def step() -> None:
        outputs = net(x)
        loss = sum(out[-1].float().pow(2).mean() for out in outputs.values())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    xv = torch.randn(plan.val_batch_size, 3, h, w)

    def validate() -> None:
        with torch.no_grad():
            net(xv)

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        net.train()
        step_s = _cpu_seconds(step, 2)
        net.eval()
        val_s = _cpu_seconds(validate, 1)
    finally:
        torch.set_num_threads(threads)
    return step_s, val_s


def _cpu_seconds(fn: Callable[[], None], calls: int) -> float:
    fn()
    start = time.process_time()
    for _ in range(calls):
        fn()
    return (time.process_time() - start) / calls


def minutes(seconds: float) -> str:
    """``"7 min 05 s"``."""
    m, s = divmod(round(seconds), 60)
    return f"{m} min {s:02d} s" if m else f"{s} s"
