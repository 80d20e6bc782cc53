"""``scenemtl predict``: run a trained checkpoint on image files.

For every input image ``<stem>.<ext>`` four files are written to the output folder:

* ``<stem>_semseg_color.png``: RGB, Cityscapes colours of the predicted classes;
* ``<stem>_semseg.png``: mode L, Cityscapes trainIds 0..18 (the dataset format);
* ``<stem>_depth.png``: 16-bit, depth in meters x 256 (the dataset's ``meters16``
  encoding; depth beyond 255.99 m saturates);
* ``<stem>_panel.png``: RGB | semseg colours | depth colormap (log scale, 4..300 m).

Images of any size are accepted (the networks are fully convolutional). Images of the same
size that follow each other are batched together. An image that cannot be read is
reported on one line and skipped; the command then exits with status 1 after the rest.
"""

from __future__ import annotations

import argparse
import io
import pickle
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from scenemtl.argtypes import int_at_least, positive_float
from scenemtl.data.format import METERS16, atomic_write_bytes, encode_depth, read_rgb
from scenemtl.data.transforms import normalize_rgb
from scenemtl.depth_space import decode_predictions
from scenemtl.errors import UserError
from scenemtl.tasks import DEPTH, SEMSEG
from scenemtl.tta import check_scales, is_identity, tta_outputs
from scenemtl.visualize import colorize_semseg, prediction_panel, tile

if TYPE_CHECKING:
    from scenemtl.engine.module import MultiTaskModule

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
OUTPUT_SUFFIXES = ("_semseg_color.png", "_semseg.png", "_depth.png", "_panel.png")


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
    if not path.is_dir():
        raise UserError(f"input {path} does not exist")
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


def load_module(ckpt_path: str | Path) -> MultiTaskModule:
    """The trained module of a checkpoint, in eval mode on the CPU; UserError if unusable."""
    from scenemtl.engine.module import MultiTaskModule  # Lightning import is slow

    try:
        return MultiTaskModule.from_checkpoint(ckpt_path, map_location="cpu")
    except pickle.UnpicklingError:
        # e.g. a text file passed as checkpoint: torch.load's weights-only unpickler
        # raises this, and from_checkpoint does not translate it
        raise UserError(f"{ckpt_path}: not a scenemtl checkpoint (UnpicklingError)") from None


# --------------------------------------------------------------------------------------
# inference


class Predictor:
    """A checkpoint ready for inference, with optional test-time augmentation.

    Args:
        ckpt_path: a checkpoint written by ``scenemtl fit``.
        device: where to run.
        tta_scales: TTA resize factors (``(1.0,)``: none).
        tta_flip: also average over the horizontally mirrored image.
    """

    def __init__(
        self,
        ckpt_path: str | Path,
        device: str | torch.device = "cpu",
        tta_scales: Sequence[float] = (1.0,),
        tta_flip: bool = False,
    ) -> None:
        self.device = resolve_device(str(device))
        self.tta_scales = check_scales(tta_scales)
        self.tta_flip = bool(tta_flip)
        self.module = load_module(ckpt_path)
        self.module.to(self.device)

    @torch.inference_mode()
    def __call__(self, rgb: Tensor) -> dict[str, Tensor]:
        """Predictions for a batch of same-size images.

        Args:
            rgb: uint8 [B,3,H,W].

        Returns:
            ``{"semseg": int64 [B,H,W] trainIds, "depth": float32 [B,H,W] meters}`` on CPU.
        """
        image = normalize_rgb(rgb.to(self.device))
        if is_identity(self.tta_scales, self.tta_flip):
            outputs = self.module(image)
        else:
            outputs = tta_outputs(
                self.module,
                image,
                self.tta_scales,
                self.tta_flip,
                depth_space=self.module.depth_space,
            )
        preds = decode_predictions(outputs, self.module.depth_space)
        return {k: v.cpu() for k, v in preds.items()}


# --------------------------------------------------------------------------------------
# outputs


def _png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def write_prediction(
    out_dir: Path, stem: str, rgb: np.ndarray, semseg: np.ndarray, depth_m: np.ndarray
) -> list[Path]:
    """Write the four output files of one image (each atomically).

    Args:
        out_dir: output folder (created if missing).
        stem: file name prefix.
        rgb: uint8 [H,W,3], the input image.
        semseg: [H,W] trainIds 0..18.
        depth_m: float [H,W] meters (> 0).

    Returns:
        the written paths, in :data:`OUTPUT_SUFFIXES` order.
    """
    labels = np.asarray(semseg).astype(np.uint8)
    color = colorize_semseg(labels)
    panel = tile([prediction_panel(rgb, labels, depth_m)])
    images = (
        Image.fromarray(color),
        Image.fromarray(labels),
        encode_depth(depth_m, METERS16),
        Image.fromarray(panel),
    )
    paths = [out_dir / f"{stem}{suffix}" for suffix in OUTPUT_SUFFIXES]
    for path, image in zip(paths, images, strict=True):
        atomic_write_bytes(path, _png_bytes(image))
    return paths


@dataclass
class PredictSummary:
    """What :func:`predict_images` did: images written and ``(path, reason)`` failures."""

    written: list[Path] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)


def _batches(
    items: Iterable[tuple[Path, str, np.ndarray]], batch_size: int
) -> Iterable[list[tuple[Path, str, np.ndarray]]]:
    """Consecutive runs of equally sized images, at most ``batch_size`` each."""
    batch: list[tuple[Path, str, np.ndarray]] = []
    for item in items:
        if batch and (len(batch) == batch_size or batch[0][2].shape != item[2].shape):
            yield batch
            batch = []
        batch.append(item)
    if batch:
        yield batch


def predict_images(
    predictor: Callable[[Tensor], dict[str, Tensor]],
    inputs: Sequence[Path],
    out_dir: str | Path,
    batch_size: int = 1,
    report: Callable[[str], None] = print,
    report_error: Callable[[str], None] = lambda line: print(line, file=sys.stderr),
) -> PredictSummary:
    """Predict on image files and write the outputs; unreadable images are skipped.

    Args:
        predictor: uint8 [B,3,H,W] -> ``{"semseg": [B,H,W], "depth": [B,H,W] meters}``,
            e.g. a :class:`Predictor`.
        inputs: image files.
        out_dir: output folder (created if missing).
        batch_size: at most this many equally sized images per forward pass.
        report: called with one line per image written.
        report_error: called with one line per image that failed.

    Returns:
        the images written and the failures.
    """
    if batch_size < 1:
        raise UserError(f"batch size must be >= 1, got {batch_size}")
    out_dir = Path(out_dir)
    summary = PredictSummary()

    def readable() -> Iterable[tuple[Path, str, np.ndarray]]:
        for path, stem in zip(inputs, output_stems(inputs), strict=True):
            try:
                yield path, stem, read_rgb(path)
            except UserError as e:
                summary.failed.append((path, str(e)))
                report_error(f"scenemtl: skipped {e}")

    for batch in _batches(readable(), batch_size):
        rgb = torch.from_numpy(np.stack([item[2] for item in batch])).permute(0, 3, 1, 2)
        preds = predictor(rgb.contiguous())
        for i, (path, stem, image) in enumerate(batch):
            semseg = preds[SEMSEG.name][i].numpy()
            depth = preds[DEPTH.name][i].numpy()
            write_prediction(out_dir, stem, image, semseg, depth)
            summary.written.append(path)
            h, w = image.shape[:2]
            report(
                f"{path.name} ({h}x{w}) -> {out_dir / stem}_*.png "
                f"(median depth {float(np.median(depth)):.1f} m)"
            )
    return summary


# --------------------------------------------------------------------------------------
# command line


def add_predict_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``predict`` on the ``scenemtl`` subcommand parser."""
    p = subparsers.add_parser(
        "predict",
        help="segmentation + depth PNGs for image files",
        description="Run a checkpoint on an image or a folder of images (.jpg/.png, not "
        "recursive) and write, per image, <stem>_semseg_color.png, <stem>_semseg.png "
        "(trainIds), <stem>_depth.png (16-bit meters x 256) and <stem>_panel.png.",
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
    predictor = Predictor(args.ckpt_path, args.device, args.tta_scales, args.tta_flip)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = predict_images(predictor, inputs, out_dir, batch_size=args.batch_size)
    if summary.failed:
        print(
            f"scenemtl: {len(summary.failed)} of {len(inputs)} image(s) could not be read; "
            f"{len(summary.written)} written to {out_dir}",
            file=sys.stderr,
        )
        return 1
    print(f"{len(summary.written)} image(s) written to {out_dir}")
    return 0
