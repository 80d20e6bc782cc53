"""``scenemtl bench --config CFG [fit's options]``: where training time goes, in figures.

The command line is ``fit``'s (the same parser, config files and dotted overrides, e.g.
``--model.weighting_options.wrt representation``, ``--data.tasks '[semseg]'``,
``--model.net.architecture branched``), plus ``--precision`` (over
``trainer.precision``) and ``--steps``; nothing is written. The model is the one ``fit``
would train: the tasks and class tables the data gives, the architecture, encoder and
balancing method configured (the encoder's initialization weights are not loaded: speed
does not depend on them). The first line says what was timed.

Prints, for that model, input size and precision:

* model-only training images/s (synthetic tensors already on the device),
* DataLoader images/s (decoding only),
* end-to-end training images/s (Lightning Trainer, real data, augmentation on device, the
  configured balancing method: the model-only step is a plain backward),
* achieved GFLOP/s of the model-only step (``torch.utils.flop_counter``),
* this machine's matmul peak under the same autocast as the step (the precision the step
  really computes in), so the fraction of peak is visible. Convolutions run other kernels
  than matmul (oneDNN, Winograd); where the achieved rate exceeds the matmul probe, the
  line says so and gives the ratio instead of a "% of peak" above 100 (it happened under
  emulated bf16: the probe's matmul ran 0.8 GFLOP/s, the step's convolutions 4.1).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import lightning as L
import torch
from torch.utils.flop_counter import FlopCounterMode

from scenemtl.engine.interrupts import interrupts_raise
from scenemtl.engine.precision import warn_if_bf16_slow
from scenemtl.errors import UsageError, UserError
from scenemtl.models.config import ModelConfig

PRECISIONS = ("32-true", "32", "bf16-mixed", "16-mixed")
MAX_BENCH_STEPS = 10_000
"""Largest ``bench --steps``: each timing takes that many steps (the loader twice)."""


@dataclass
class BenchResult:
    precision: str
    batch_size: int
    size: tuple[int, int]
    model_images_per_s: float
    loader_images_per_s: float
    end_to_end_images_per_s: float
    step_gflop: float
    achieved_gflops: float
    matmul_peak_gflops: float
    """Square matmul throughput under the step's autocast (see :func:`matmul_peak_gflops`)."""
    loss_weighting: str = "fixed"
    augment_ms: float = 0.0
    """Batch augmentation (warp + normalization) per batch, on the training device."""
    optimizer: str = "sgd"
    optimizer_ms: float = 0.0
    """The configured optimizer's step per batch (model only times a plain SGD step)."""
    decode_ms: float = 0.0
    """CPU time to decode one batch in a single process: what the DataLoader workers take
    from the cores the model runs on."""
    cores: int = 1
    tasks: dict[str, int] = field(default_factory=dict)
    """Task name -> output channels of its head, as the timed network emitted them."""
    task_kinds: dict[str, str] = field(default_factory=dict)
    """Task name -> kind."""
    architecture: str = ""
    encoder: str = ""
    weighting_options: dict[str, Any] = field(default_factory=dict)

    def timed_line(self) -> str:
        """What was timed: the tasks (kind, head channels), architecture, method."""
        tasks = ", ".join(
            f"{name} ({self.task_kinds.get(name, '?')}, {channels}-channel head)"
            for name, channels in self.tasks.items()
        )
        options = ", ".join(f"{k}={v}" for k, v in self.weighting_options.items())
        method = f"{self.loss_weighting} ({options})" if options else self.loss_weighting
        return (
            f"timed: tasks {tasks}; architecture {self.architecture} "
            f"(encoder {self.encoder}); balancing {method}"
        )

    def predicted_images_per_s(self) -> float:
        """End to end if nothing but the measured parts took time: the model step, the
        configured optimizer instead of SGD, augmentation, and decoding sharing the
        cores with the model (its CPU time spread over the cores)."""
        model_ms = 1000 * self.batch_size / self.model_images_per_s
        share = self.decode_ms / max(self.cores, 1) if self.decode_ms else 0.0
        total = model_ms + self.optimizer_ms + self.augment_ms + share
        return 1000 * self.batch_size / total if total > 0 else 0.0

    def peak_line(self) -> str:
        """The matmul peak, for which precision, and the achieved rate's share of it; never
        a share above 100%: then the probe is no peak of this step, and the line says so."""
        label = f"matmul peak ({self.precision})"
        head = f"  {label:<31}{self.matmul_peak_gflops:8.1f} GFLOP/s"
        if not self.matmul_peak_gflops > 0:
            return f"{head}  -> peak n/a: not measured"
        frac = self.achieved_gflops / self.matmul_peak_gflops
        if frac > 1:
            return (
                f"{head}  -> peak n/a: achieved {frac:.1f}x the matmul probe "
                "(convolutions run other kernels)"
            )
        return f"{head}  -> {100 * frac:.0f}% of peak"

    def format(self) -> str:
        h, w = self.size
        e2e = (
            self.end_to_end_images_per_s / self.model_images_per_s if self.model_images_per_s else 0
        )
        return "\n".join(
            [
                self.timed_line(),
                f"precision {self.precision}, batch {self.batch_size}, input {h}x{w}, "
                f"{torch.get_num_threads()} threads",
                f"  model only (synthetic tensors) {self.model_images_per_s:8.2f} images/s",
                f"  DataLoader (decode only)       {self.loader_images_per_s:8.2f} images/s",
                f"  end-to-end training            {self.end_to_end_images_per_s:8.2f} images/s"
                f"  ({100 * e2e:.0f}% of model only; balancing: {self.loss_weighting})",
                f"  where end to end loses time, per batch: augmentation {self.augment_ms:.1f} ms, "
                f"{self.optimizer} step {self.optimizer_ms:.1f} ms, decoding "
                f"{self.decode_ms:.1f} ms CPU (workers share the {self.cores} cores)",
                f"  predicted from those parts     {self.predicted_images_per_s():8.2f} images/s"
                " (the rest: Lightning's loop, logging, balancing)",
                f"  work per step                  {self.step_gflop:8.1f} GFLOP (fwd+bwd)",
                f"  achieved                       {self.achieved_gflops:8.1f} GFLOP/s",
                self.peak_line(),
            ]
        )


def _autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    if precision == "bf16-mixed":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    if precision == "16-mixed":
        return torch.autocast(device.type, dtype=torch.float16)
    return contextlib.nullcontext()


def _timed(fn: Callable[[], None], steps: int, warmup: int, device: torch.device) -> float:
    """Seconds per call of ``fn`` after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / steps


def matmul_peak_gflops(precision: str, device: torch.device, n: int = 1024) -> float:
    """Best-of-several square (n x n) fp32 matmul throughput under the autocast the model
    step runs in (:func:`_autocast`): the precision the step really computes in, casts
    of the inputs included as in the step. (It used to time matmuls on bf16 or fp16
    tensors directly, and fp32 for 16-mixed on the CPU, where the step runs fp16.)"""
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)

    def mm() -> None:
        with _autocast(precision, device):
            torch.mm(a, b)

    best = min(_timed(mm, steps=5, warmup=2, device=device) for _ in range(3))
    return 2 * n**3 / best / 1e9


@dataclass
class BenchSetup:
    """What ``fit`` would build from the same command line, and the bench's own options."""

    module: Any  # MultiTaskModule
    datamodule: Any  # SceneDataModule
    precision: str
    steps: int


def build_from_args(argv: Sequence[str | os.PathLike]) -> BenchSetup:
    """Parse a bench command line with ``fit``'s parser and build its model and data.

    Raises:
        UserError: a bad option or value, in one line (as ``fit`` says it).
    """
    from scenemtl.commands.lightning import _hide_advertising, _usage_line, _user_error_in_chain
    from scenemtl.yamlfile import bound_lightning_yaml

    _hide_advertising()
    for noise in (  # as for fit (commands/lightning.py)
        ".*args parameter is intended to run from within",
        ".*skip_none parameter was deprecated",
        ".*isinstance\\(treespec, LeafSpec\\)",
        ".*overridden `on_after_batch_transfer`",
    ):
        warnings.filterwarnings("ignore", message=noise)
    args = [str(a) for a in argv]
    bound_lightning_yaml(args)
    try:
        cli = _bench_cli(args)
    except (ValueError, TypeError) as e:
        found = _user_error_in_chain(e)
        if found is not None:
            raise found from None
        raise
    except argparse.ArgumentError as e:
        raise UsageError(_usage_line(str(e), "bench")) from None
    return BenchSetup(cli.model, cli.datamodule, cli.bench_precision, cli.bench_steps)


def _bench_cli(argv: list[str]) -> Any:
    """``fit``'s LightningCLI without its run folder and trainer: the model and the data
    module, with the links that give the model the data's tasks."""
    from lightning.pytorch.cli import LightningArgumentParser

    from scenemtl.commands.lightning import SceneCLI, _check_data, _check_trainer_options
    from scenemtl.data.datamodule import SceneDataModule
    from scenemtl.engine.module import MultiTaskModule

    class BenchCLI(SceneCLI):
        def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
            super().add_arguments_to_parser(parser)
            parser.add_argument(
                "--precision",
                type=str | None,
                default=None,
                help=f"precision to time, one of {', '.join(PRECISIONS)} (default: "
                "trainer.precision)",
            )
            parser.add_argument(
                "--steps", type=int, default=10, help=f"timed steps (2..{MAX_BENCH_STEPS})"
            )

        def before_instantiate_classes(self) -> None:
            cfg = self.config
            _check_trainer_options(cfg.get("trainer"))
            precision = cfg.get("precision") or (cfg.get("trainer") or {}).get("precision")
            self.bench_precision = str(precision or "32-true")
            if self.bench_precision not in PRECISIONS:
                raise UserError(
                    f"precision {self.bench_precision!r} not benchmarked; choose one of "
                    f"{', '.join(PRECISIONS)}"
                )
            self.bench_steps = int(cfg.get("steps"))
            if not 2 <= self.bench_steps <= MAX_BENCH_STEPS:
                raise UserError(f"--steps must be in 2..{MAX_BENCH_STEPS}, got {self.bench_steps}")
            device = "cuda" if torch.cuda.is_available() else "cpu"
            warn_if_bf16_slow(self.bench_precision, device)
            _check_data(cfg.get("data"), cfg.get("model"), training=True)
            model = cfg.get("model")
            if model is not None and model.get("net") is not None:
                model.net.weights = None  # speed does not depend on the initialization

        def instantiate_trainer(self, **kwargs: Any) -> Any:
            return None  # the bench builds its own, for one process and its precision

    return BenchCLI(
        MultiTaskModule,
        SceneDataModule,
        args=argv,
        run=False,
        parser_kwargs={"prog": "scenemtl bench", "default_env": False, "exit_on_error": False},
        seed_everything_default=0,
        auto_configure_optimizers=False,
    )


def _batches(loader: Any) -> Iterator[Any]:
    while True:
        yield from loader


def run_bench(argv: Sequence[str | os.PathLike], warmup: int = 3) -> BenchResult:
    """Time what ``scenemtl fit`` with the same command line ``argv`` would train.

    Args:
        argv: ``fit``'s options (``--config``, dotted overrides), ``--precision``,
            ``--steps``.
        warmup: untimed calls before each timing.
    """
    setup = build_from_args(argv)
    module, datamodule = setup.module, setup.datamodule
    precision, steps = setup.precision, setup.steps
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if getattr(datamodule, "sources", None):
        raise UserError("scenemtl bench times one dataset: give data.root, not data.datasets")
    datamodule.prepare_data()
    datamodule.setup("fit")
    module.adopt_dataset_stats(datamodule.info.stats)
    module.to(device).train()
    size = datamodule.augment.output_size(datamodule.info.image_size)
    bs = datamodule.batch_size

    # model only: the training step on tensors that are already there, each task's
    # target a valid one of its own kind and class table
    gen = torch.Generator().manual_seed(0)
    image = torch.randn(bs, 3, *size, generator=gen).to(device)
    target = {t.name: t.example_target(bs, *size, gen).to(device) for t in module.task_list}
    with torch.no_grad(), _autocast(precision, device):
        emitted = {name: int(out[-1].shape[1]) for name, out in module(image).items()}
    opt = torch.optim.SGD(module.parameters(), lr=1e-6)

    def step() -> None:
        with _autocast(precision, device):
            loss = module.criterion(module(image), target).total
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    with FlopCounterMode(display=False) as counter:
        step()
    flop = counter.get_total_flops()
    model_s = _timed(step, steps, warmup, device)

    # the configured optimizer's step, against the SGD step of the model-only figure
    configured = module.make_optimizer()
    # a gradient for every parameter, kept for the timed steps: step() ends by setting
    # them to None, and an optimizer skips parameters without one (Adam then "cost" 0 ms)
    with _autocast(precision, device):
        module.criterion(module(image), target).total.backward()
    with torch.no_grad():
        sgd_s = _timed(opt.step, steps, warmup, device)
        configured_s = _timed(configured.step, steps, warmup, device)

    # DataLoader only: decoding in workers
    batches = _batches(datamodule.train_dataloader())
    loader_s = _timed(lambda: next(batches), steps * 2, warmup, torch.device("cpu"))
    batch = next(batches)

    # decoding's CPU time: one process, no workers
    dataset = datamodule.dataset("train")
    n = min(len(dataset), bs)
    decode_s = _timed(lambda: [dataset[i] for i in range(n)], 2, 1, torch.device("cpu")) * bs / n

    # batch augmentation on the device, as on_after_batch_transfer runs it
    datamodule.augment.train()
    on_device = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    augment_s = _timed(lambda: datamodule.augment(dict(on_device)), steps, warmup, device)

    # end to end: the real Lightning loop on real data
    times: list[float] = []

    class _Clock(L.Callback):
        def on_train_batch_start(self, *args: Any) -> None:
            times.append(time.perf_counter())

    trainer = L.Trainer(
        max_steps=warmup + steps + 1,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        precision=precision,
        callbacks=[_Clock()],
        accelerator="auto",
        devices=1,
    )
    with interrupts_raise():
        trainer.fit(module, datamodule=datamodule)
    measured = times[warmup:]
    e2e_s = (measured[-1] - measured[0]) / max(len(measured) - 1, 1)

    net = module.hparams.get("net")
    if not isinstance(net, ModelConfig):
        net = ModelConfig(**dict(net or {}))
    return BenchResult(
        precision=precision,
        batch_size=bs,
        size=tuple(size),
        model_images_per_s=bs / model_s,
        loader_images_per_s=bs / loader_s,
        end_to_end_images_per_s=bs / e2e_s,
        step_gflop=flop / 1e9,
        achieved_gflops=flop / model_s / 1e9,
        matmul_peak_gflops=matmul_peak_gflops(precision, device),
        loss_weighting=str(module.hparams.loss_weighting),
        weighting_options=dict(module.hparams.get("weighting_options") or {}),
        tasks=emitted,
        task_kinds={t.name: t.kind for t in module.task_list},
        architecture=net.architecture,
        encoder=net.encoder,
        augment_ms=1000 * augment_s,
        optimizer=str(module.hparams.optimizer),
        optimizer_ms=1000 * max(configured_s - sgd_s, 0.0),
        decode_ms=1000 * decode_s,
        cores=torch.get_num_threads(),
    )
