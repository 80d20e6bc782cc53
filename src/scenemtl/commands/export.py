"""``scenemtl export onnx``: the trained network as an ONNX model, checked and timed.

The exported graph (:class:`InferenceWrapper`) takes what every scenemtl model takes and
returns, for each task of the checkpoint in the order the network emits them, the
outputs of :meth:`Task.export_outputs <scenemtl.tasks.base.Task.export_outputs>` of its
final output, in the units of the files and metrics:

=======================  =====================  =====================================
name                     shape / dtype          meaning
=======================  =====================  =====================================
``image`` (input)        [B,3,H,W] float32      RGB / 255, ImageNet mean/std normalized
segmentation task ``T``:
``T_logits``             [B,N,H,W] float32      scores of the N classes of the
                                                checkpoint's class table
``T``                    [B,H,W] int64          class ids 0..N-1 (argmax of the logits)
depth task ``T``:
``T``                    [B,H,W] float32        meters, decoded from the training space
=======================  =====================  =====================================

A course checkpoint (semseg + depth, 19 classes) has the outputs ``semseg_logits``,
``semseg`` and ``depth``; a single-task checkpoint has only its task's outputs. Logits
are kept next to the labels because consumers often want confidences; the labels save
them the argmax. Batch, height and width are dynamic axes: ``--size`` only fixes the
example input used for tracing, the check and the timing. The depth normalization
statistics of the checkpoint are baked into the graph as constants. Test-time
augmentation is not part of the graph: it is the plain network.

Exporter: ``torch.onnx.export(..., dynamo=True)`` (torch.export + onnxscript), the
maintained path in torch 2.x.

Check: onnxruntime (CPU) runs the exported file on the tracing size and on a second size
(so the dynamic axes are exercised) and must agree with torch eager by each task's own
rule (:meth:`Task.compare_export <scenemtl.tasks.base.Task.compare_export>`: logits
within an absolute tolerance and the label of every pixel whose top-2 margin exceeds
twice it, since closer calls may flip legitimately under float reordering; depth within a
relative tolerance). The torch side is the module itself: its forward pass, and for the
outputs named like a task the module's own decoding (:meth:`MultiTaskModule.decode`, the
path of ``predict_step``), so the graph is checked against what ``scenemtl predict``
produces. The ``.onnx`` file only appears at ``--out`` once the check has passed; it is
written to a temporary file beside it and renamed.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor, nn

from scenemtl.argtypes import int_at_least, size_hw
from scenemtl.atomic import atomic_path
from scenemtl.errors import UserError

if TYPE_CHECKING:
    from scenemtl.engine.module import MultiTaskModule
    from scenemtl.tasks.base import Task

INPUT_NAME = "image"
DEFAULT_OPSET = 18
DEFAULT_SIZE = (128, 256)


def output_names(tasks: Sequence[Task]) -> tuple[str, ...]:
    """Names of the graph outputs, in order: each task's :meth:`Task.export_outputs` keys.

    The names do not depend on the values, so they are read off a one-pixel output.
    """
    names: list[str] = []
    with torch.no_grad():
        for task in tasks:
            names += list(task.export_outputs(torch.zeros(1, task.channels, 1, 1)))
    if len(set(names)) != len(names):
        raise UserError(f"the tasks' export outputs share a name: {names}")
    return tuple(names)


class InferenceWrapper(nn.Module):
    """A multi-task network plus its tasks' export outputs, as one exportable module.

    Args:
        net: the architecture; ``net(image)`` returns task name -> list of tensors (the
            last one is the prediction).
        tasks: the tasks, in the order of the graph outputs (their state, e.g. the depth
            normalization, becomes constants of the graph).

    ``forward(image)``: image float32 [B,3,H,W] normalized -> tuple in
    :func:`output_names` order.
    """

    def __init__(self, net: nn.Module, tasks: Sequence[Task]) -> None:
        super().__init__()
        self.net = net
        self.tasks = nn.ModuleList(tasks)

    @classmethod
    def of(cls, module: MultiTaskModule) -> InferenceWrapper:
        """The wrapper of a trained module's network and tasks."""
        return cls(module.net, module.task_list)

    def forward(self, image: Tensor) -> tuple[Tensor, ...]:
        outputs = self.net(image)
        result: list[Tensor] = []
        for task in self.tasks:
            result += list(task.export_outputs(outputs[task.name][-1]).values())
        return tuple(result)


# --------------------------------------------------------------------------------------
# checking


@dataclass
class TaskComparison:
    """One task's verdict on one input (from :meth:`Task.compare_export`)."""

    task: str
    ok: bool
    text: str


@dataclass
class Comparison:
    """How far onnxruntime's outputs are from torch's for one input."""

    size: tuple[int, int]
    tasks: list[TaskComparison]

    @property
    def ok(self) -> bool:
        return all(t.ok for t in self.tasks)

    def __getitem__(self, task: str) -> TaskComparison:
        for verdict in self.tasks:
            if verdict.task == task:
                return verdict
        raise KeyError(task)

    def format(self) -> str:
        return f"{self.size[0]}x{self.size[1]}: " + ", ".join(t.text for t in self.tasks)


def compare_outputs(
    tasks: Sequence[Task],
    reference: Mapping[str, np.ndarray],
    candidate: Mapping[str, np.ndarray],
) -> Comparison:
    """Compare two sets of named outputs (torch vs onnxruntime), task by task.

    Args:
        tasks: the exported tasks; each judges its own outputs.
        reference: output name -> the torch array (see :func:`reference_outputs`).
        candidate: output name -> the onnxruntime array.

    Raises:
        UserError: an output is missing or has another shape.
    """
    names = output_names(tasks)
    for name in names:
        if name not in reference or name not in candidate:
            have = ", ".join(candidate) or "none"
            raise UserError(f"ONNX model outputs {have}; expected {', '.join(names)}")
        if reference[name].shape != candidate[name].shape:
            raise UserError(
                f"ONNX output {name!r} has shape {candidate[name].shape}, "
                f"torch {reference[name].shape}"
            )
    shape = reference[names[0]].shape
    verdicts = []
    for task in tasks:
        ok, text = task.compare_export(reference, candidate)
        verdicts.append(TaskComparison(task.name, bool(ok), text))
    return Comparison(size=(int(shape[-2]), int(shape[-1])), tasks=verdicts)


def reference_outputs(module: MultiTaskModule, image: np.ndarray) -> dict[str, np.ndarray]:
    """What the graph must compute, from torch eager through the module itself.

    The module's forward pass gives every task's final output and
    :meth:`Task.export_outputs` its named outputs; those named like a task are then
    replaced by the module's own decoding (:meth:`MultiTaskModule.decode`, the path
    ``predict_step`` takes without TTA), so the export is checked against the
    predictions ``scenemtl predict`` makes.
    """
    with torch.inference_mode():
        raw = module(torch.from_numpy(image))
        out: dict[str, Tensor] = {}
        for task in module.task_list:
            out.update(task.export_outputs(raw[task.name][-1]))
        for name, prediction in module.decode(raw).items():
            if name in out:
                out[name] = prediction
    return {k: v.numpy() for k, v in out.items()}


def _onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError:
        raise UserError(
            "ONNX export needs onnx, onnxruntime and onnxscript: pip install 'scenemtl[export]'"
        ) from None
    return onnxruntime


def ort_session(path: str | os.PathLike, threads: int = 0) -> Any:
    """An onnxruntime CPU inference session on ``path`` (``threads=0``: its default)."""
    ort = _onnxruntime()
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only
    options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _run_onnx(session: Any, image: np.ndarray) -> dict[str, np.ndarray]:
    """Output name -> array of every graph output.

    Raises:
        UserError: onnxruntime could not run the graph on this input (its first line).
    """
    names = [o.name for o in session.get_outputs()]
    try:
        outputs = session.run(names, {INPUT_NAME: image})
    except Exception as e:  # onnxruntime's own exception types; the user needs one line
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise UserError(
            f"onnxruntime cannot run the exported graph at {image.shape[-2]}x"
            f"{image.shape[-1]}: {first}"
        ) from None
    return dict(zip(names, outputs, strict=True))


def example_input(size: tuple[int, int], batch: int = 1, seed: int = 0) -> np.ndarray:
    """A deterministic normalized input [batch,3,H,W] float32 (standard normal noise)."""
    rng = np.random.default_rng(seed)
    return rng.standard_normal((batch, 3, *size)).astype(np.float32)


def check_export_size(size: tuple[int, int], output_stride: int) -> None:
    """Refuse a tracing size the exported graph would not generalize from, or too large.

    Where two levels of the network's feature pyramid (the input, 1/2, 1/4, ... 1/OS,
    each ``ceil(side / scale)``) have the same size, the network skips the resize
    between them (:func:`scenemtl.models.blocks.resize`, MTAN's attention), and tracing
    records that as true for every size: the graph then fails on the second check size
    (onnxruntime: "Concat ... mismatched dimensions"). Levels ``s`` and ``2s`` have the
    same size when both sides are at most ``s``; the last pair to separate is (OS/2, OS),
    so one side must be longer than half the output stride. Larger than
    :data:`~scenemtl.api.MAX_PIXELS` is refused before anything is
    allocated (40000x40000 would take tens of GB).

    Raises:
        UserError: one line naming the size and the bound.
    """
    from scenemtl.api import MAX_PIXELS

    h, w = size
    least = output_stride // 2 + 1
    if max(h, w) < least:
        raise UserError(
            f"--size {h}x{w} is too small to trace this network (output stride "
            f"{output_stride}): one side must be at least {least} pixels, e.g. "
            f"{min(h, least)}x{least} or {least}x{min(w, least)}"
        )
    if h * w > MAX_PIXELS:
        raise UserError(
            f"--size {h}x{w} is {h * w / 1e6:.1f} MP, above the {MAX_PIXELS / 1e6:.1f} MP "
            "limit of scenemtl (predict's MAX_PIXELS)"
        )


def second_size(size: tuple[int, int]) -> tuple[int, int]:
    """Another input size (not a multiple of 32) that exercises the dynamic axes."""
    return size[0] + 8 + 3, size[1] + 8 + 5


# --------------------------------------------------------------------------------------
# export


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Silence the exporter's progress prints, warnings and log lines (not its errors)."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._export")]
    levels = [lg.level for lg in loggers]
    try:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        with (
            warnings.catch_warnings(),
            open(os.devnull, "w") as devnull,
            contextlib.redirect_stdout(devnull),
        ):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def export_to_file(
    wrapper: InferenceWrapper, path: Path, size: tuple[int, int], opset: int = DEFAULT_OPSET
) -> None:
    """Export ``wrapper`` to ``path`` (one self-contained file) with dynamic B, H, W.

    Raises:
        UserError: the exporter failed (first line of its message).
    """
    from torch.export import Dim

    _onnxruntime()  # fail early, in one line, when the extra is missing
    # traced at batch 2: with a batch-1 example torch.export (2.13) specializes the batch
    # when an op's meta function branches on it (LayerNorm: ConvNeXt, Swin, the ViTs) or
    # when it picks the CPU backend of a depthwise convolution (InvPT's queries, ConvNeXt,
    # MobileNetV3); the graph still runs at batch 1
    image = torch.from_numpy(example_input(size, batch=2))
    dims = {0: Dim("batch", min=1, max=1024), 2: Dim.AUTO, 3: Dim.AUTO}
    try:
        with _quiet_exporter():
            program = torch.onnx.export(
                wrapper,
                (image,),
                dynamo=True,
                input_names=[INPUT_NAME],
                output_names=list(output_names(list(wrapper.tasks))),
                opset_version=opset,
                dynamic_shapes={"image": dims},
                verbose=False,
            )
            program.save(str(path), external_data=False)
    except Exception as e:  # the exporter raises many types; the user needs one line
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise UserError(f"ONNX export failed at opset {opset}: {first}") from None


def median_latency_ms(fn: Callable[[], Any], runs: int, warmup: int = 3) -> float:
    """Median wall time of ``fn()`` in milliseconds over ``runs`` calls after warm-up."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


@dataclass
class ExportReport:
    """Outcome of :func:`export_onnx`."""

    path: Path
    size_bytes: int
    opset: int
    comparisons: list[Comparison]
    torch_ms: float
    onnxruntime_ms: float
    runs: int
    threads: int

    def format(self) -> str:
        lines = [f"wrote {self.path} ({self.size_bytes / 2**20:.1f} MiB, opset {self.opset})"]
        lines += [f"check {c.format()}" for c in self.comparisons]
        h, w = self.comparisons[0].size
        lines.append(
            f"latency at batch 1, {h}x{w}, median of {self.runs} runs: torch eager "
            f"{self.torch_ms:.2f} ms, onnxruntime {self.onnxruntime_ms:.2f} ms "
            f"({self.threads} thread(s) each)"
        )
        return "\n".join(lines)


def export_onnx(
    module: MultiTaskModule,
    out: str | os.PathLike,
    size: tuple[int, int] = DEFAULT_SIZE,
    opset: int = DEFAULT_OPSET,
    runs: int = 20,
    threads: int | None = None,
) -> ExportReport:
    """Export a trained module to ONNX, check it against torch and time both.

    Args:
        module: the trained module (its ``net`` and tasks are exported; moved to the CPU
            and put in eval mode).
        out: the ``.onnx`` path; written only if the check passes.
        size: ``(H, W)`` of the example input used for tracing, checking and timing.
        opset: ONNX opset version.
        runs: timed runs per engine (median reported).
        threads: intra-op threads of both torch and onnxruntime while timing (default:
            torch's current setting). The same count for both keeps the comparison fair;
            on a loaded machine fewer threads than cores are often faster for both.

    Returns:
        the report (comparisons at two sizes, latencies).

    Raises:
        UserError: a size :func:`check_export_size` refuses, export failed, or
            onnxruntime disagrees with torch beyond tolerance.
    """
    out = Path(out)
    if out.is_dir():
        raise UserError(f"--out {out} is a folder; give a file name such as model.onnx")
    check_export_size(size, module.net.cfg.output_stride)
    if runs < 1:
        raise UserError(f"runs must be >= 1, got {runs}")
    previous_threads = torch.get_num_threads()
    threads = previous_threads if threads is None else threads
    if threads < 1:
        raise UserError(f"threads must be >= 1, got {threads}")
    module = module.cpu().eval()
    tasks = module.task_list
    wrapper = InferenceWrapper.of(module).eval()
    try:
        with atomic_path(out) as tmp:
            export_to_file(wrapper, tmp, size, opset)
            session = ort_session(tmp, threads)
            comparisons = []
            for i, s in enumerate((size, second_size(size))):
                image = example_input(s, seed=i)
                comparisons.append(
                    compare_outputs(
                        tasks, reference_outputs(module, image), _run_onnx(session, image)
                    )
                )
            bad = [c for c in comparisons if not c.ok]
            if bad:
                raise UserError(
                    f"onnxruntime disagrees with torch beyond tolerance at {bad[0].format()}"
                )
            image = example_input(size)
            tensor = torch.from_numpy(image)

            def torch_once() -> None:
                with torch.inference_mode():
                    wrapper(tensor)

            torch.set_num_threads(threads)
            torch_ms = median_latency_ms(torch_once, runs)
            ort_ms = median_latency_ms(lambda: _run_onnx(session, image), runs)
    finally:
        torch.set_num_threads(previous_threads)
    return ExportReport(
        path=out,
        size_bytes=out.stat().st_size,
        opset=opset,
        comparisons=comparisons,
        torch_ms=torch_ms,
        onnxruntime_ms=ort_ms,
        runs=runs,
        threads=threads,
    )


# --------------------------------------------------------------------------------------
# command line


def add_export_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``export onnx`` on the ``scenemtl`` subcommand parser."""
    export = subparsers.add_parser("export", help="export a trained model (ONNX)")
    formats = export.add_subparsers(dest="export_format", required=True, metavar="FORMAT")
    p = formats.add_parser(
        "onnx",
        help="ONNX model with every task's final outputs (depth in meters)",
        description="Export a checkpoint to ONNX: input 'image' [B,3,H,W] normalized; per "
        "task, in the checkpoint's order: a segmentation task T gives 'T_logits' [B,N,H,W] "
        "and 'T' [B,H,W] int64 class ids, a depth task T gives 'T' [B,H,W] meters (a course "
        "checkpoint: semseg_logits, semseg, depth); B, H, W dynamic. Checked against torch "
        "with onnxruntime, then both are timed at batch 1.",
    )
    p.add_argument(
        "--ckpt_path",
        "--ckpt-path",
        required=True,
        help="checkpoint (.ckpt), a folder written by Model.save, or hf://user/repo[@revision]",
    )
    p.add_argument("--out", required=True, help="output .onnx file")
    p.add_argument(
        "--size",
        type=size_hw,
        default=DEFAULT_SIZE,
        help="HxW of the example input for tracing, check and timing (default 128x256; one "
        "side above half the output stride, at most 16.8 MP)",
    )
    p.add_argument("--opset", type=int_at_least(7), default=DEFAULT_OPSET, help="ONNX opset")
    p.add_argument("--runs", type=int_at_least(1), default=20, help="timed runs per engine")
    p.add_argument(
        "--threads",
        type=int_at_least(1),
        default=None,
        help="intra-op threads for both engines while timing (default: torch's setting)",
    )
    p.set_defaults(func=cmd_export)
    return p


def cmd_export(args: argparse.Namespace) -> int:
    """Entry point of ``scenemtl export onnx``."""
    from scenemtl.api import load

    module = load(args.ckpt_path).module
    check_export_size(tuple(args.size), module.net.cfg.output_stride)  # before the banner
    print(f"exporting {args.ckpt_path} at {args.size[0]}x{args.size[1]} ...", flush=True)
    report = export_onnx(
        module,
        args.out,
        size=tuple(args.size),
        opset=args.opset,
        runs=args.runs,
        threads=args.threads,
    )
    print(report.format())
    sys.stdout.flush()
    return 0


__all__ = [
    "Comparison",
    "ExportReport",
    "InferenceWrapper",
    "TaskComparison",
    "add_export_parser",
    "check_export_size",
    "cmd_export",
    "compare_outputs",
    "export_onnx",
    "output_names",
    "reference_outputs",
]
