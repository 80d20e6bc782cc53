"""``submission.zip``: everything needed to reproduce and grade one run.

Layout of the archive (all paths relative, forward slashes)::

    config.yaml                    the run's configuration (if the run has one)
    metrics.csv                    the run's metric trace (if the run has one)
    best.ckpt                      the checkpoint the predictions come from
    source.zip                     the scenemtl package that ran (*.py, *.yaml)
    predictions/<task>/{i}.png     one per task and test-split image, in the task's
                                   dataset encoding (semseg: class ids, mode L; depth:
                                   the dataset's depth encoding)
    manifest.json                  versions, dataset, and sha256 + size of every member

``manifest.json`` is written last because it hashes every other member. The grader
(:mod:`scenemtl.commands.grader`) needs only ``predictions/``; the rest is the record of the run.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import platform
import zipfile
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from scenemtl.atomic import atomic_output
from scenemtl.errors import UserError

if TYPE_CHECKING:
    import numpy as np
    import torch

    from scenemtl.data.datamodule import SceneDataModule
    from scenemtl.data.format import DatasetInfo
    from scenemtl.tasks.base import Task

# torch, numpy and the data code are imported inside the functions: the grader imports
# this module's layout constants and must stay cheap to import for the CLI.

SUBMISSION_NAME = "submission.zip"
SUBMISSION_FORMAT = "scenemtl-submission"
SUBMISSION_FORMAT_VERSION = 1

PREDICTIONS_DIR = "predictions"
MANIFEST_NAME = "manifest.json"
CHECKPOINT_NAME = "best.ckpt"
CONFIG_NAME = "config.yaml"
METRICS_NAME = "metrics.csv"
SOURCE_NAME = "source.zip"
SOURCE_SUFFIXES = (".py", ".yaml")

# Fixed member timestamp (the earliest a zip can hold): the same content gives the same
# bytes, so source.zip's hash identifies the source and not the moment it was packed.
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)
_CHUNK = 1 << 20


def prediction_name(task: str, index: int) -> str:
    """Archive path of one prediction, e.g. ``predictions/semseg/3.png``."""
    return f"{PREDICTIONS_DIR}/{task}/{index}.png"


def _zip_info(name: str, compress: bool) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=_ZIP_EPOCH)
    info.compress_type = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    info.external_attr = 0o100644 << 16  # a regular file, rw-r--r--
    info.create_system = 3  # unix, so the mode bits above mean what they say
    return info


class _MemberWriter:
    """Adds members to an open zip and remembers each one's sha256 and size."""

    def __init__(self, zf: zipfile.ZipFile) -> None:
        self.zf = zf
        self.members: dict[str, dict[str, Any]] = {}

    def add_bytes(self, name: str, payload: bytes, compress: bool = True) -> None:
        self.zf.writestr(_zip_info(name, compress), payload)
        self.members[name] = {"sha256": hashlib.sha256(payload).hexdigest(), "bytes": len(payload)}

    def add_stream(self, name: str, src: BinaryIO, size: int, compress: bool = True) -> None:
        """Copy a (possibly large) file in chunks, hashing it on the way."""
        digest = hashlib.sha256()
        with self.zf.open(_zip_info(name, compress), "w", force_zip64=size >= 2**31) as dst:
            while chunk := src.read(_CHUNK):
                digest.update(chunk)
                dst.write(chunk)
        self.members[name] = {"sha256": digest.hexdigest(), "bytes": size}

    def add_file(self, name: str, path: Path, compress: bool = True) -> None:
        with open(path, "rb") as src:
            self.add_stream(name, src, path.stat().st_size, compress)


def package_source_files(package_dir: Path | None = None) -> list[Path]:
    """The ``*.py`` and ``*.yaml`` files of the scenemtl package, sorted.

    Args:
        package_dir: the package directory (default: the one this module was imported
            from, i.e. the code that is actually running).
    """
    if package_dir is None:
        package_dir = Path(__file__).resolve().parents[1]  # the scenemtl package
    return sorted(
        p
        for p in package_dir.rglob("*")
        if p.suffix in SOURCE_SUFFIXES and p.is_file() and "__pycache__" not in p.parts
    )


def source_zip_bytes(package_dir: Path | None = None) -> bytes:
    """A zip of the running package's source, members named ``scenemtl/<relative path>``."""
    if package_dir is None:
        package_dir = Path(__file__).resolve().parents[1]  # the scenemtl package
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for path in package_source_files(package_dir):
            rel = path.relative_to(package_dir).as_posix()
            zf.writestr(_zip_info(f"{package_dir.name}/{rel}", compress=True), path.read_bytes())
    return buffer.getvalue()


def _versions() -> dict[str, str]:
    import torch

    from scenemtl import __version__

    out = {"scenemtl": __version__, "torch": torch.__version__, "python": platform.python_version()}
    for dist in ("lightning", "torchmetrics", "numpy", "pillow"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out


def _resolve_data(
    data: SceneDataModule | str | os.PathLike,
) -> tuple[Path, DatasetInfo, int | None]:
    """(dataset root, dataset.json, the datamodule's evaluation batch size or None)."""
    from scenemtl.data.format import read_info

    if isinstance(data, (str, os.PathLike)):
        root = Path(data)
        return root, read_info(root), None
    return Path(data.data_root), data.info, int(data.val_batch_size)


def _png(image: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def slim_checkpoint_bytes(path: Path) -> bytes:
    """The part of a Lightning checkpoint that predicts: weights and hyperparameters.

    Optimizer and loop states (two thirds of an Adam checkpoint) only serve resuming,
    which the run directory's own checkpoints are for.
    """
    import torch

    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    slim = {k: ckpt[k] for k in _SLIM_KEYS if k in ckpt}
    buf = io.BytesIO()
    torch.save(slim, buf)
    return buf.getvalue()


_SLIM_KEYS = ("state_dict", "hyper_parameters", "epoch", "global_step", "pytorch-lightning_version")


def write_submission(
    run_dir: str | os.PathLike,
    best_ckpt: str | os.PathLike,
    data: SceneDataModule | str | os.PathLike,
    config_path: str | os.PathLike | None = None,
    metrics_path: str | os.PathLike | None = None,
    *,
    split: str = "test",
    batch_size: int | None = None,
    device: torch.device | str = "cpu",
    num_workers: int = 0,
) -> Path:
    """Write ``run_dir/submission.zip`` atomically (a reader sees the old file or the new).

    Predictions come from ``best_ckpt``, loaded afresh with
    :meth:`~scenemtl.engine.module.MultiTaskModule.from_checkpoint` (weights only), never
    from whatever weights a trainer holds at the end of training, and are made by its
    ``predict_step`` (``Trainer.predict`` with a prediction writer).

    Args:
        run_dir: the run directory; the archive is written there.
        best_ckpt: the checkpoint to predict with and to include (as ``best.ckpt``).
        data: a :class:`~scenemtl.data.datamodule.SceneDataModule` or a dataset root.
        config_path: the run's config.yaml (``None``: not included).
        metrics_path: the run's metrics.csv (``None``: ``run_dir/metrics.csv`` if present).
        split: the split to predict (the design's submissions are of ``test``).
        batch_size: images per forward pass (default: the datamodule's evaluation batch
            size, else 8).
        device: where the network runs.
        num_workers: DataLoader processes decoding the images (0: this process).

    Returns:
        the path of the written archive.

    Raises:
        UserError: missing checkpoint/config/metrics file, dataset without that split.
    """
    from torch.utils.data import DataLoader

    from scenemtl.data.dataset import SceneDataset
    from scenemtl.engine.inference import SamplePredictionWriter, run_prediction
    from scenemtl.engine.module import MultiTaskModule

    class ZipWriter(SamplePredictionWriter):
        def __init__(self, members: _MemberWriter) -> None:
            super().__init__()
            self.members = members
            self.count = 0

        def write_sample(
            self, index: int, predictions: dict[str, np.ndarray], tasks: list[Task]
        ) -> None:
            for task in tasks:
                png = _png(task.encode_png(predictions[task.name]))
                self.members.add_bytes(prediction_name(task.name, index), png, False)
            self.count += 1

    run_dir = Path(run_dir)
    best_ckpt = Path(best_ckpt)
    if not best_ckpt.is_file():
        raise UserError(f"checkpoint {best_ckpt} not found; cannot write a submission")
    optional: dict[str, Path | None] = {
        CONFIG_NAME: Path(config_path) if config_path is not None else None,
        METRICS_NAME: Path(metrics_path) if metrics_path is not None else None,
    }
    for name, path in optional.items():
        if path is not None and not path.is_file():
            raise UserError(f"{name} for the submission: {path} not found")
    if optional[METRICS_NAME] is None and (run_dir / METRICS_NAME).is_file():
        optional[METRICS_NAME] = run_dir / METRICS_NAME

    root, info, data_batch = _resolve_data(data)
    if split not in info.splits:
        raise UserError(f"dataset {info.name!r} at {root} has no {split!r} split to predict")
    batch_size = batch_size or data_batch or 8
    if batch_size < 1:
        raise UserError(f"submission batch size must be >= 1, got {batch_size}")
    dataset = SceneDataset(root, split, with_gt=False, info=info)
    module = MultiTaskModule.from_checkpoint(best_ckpt)
    tasks = module.task_list
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)

    target = run_dir / SUBMISSION_NAME
    with atomic_output(target) as raw, zipfile.ZipFile(raw, "w") as zf:
        writer = _MemberWriter(zf)
        for name, path in optional.items():
            if path is not None:
                writer.add_file(name, path)
        # float weights, PNG and zip data barely deflate: storing them saves time
        writer.add_bytes(CHECKPOINT_NAME, slim_checkpoint_bytes(best_ckpt), compress=False)
        writer.add_bytes(SOURCE_NAME, source_zip_bytes(), compress=False)
        predictions = ZipWriter(writer)
        run_prediction(module, loader, predictions, device=device)
        written = predictions.count
        manifest = {
            "format": SUBMISSION_FORMAT,
            "format_version": SUBMISSION_FORMAT_VERSION,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "versions": _versions(),
            "dataset": {
                "name": info.name,
                "version": info.version,
                "image_size": list(info.image_size),
                "depth_encoding": info.depth_encoding,
                "split": split,
                "split_size": len(dataset),
            },
            "predictions": {
                "count": written,
                "tasks": {t.name: t.spec() for t in tasks},
            },
            "checkpoint": CHECKPOINT_NAME,
            "members": writer.members,
        }
        text = json.dumps(manifest, indent=2, sort_keys=False) + "\n"
        zf.writestr(_zip_info(MANIFEST_NAME, compress=True), text.encode("utf-8"))
    return target
