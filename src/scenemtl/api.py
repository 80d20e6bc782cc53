"""Using a trained model from Python: :func:`load` and :class:`Model`.

::

    import scenemtl
    model = scenemtl.load("runs/demo/version_0/checkpoints/best.ckpt")  # a .ckpt, folder, hf://
    prediction = model.predict("street.jpg")  # {"semseg": int64 [H,W], "depth": float32 [H,W]}
    model.save("demo-model")                  # safetensors + config.json + model card

Predictions are made by the module's ``predict_step`` through
:func:`~scenemtl.engine.inference.run_prediction`, the path ``scenemtl predict`` and the
submission writer take (``predict`` calls :meth:`Model.run`). Images are batched by size:
consecutive images of one size share a forward pass, at most ``batch_size`` of them and
at most :data:`MAX_PIXELS` pixels in all, so a batch never needs more memory than one
image of the largest size accepted (times the square of the largest TTA scale,
:data:`scenemtl.tta.MAX_SCALE`).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler

from scenemtl.data.format import read_rgb, rgb8
from scenemtl.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from scenemtl.engine.inference import SamplePredictionWriter, run_prediction
from scenemtl.errors import UserError
from scenemtl.tta import check_scales

if TYPE_CHECKING:
    from scenemtl.engine.module import MultiTaskModule
    from scenemtl.tasks.base import Task

MAX_PIXELS = 4096 * 4096
"""Largest image predicted on (16.8 MP), and the most pixels of one batch: activations of
a ResNet-34 DeepLabV3+ at that size already take several GiB; larger images are refused
with their size."""

DEFAULT_TTA_SCALES = (0.75, 1.0, 1.25)
"""The scales of ``predict(..., tta=True)`` (with mirrored views): the README's best
setting on the demo model."""

ImageInput = str | os.PathLike | Image.Image | np.ndarray
"""A path to an image file, a PIL image, or a uint8 array [H,W,3] (RGB)."""


# --------------------------------------------------------------------------------------
# devices and inputs


def resolve_device(name: str | torch.device) -> torch.device:
    """``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"`` -> a usable device, or UserError."""
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError, TypeError):
        raise UserError(f"unknown device {name!r}; e.g. cpu, cuda, cuda:0") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"device {str(name)!r} requested but CUDA is not available here")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UserError(
                f"device {str(name)!r}: only {torch.cuda.device_count()} CUDA device(s)"
            )
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise UserError("device 'mps' requested but MPS is not available here")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise UserError(f"device {str(name)!r} is not supported; use cpu, cuda or mps")
    return device


def _describe(item: Any, index: int) -> str:
    if isinstance(item, (str, os.PathLike)):
        return str(item)
    return f"image {index} ({type(item).__name__})"


def as_rgb(item: ImageInput, index: int = 0) -> np.ndarray:
    """One input as uint8 [H,W,3] RGB (a file is read; a PIL image converted as a file
    would be, :func:`scenemtl.data.format.rgb8`).

    Raises:
        UserError: unreadable file, array of another shape or dtype, another type.
    """
    if isinstance(item, (str, os.PathLike)):
        path = Path(item)
        if not path.is_file():
            raise UserError(f"{path}: no such image file")
        return read_rgb(path)
    if isinstance(item, Image.Image):
        return rgb8(item, _describe(item, index))
    if isinstance(item, np.ndarray):
        if item.dtype != np.uint8 or item.ndim != 3 or item.shape[2] != 3:
            raise UserError(
                f"image {index}: array of shape {item.shape} and dtype {item.dtype}; "
                "expected uint8 [H,W,3] RGB"
            )
        return item
    raise UserError(
        f"image {index}: {type(item).__name__} is not an image; give a path, a PIL image "
        "or a uint8 [H,W,3] array"
    )


def image_size(item: ImageInput, index: int = 0) -> tuple[int, int]:
    """``(H, W)`` of an input, checked readable and at most :data:`MAX_PIXELS`.

    Raises:
        UserError: see :func:`as_rgb`, or too many pixels (with the size).
    """
    h, w = as_rgb(item, index).shape[:2]
    if h == 0 or w == 0:
        raise UserError(f"{_describe(item, index)}: empty image ({w}x{h})")
    if h * w > MAX_PIXELS:
        raise UserError(
            f"{_describe(item, index)}: {w}x{h} pixels is above the "
            f"{MAX_PIXELS / 1e6:.1f} MP limit; downscale it first"
        )
    return int(h), int(w)


class Images(Dataset):
    """Inputs as ``{"rgb": uint8 [3,H,W], "index": int64}``; files are read when their
    batch is made, so at most one batch of images is decoded at a time."""

    def __init__(self, items: Sequence[ImageInput]) -> None:
        self.items = list(items)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        rgb = as_rgb(self.items[index], index)
        return {
            "rgb": torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1))),
            "index": torch.tensor(index, dtype=torch.int64),
        }


class SameSizeBatches(Sampler[list[int]]):
    """Consecutive runs of equally sized images: at most ``batch_size`` images and at most
    ``max_pixels`` pixels per batch (a single larger image still makes a batch)."""

    def __init__(
        self, sizes: Sequence[tuple[int, int]], batch_size: int, max_pixels: int | None = None
    ) -> None:
        if batch_size < 1:
            raise UserError(f"batch size must be >= 1, got {batch_size}")
        max_pixels = MAX_PIXELS if max_pixels is None else max_pixels
        self.batches: list[list[int]] = []
        for i, size in enumerate(sizes):
            last = self.batches[-1] if self.batches else None
            if (
                last
                and len(last) < batch_size
                and sizes[last[0]] == size
                and (len(last) + 1) * size[0] * size[1] <= max_pixels
            ):
                last.append(i)
            else:
                self.batches.append([i])

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class _Collect(SamplePredictionWriter):
    """Keeps every image's predictions, by input index."""

    def __init__(self) -> None:
        super().__init__()
        self.results: dict[int, dict[str, np.ndarray]] = {}

    def write_sample(
        self, index: int, predictions: dict[str, np.ndarray], tasks: list[Task]
    ) -> None:
        self.results[index] = predictions


def tta_setting(
    tta: bool | Sequence[float], flip: bool | None = None
) -> tuple[tuple[float, ...], bool]:
    """``predict``'s ``tta`` and ``flip`` arguments as (scales, flip).

    ``tta=False``: one plain pass; ``True``: :data:`DEFAULT_TTA_SCALES` and mirrored
    views; a list of scales: those and mirrored views. ``flip`` overrides mirroring.

    Raises:
        UserError: a scale that is not positive or above :data:`scenemtl.tta.MAX_SCALE`.
    """
    if isinstance(tta, bool):
        scales = DEFAULT_TTA_SCALES if tta else (1.0,)
        mirror = tta if flip is None else bool(flip)
    else:
        scales = check_scales(tta)
        mirror = True if flip is None else bool(flip)
    return check_scales(scales), mirror


# --------------------------------------------------------------------------------------
# the model


class Model:
    """A trained network with what it needs to predict: its tasks (class table, depth
    encoding) and its input normalization.

    Made by :func:`load`; ``module`` is the underlying
    :class:`~scenemtl.engine.module.MultiTaskModule` (in eval mode).
    """

    def __init__(
        self,
        module: MultiTaskModule,
        source: str | None = None,
        extras: dict[str, str] | None = None,
    ) -> None:
        self.module = module.eval()
        self.device = torch.device("cpu")
        self.source = source
        """Where the model was loaded from (a checkpoint, a folder, ``hf://...``)."""
        self.extras = dict(extras or {})
        """Text files of the folder it was loaded from (model card, training config),
        written again by :meth:`save`."""

    # -- what it is ----------------------------------------------------------------------

    @property
    def tasks(self) -> list[str]:
        """Task names, in the order the network emits them (the keys of a prediction)."""
        return list(self.module.tasks)

    @property
    def task_specs(self) -> dict[str, dict[str, Any]]:
        """Task name -> spec (kind and dataset facts: class table, depth encoding)."""
        return self.module.current_task_specs()

    @property
    def classes(self) -> list[dict[str, Any]] | None:
        """The class table of the first task with one (a segmentation task): id ->
        ``{"name", "color"}``; None without one."""
        tables = (t.class_table() for t in self.module.task_list)
        return next((table for table in tables if table is not None), None)

    @property
    def class_names(self) -> list[str] | None:
        """Class names by id (see :attr:`classes`)."""
        return None if self.classes is None else [c["name"] for c in self.classes]

    @property
    def depth_encoding(self) -> str | None:
        """The training data's depth PNG encoding (``disparity8``, ``meters16``); None
        without a depth task. Predictions are in meters whatever the encoding."""
        spec = next((s for s in self.task_specs.values() if s.get("kind") == "depth"), None)
        return None if spec is None else str(spec["encoding"])

    @property
    def normalization(self) -> dict[str, Any]:
        """How an RGB image enters the network: ``(rgb / 255 - mean) / std`` per channel."""
        return {"scale": 255.0, "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}

    @property
    def card(self) -> str | None:
        """The model card (README.md) of the folder it was loaded from, else None."""
        return self.extras.get("README.md")

    def __repr__(self) -> str:
        return f"Model(tasks={self.tasks}, device={self.device}, source={self.source!r})"

    # -- where it runs -------------------------------------------------------------------

    def to(self, device: str | torch.device) -> Model:
        """Move the network to ``device`` (``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``);
        returns the model itself."""
        self.device = resolve_device(device)
        self.module.to(self.device)
        return self

    def cpu(self) -> Model:
        return self.to("cpu")

    def cuda(self, index: int | None = None) -> Model:
        return self.to("cuda" if index is None else f"cuda:{index}")

    # -- predictions ---------------------------------------------------------------------

    @contextlib.contextmanager
    def _tta(self, scales: Sequence[float], flip: bool) -> Iterator[None]:
        hparams = self.module.hparams
        before = (hparams.get("tta_scales"), hparams.get("tta_flip", False))
        hparams["tta_scales"] = list(check_scales(scales))
        hparams["tta_flip"] = bool(flip)
        try:
            yield
        finally:
            hparams["tta_scales"], hparams["tta_flip"] = before

    def run(
        self,
        items: Sequence[ImageInput],
        sizes: Sequence[tuple[int, int]],
        writer: SamplePredictionWriter,
        batch_size: int = 1,
        tta_scales: Sequence[float] = (1.0,),
        tta_flip: bool = False,
    ) -> None:
        """Predict on checked inputs and hand each image's predictions to ``writer``.

        The one inference path of :meth:`predict` and ``scenemtl predict``.

        Args:
            items: inputs, each checked by :func:`image_size`.
            sizes: their ``(H, W)``.
            writer: receives ``write_sample(index, predictions, tasks)`` per image, with
                ``index`` into ``items``.
            batch_size: at most this many equally sized images per forward pass.
            tta_scales, tta_flip: test-time augmentation (see :mod:`scenemtl.tta`).
        """
        if len(items) != len(sizes):
            raise ValueError(f"{len(items)} inputs but {len(sizes)} sizes")
        if not items:
            return
        loader = DataLoader(Images(items), batch_sampler=SameSizeBatches(sizes, batch_size))
        with self._tta(tta_scales, tta_flip):
            run_prediction(self.module, loader, writer, device=self.device)

    def predict(
        self,
        images: ImageInput | Sequence[ImageInput],
        tta: bool | Sequence[float] = False,
        flip: bool | None = None,
        batch_size: int = 4,
    ) -> dict[str, np.ndarray] | list[dict[str, np.ndarray]]:
        """Predictions for one image or a list of images.

        Args:
            images: a path, a PIL image, a uint8 [H,W,3] RGB array, or a list of them.
            tta: test-time augmentation: False, True (scales 0.75, 1, 1.25 and mirrored
                views), or a list of scales (with mirrored views).
            flip: mirrored views on (True) or off (False) whatever ``tta`` says.
            batch_size: at most this many equally sized images per forward pass.

        Returns:
            per image, task name -> numpy array at the image's size, in the task's units:
            segmentation: class ids int64 [H,W] (see :attr:`classes`); depth: meters
            float32 [H,W]; normals: unit vectors float32 [3,H,W] (x right, y down, z
            towards the camera). One dict for one image, a list for a list.

        Raises:
            UserError: an input that is not an image, unreadable, or above
                :data:`MAX_PIXELS`; bad TTA scales; ``batch_size`` < 1. Nothing is
                predicted then.
        """
        single = not isinstance(images, (list, tuple))
        items = [images] if single else list(images)
        scales, mirror = tta_setting(tta, flip)
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise UserError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        sizes = [image_size(item, i) for i, item in enumerate(items)]
        collect = _Collect()
        self.run(items, sizes, collect, batch_size, scales, mirror)
        results = [collect.results[i] for i in range(len(items))]
        return results[0] if single else results

    # -- saving --------------------------------------------------------------------------

    def save(self, folder: str | os.PathLike) -> Path:
        """Write a self-contained model folder (see :mod:`scenemtl.model_folder`): weights
        as safetensors, ``config.json``, ``classes.json`` and a model card ``README.md``.

        The folder appears complete or not at all. Returns its path.

        Raises:
            UserError: ``folder`` exists and is not an empty folder.
        """
        from scenemtl.model_folder import write_model_folder

        return write_model_folder(self, Path(folder))


# --------------------------------------------------------------------------------------
# loading


def load(path: str | os.PathLike, device: str | torch.device = "cpu") -> Model:
    """A trained model, ready to predict.

    Args:
        path: a checkpoint (``.ckpt`` of a run), a folder written by :meth:`Model.save`,
            or ``hf://user/repo[@revision]`` (downloaded once into the Hub cache).
        device: where the network runs (see :meth:`Model.to`).

    Raises:
        UserError: one line: missing path, not a scenemtl checkpoint or folder, weights
            that do not fit, Hub repository not reachable (see :mod:`scenemtl.hub`).
    """
    from scenemtl import hub

    if hub.is_hub_uri(path):
        repo_id, revision = hub.parse_hub_uri(str(path))
        folder = hub.download(repo_id, revision=revision)
        try:
            model = _load_folder(folder, source=str(path))
        except UserError as e:  # the message names the cache folder; say whose it is
            raise UserError(f"{path}: {e}") from None
    else:
        local = Path(path)
        if local.is_dir():
            model = _load_folder(local, source=str(local))
        elif local.is_file():
            from scenemtl.engine.module import MultiTaskModule  # Lightning import is slow

            model = Model(MultiTaskModule.from_checkpoint(local, map_location="cpu"), str(local))
        else:
            raise UserError(f"{local} not found (a .ckpt file, a model folder or hf://user/repo)")
    return model.to(device)


def _load_folder(folder: Path, source: str) -> Model:
    from scenemtl.model_folder import read_model_folder

    module, extras = read_model_folder(folder)
    return Model(module, source=source, extras=extras)


__all__ = [
    "DEFAULT_TTA_SCALES",
    "MAX_PIXELS",
    "ImageInput",
    "Images",
    "Model",
    "SameSizeBatches",
    "as_rgb",
    "image_size",
    "load",
    "resolve_device",
    "tta_setting",
]
