"""``scenemtl predict``: run a trained checkpoint on image files.

For every input image ``<stem>.<ext>`` and every task of the checkpoint, two files are
written to the output folder, plus one overview:

* ``<stem>_<task>.png``: the prediction in the task's dataset encoding (semseg: class
  ids, mode L; depth: the training data's depth PNG encoding, see scenemtl.data.format);
* ``<stem>_<task>_color.png``: the task's picture (class colours; log-scale depth);
* ``<stem>_panel.png``: RGB | each task's picture.

Predictions are made by :meth:`scenemtl.api.Model.run` (the module's ``predict_step``
through ``Trainer.predict``, TTA included), the path of ``Model.predict``, and written by
a prediction writer. The checkpoint may also be a model folder or ``hf://user/repo``
(:func:`scenemtl.load`). Images of any size are accepted (the networks are fully
convolutional) up to :data:`~scenemtl.api.MAX_PIXELS`; images of the same size that
follow each other are batched together. An image that cannot be read, or is too large,
is reported on one line and skipped; the command then exits with status 1 after the rest.
"""

from __future__ import annotations

import argparse
import io
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image

from scenemtl.api import Model, image_size, load, resolve_device
from scenemtl.argtypes import int_at_least, positive_float
from scenemtl.atomic import atomic_write_bytes
from scenemtl.data.format import read_rgb
from scenemtl.engine.inference import SamplePredictionWriter
from scenemtl.errors import UserError
from scenemtl.tta import check_scales
from scenemtl.visualize import prediction_panel, tile

if TYPE_CHECKING:
    from scenemtl.tasks.base import Task

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
PANEL_SUFFIX = "_panel.png"


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


def predict_images(
    model: Model,
    inputs: Sequence[Path],
    out_dir: str | Path,
    batch_size: int = 1,
    device: str | torch.device = "cpu",
    tta_scales: Sequence[float] = (1.0,),
    tta_flip: bool = False,
    report: Callable[[str], None] = print,
    report_error: Callable[[str], None] = lambda line: print(line, file=sys.stderr),
) -> PredictSummary:
    """Predict on image files and write the outputs; unreadable images are skipped.

    Args:
        model: a trained model (:func:`scenemtl.load`).
        inputs: image files.
        out_dir: output folder (created if missing).
        batch_size: at most this many equally sized images per forward pass.
        device: where the network runs.
        tta_scales, tta_flip: test-time augmentation (see :mod:`scenemtl.tta`).
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
            sizes.append(image_size(path))
        except UserError as e:
            summary.failed.append((path, str(e)))
            report_error(f"scenemtl: skipped {e}")
            continue
        readable.append(path)
    if not readable:
        return summary
    stems = output_stems(inputs)
    stem_of = dict(zip(inputs, stems, strict=True))
    writer = ImageFileWriter(out_dir, readable, [stem_of[p] for p in readable], report)
    model.to(device)
    model.run(readable, sizes, writer, batch_size, tta_scales, tta_flip)
    summary.written = writer.written
    return summary


# --------------------------------------------------------------------------------------
# video


VIDEO_CHUNK_FRAMES = 32
"""Frames decoded and handed to the network at a time: memory stays bounded by this many
frames (and their panels) whatever the length of the video."""


class PanelCollector(SamplePredictionWriter):
    """Keeps each frame's panel (RGB | each task's picture) and, optionally, writes the
    frame's per-task PNGs (as ``predict`` writes them for an image)."""

    def __init__(self, frames: np.ndarray, first: int, frames_dir: Path | None) -> None:
        super().__init__()
        self.frames = frames
        self.first = first
        self.frames_dir = frames_dir
        self.panels: dict[int, np.ndarray] = {}

    def write_sample(
        self, index: int, predictions: dict[str, np.ndarray], tasks: list[Task]
    ) -> None:
        self.panels[index] = tile([prediction_panel(self.frames[index], tasks, predictions)])
        if self.frames_dir is not None:
            stem = f"frame_{self.first + index:06d}"
            for task in tasks:
                image = task.encode_png(predictions[task.name])
                atomic_write_bytes(self.frames_dir / f"{stem}_{task.name}.png", _png_bytes(image))


def predict_video(
    model: Model,
    source: Path,
    output: Path,
    frames_dir: Path | None = None,
    batch_size: int = 1,
    tta_scales: Sequence[float] = (1.0,),
    tta_flip: bool = False,
    progress: bool = True,
) -> int:
    """Predict every frame of video ``source`` and write a video of panels at its frame
    rate to ``output`` (and each task's frames as PNGs to ``frames_dir``); the number of
    frames written.

    Raises:
        UserError: the input cannot be read, a frame is larger than ``MAX_PIXELS``.
    """
    from tqdm import tqdm

    from scenemtl.api import MAX_PIXELS
    from scenemtl.video import VideoReader, VideoWriter

    chunk = max(batch_size, VIDEO_CHUNK_FRAMES)
    with VideoReader(source) as video:
        if video.width * video.height > MAX_PIXELS:
            raise UserError(
                f"video {source}: frames of {video.height}x{video.width} exceed {MAX_PIXELS} pixels"
            )
        bar = tqdm(total=video.frames or None, unit="frame", disable=not progress, file=sys.stderr)
        with VideoWriter(output, video.fps) as writer, bar:
            done = 0
            for frames in video.batches(chunk):
                collector = PanelCollector(frames, done, frames_dir)
                items = list(frames)
                sizes = [(video.height, video.width)] * len(items)
                model.run(items, sizes, collector, batch_size, tta_scales, tta_flip)
                for index in range(len(items)):
                    writer.write(collector.panels[index])
                done += len(items)
                bar.update(len(items))
        return done


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
    p.add_argument(
        "--ckpt_path",
        "--ckpt-path",
        required=True,
        help="checkpoint (.ckpt), a folder written by Model.save, or hf://user/repo[@revision]",
    )
    p.add_argument(
        "--input", required=True, help="an image file, a folder of images, or a video file"
    )
    p.add_argument(
        "--output",
        required=True,
        help="output folder (created if missing); for a video input, the video of panels "
        "to write (e.g. out.mp4)",
    )
    p.add_argument(
        "--frames",
        default=None,
        metavar="DIR",
        help="video input: also write each frame's per-task PNGs to DIR",
    )
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
    from scenemtl.video import is_video

    if is_video(args.input):
        return _cmd_predict_video(args)
    if args.frames is not None:
        raise UserError("--frames is for a video input")
    inputs = find_images(args.input)
    out_dir = Path(args.output)
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"output {out_dir} exists and is not a folder")
    source = Path(args.input)
    if source.is_dir() and out_dir.exists() and out_dir.resolve() == source.resolve():
        # the outputs are PNGs and would be taken as inputs by the next run
        raise UserError(f"output folder {out_dir} is the input folder; choose another")
    device = resolve_device(args.device)
    scales = check_scales(args.tta_scales)
    model = load(args.ckpt_path)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = predict_images(
        model,
        inputs,
        out_dir,
        batch_size=args.batch_size,
        device=device,
        tta_scales=scales,
        tta_flip=args.tta_flip,
    )
    if summary.failed:
        print(
            f"scenemtl: {len(summary.failed)} of {len(inputs)} image(s) could not be read; "
            f"{len(summary.written)} written to {out_dir}",
            file=sys.stderr,
        )
        return 1
    print(f"{len(summary.written)} image(s) written to {out_dir}")
    return 0


def _cmd_predict_video(args: argparse.Namespace) -> int:
    from scenemtl.video import is_video

    source, output = Path(args.input), Path(args.output)
    if not is_video(output):
        raise UserError(f"output {output}: a video input writes a video; name it e.g. out.mp4")
    if output.exists() and output.resolve() == source.resolve():
        raise UserError(f"output {output} is the input video; choose another name")
    frames_dir = Path(args.frames) if args.frames is not None else None
    if frames_dir is not None and frames_dir.exists() and not frames_dir.is_dir():
        raise UserError(f"--frames {frames_dir} exists and is not a folder")
    device = resolve_device(args.device)
    scales = check_scales(args.tta_scales)
    model = load(args.ckpt_path).to(device)
    output.parent.mkdir(parents=True, exist_ok=True)
    if frames_dir is not None:
        frames_dir.mkdir(parents=True, exist_ok=True)
    count = predict_video(model, source, output, frames_dir, args.batch_size, scales, args.tta_flip)
    print(f"{count} frame(s) -> {output}" + (f" and {frames_dir}" if frames_dir else ""))
    return 0
