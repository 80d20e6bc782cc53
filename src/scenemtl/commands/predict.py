"""``scenemtl predict``: run a trained checkpoint on image files.

For every input image ``<stem>.<ext>`` and every task of the checkpoint, two files are
written to the output folder, plus one overview:

* ``<stem>_<task>.png``: the prediction in the task's dataset encoding (semseg: class
  ids, mode L; depth: the training data's depth PNG encoding, see scenemtl.data.format);
* ``<stem>_<task>_color.png``: the task's picture (class colours; log-scale depth);
* ``<stem>_panel.png``: RGB | each task's picture.

Predictions are made by the module's ``predict_step`` through ``Trainer.predict``
(TTA included), and written by a prediction writer. Images of any size are accepted (the
networks are fully convolutional) up to :data:`MAX_PIXELS`; images of the same size that
follow each other are batched together. An image that cannot be read, or is too large,
is reported on one line and skipped; the command then exits with status 1 after the rest.
"""

from __future__ import annotations

import argparse
import io
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler

from scenemtl.argtypes import int_at_least, positive_float
from scenemtl.data.format import atomic_write_bytes, read_rgb
from scenemtl.engine.inference import SamplePredictionWriter, run_prediction
from scenemtl.errors import UserError
from scenemtl.tta import check_scales
from scenemtl.visualize import prediction_panel, tile

if TYPE_CHECKING:
    from scenemtl.engine.module import MultiTaskModule
    from scenemtl.tasks.base import Task

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
PANEL_SUFFIX = "_panel.png"
MAX_PIXELS = 4096 * 4096
"""Largest image predicted on (16.8 MP): activations of a ResNet-34 DeepLabV3+ at that
size already take several GiB; larger photos are refused with their size."""


# --------------------------------------------------------------------------------------
# inputs


def find_images(path: str | Path) -> list[Path]:
    """The images to predict on.

    Args:
        path: one image file (used whatever its extension), or a folder: its ``.jpg``,
            ``.jpeg`` and ``.png`` files (any case), not recursive, sorted by name.

    Raises:
        UserError: the path does not exist, or the folder holds no image.
    """
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.exists():
        raise UserError(f"input {path} does not exist")
    if not path.is_dir():
        raise UserError(f"input {path} is neither an image file nor a folder")
    images = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise UserError(f"input folder {path} holds no .jpg or .png image")
    return images


def output_stems(paths: Sequence[Path]) -> list[str]:
    """The output name prefix of every input, unique even for ``a.jpg`` next to ``a.png``.

    A stem shared by several inputs keeps their extension (``a_jpg``, ``a_png``), so no
    input's outputs overwrite another's.
    """
    counts: dict[str, int] = {}
    for p in paths:
        counts[p.stem] = counts.get(p.stem, 0) + 1
    return [p.stem if counts[p.stem] == 1 else f"{p.stem}_{p.suffix.lstrip('.')}" for p in paths]


def resolve_device(name: str) -> torch.device:
    """``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"`` -> a usable device, or UserError."""
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise UserError(f"unknown device {name!r}; e.g. cpu, cuda, cuda:0") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"device {name!r} requested but CUDA is not available here")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UserError(f"device {name!r}: only {torch.cuda.device_count()} CUDA device(s)")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise UserError("device 'mps' requested but MPS is not available here")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise UserError(f"device {name!r} is not supported; use cpu, cuda or mps")
    return device


def load_module(
    ckpt_path: str | Path, tta_scales: Sequence[float] = (1.0,), tta_flip: bool = False
) -> MultiTaskModule:
    """The trained module of a checkpoint, in eval mode, with these TTA settings."""
    from scenemtl.engine.module import MultiTaskModule  # Lightning import is slow

    scales = check_scales(tta_scales)
    module = MultiTaskModule.from_checkpoint(ckpt_path, map_location="cpu")
    module.hparams["tta_scales"] = list(scales)
    module.hparams["tta_flip"] = bool(tta_flip)
    return module


# --------------------------------------------------------------------------------------
# inputs and outputs


class ImageFiles(Dataset):
    """Readable image files as ``{"rgb": uint8 [3,H,W], "index": int64}``."""

    def __init__(self, paths: Sequence[Path]) -> None:
        self.paths = list(paths)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        rgb = read_rgb(self.paths[index])
        return {
            "rgb": torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1))),
            "index": torch.tensor(index, dtype=torch.int64),
        }


def _png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


class ImageFileWriter(SamplePredictionWriter):
    """Writes each image's prediction files (each atomically) and reports them."""

    def __init__(
        self,
        out_dir: Path,
        paths: Sequence[Path],
        stems: Sequence[str],
        report: Callable[[str], None],
    ) -> None:
        super().__init__()
        self.out_dir = out_dir
        self.paths = list(paths)
        self.stems = list(stems)
        self.report = report
        self.written: list[Path] = []

    def write_sample(
        self, index: int, predictions: dict[str, np.ndarray], tasks: list[Task]
    ) -> None:
        path, stem = self.paths[index], self.stems[index]
        rgb = read_rgb(path)
        files: dict[str, Image.Image] = {}
        for task in tasks:
            files[f"_{task.name}.png"] = task.encode_png(predictions[task.name])
            files[f"_{task.name}_color.png"] = Image.fromarray(
                task.colorize(predictions[task.name])
            )
        files[PANEL_SUFFIX] = Image.fromarray(tile([prediction_panel(rgb, tasks, predictions)]))
        for suffix, image in files.items():
            atomic_write_bytes(self.out_dir / f"{stem}{suffix}", _png_bytes(image))
        self.written.append(path)
        words = "; ".join(w for t in tasks if (w := t.describe_prediction(predictions[t.name])))
        h, w = rgb.shape[:2]
        self.report(f"{path.name} ({h}x{w}) -> {self.out_dir / stem}_*.png ({words})")


@dataclass
class PredictSummary:
    """What :func:`predict_images` did: images written and ``(path, reason)`` failures."""

    written: list[Path] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)


class SameSizeBatches(Sampler[list[int]]):
    """Consecutive runs of equally sized images, at most ``batch_size`` each."""

    def __init__(self, sizes: Sequence[tuple[int, int]], batch_size: int) -> None:
        self.batches: list[list[int]] = []
        for i, size in enumerate(sizes):
            last = self.batches[-1] if self.batches else None
            if last and len(last) < batch_size and sizes[last[0]] == size:
                last.append(i)
            else:
                self.batches.append([i])

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def predict_images(
    module: MultiTaskModule,
    inputs: Sequence[Path],
    out_dir: str | Path,
    batch_size: int = 1,
    device: str | torch.device = "cpu",
    report: Callable[[str], None] = print,
    report_error: Callable[[str], None] = lambda line: print(line, file=sys.stderr),
) -> PredictSummary:
    """Predict on image files and write the outputs; unreadable images are skipped.

    Args:
        module: a trained module (see :func:`load_module`).
        inputs: image files.
        out_dir: output folder (created if missing).
        batch_size: at most this many equally sized images per forward pass.
        device: where the network runs.
        report: called with one line per image written.
        report_error: called with one line per image that failed.
    """
    if batch_size < 1:
        raise UserError(f"batch size must be >= 1, got {batch_size}")
    out_dir = Path(out_dir)
    summary = PredictSummary()
    readable: list[Path] = []
    sizes: list[tuple[int, int]] = []
    for path in inputs:
        try:
            h, w = read_rgb(path).shape[:2]
        except UserError as e:
            summary.failed.append((path, str(e)))
            report_error(f"scenemtl: skipped {e}")
            continue
        if h * w > MAX_PIXELS:
            reason = f"{path}: {w}x{h} pixels is above the {MAX_PIXELS / 1e6:.1f} MP limit"
            summary.failed.append((path, reason))
            report_error(f"scenemtl: skipped {reason}; downscale it first")
            continue
        readable.append(path)
        sizes.append((h, w))
    if not readable:
        return summary
    stems = output_stems(inputs)
    stem_of = dict(zip(inputs, stems, strict=True))
    writer = ImageFileWriter(out_dir, readable, [stem_of[p] for p in readable], report)
    loader = DataLoader(ImageFiles(readable), batch_sampler=SameSizeBatches(sizes, batch_size))
    run_prediction(module, loader, writer, device=resolve_device(str(device)))
    summary.written = writer.written
    return summary


# --------------------------------------------------------------------------------------
# command line


def add_predict_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``predict`` on the ``scenemtl`` subcommand parser."""
    p = subparsers.add_parser(
        "predict",
        help="prediction PNGs of every task for image files",
        description="Run a checkpoint on an image or a folder of images (.jpg/.png, not "
        "recursive) and write, per image and task, <stem>_<task>.png (the dataset "
        "encoding: class ids, depth PNG) and <stem>_<task>_color.png, plus <stem>_panel.png.",
    )
    p.add_argument("--ckpt_path", "--ckpt-path", required=True, help="checkpoint (.ckpt)")
    p.add_argument("--input", required=True, help="an image file or a folder of images")
    p.add_argument("--output", required=True, help="output folder (created if missing)")
    p.add_argument(
        "--tta-scales",
        type=positive_float,
        nargs="+",
        default=[1.0],
        metavar="S",
        help="test-time augmentation: average over these input scales (e.g. 0.75 1 1.25)",
    )
    p.add_argument("--tta-flip", action="store_true", help="test-time augmentation: also mirror")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N or mps")
    p.add_argument("--batch-size", type=int_at_least(1), default=1, help="images per forward")
    p.set_defaults(func=cmd_predict)
    return p


def cmd_predict(args: argparse.Namespace) -> int:
    """Entry point of ``scenemtl predict``; 0 if every image was written, 1 otherwise."""
    inputs = find_images(args.input)
    out_dir = Path(args.output)
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"output {out_dir} exists and is not a folder")
    source = Path(args.input)
    if source.is_dir() and out_dir.exists() and out_dir.resolve() == source.resolve():
        # the outputs are PNGs and would be taken as inputs by the next run
        raise UserError(f"output folder {out_dir} is the input folder; choose another")
    device = resolve_device(args.device)
    module = load_module(args.ckpt_path, args.tta_scales, args.tta_flip)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = predict_images(module, inputs, out_dir, batch_size=args.batch_size, device=device)
    if summary.failed:
        print(
            f"scenemtl: {len(summary.failed)} of {len(inputs)} image(s) could not be read; "
            f"{len(summary.written)} written to {out_dir}",
            file=sys.stderr,
        )
        return 1
    print(f"{len(summary.written)} image(s) written to {out_dir}")
    return 0
