"""One upload of the page: its panel (RGB | each task's picture) or one line saying why
not. Predictions go through :meth:`scenemtl.api.Model.predict`, the package's one
inference path, pictures through each task's ``colorize`` and
:func:`scenemtl.visualize.prediction_panel`."""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from scenemtl.api import MAX_PIXELS, Model, as_rgb, image_size
from scenemtl.errors import UserError, one_line
from scenemtl.visualize import prediction_panel, tile


@dataclass
class PageResult:
    """What the page shows for one upload: ``panel`` uint8 [H, W', 3] and a line of
    text (what was predicted), or no panel and ``message`` saying why (``error``: the
    upload was refused)."""

    panel: np.ndarray | None
    message: str
    error: bool = False


def panel_columns(model: Model) -> str:
    """The columns of a panel, ``RGB | semseg | depth``."""
    return " | ".join(["RGB", *model.tasks])


def _header_size(path: Path) -> tuple[int, int] | None:
    """``(W, H)`` from the image's header, nothing decoded; None if Pillow cannot tell
    (the reader then says why)."""
    try:
        with Image.open(path) as im:
            return im.size
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        return None


def _read_checked(path: Path) -> np.ndarray:
    """The upload as uint8 [H,W,3], its size checked against :data:`MAX_PIXELS` before
    it is decoded (an upload may be far larger than any image predicted on)."""
    size = _header_size(path)
    if size is not None and size[0] * size[1] > MAX_PIXELS:
        raise UserError(
            f"{size[0]}x{size[1]} pixels is above the {MAX_PIXELS / 1e6:.1f} MP limit; "
            "downscale it first"
        )
    rgb = as_rgb(path)
    image_size(rgb)  # empty, or a header that lied about the size
    return rgb


class PagePredictor:
    """Turns uploads into panels with one model, one upload at a time (a
    :class:`~scenemtl.api.Model` must not predict from two threads at once)."""

    def __init__(self, model: Model) -> None:
        self.model = model
        self._lock = threading.Lock()

    def __call__(self, path: str | os.PathLike | None) -> PageResult:
        """Args:
        path: the uploaded file (Gradio's copy, named as the user's file), or None.
        """
        if path is None:
            return PageResult(None, "Drop an image above, or pick an example.")
        path = Path(path)
        try:
            with self._lock:
                rgb = _read_checked(path)
                preds = self.model.predict(rgb)
        except UserError as e:
            # the server's copy of the upload means nothing to the person: their file name
            text = one_line(e).replace(str(path), path.name)
            if not text.startswith(path.name):
                text = f"{path.name}: {text}"
            return PageResult(None, f"Cannot predict on {text}", error=True)
        except MemoryError:
            return PageResult(None, f"Cannot predict on {path.name}: out of memory", error=True)
        tasks = self.model.module.task_list
        panel = tile([prediction_panel(rgb, tasks, preds)])
        h, w = rgb.shape[:2]
        words = "; ".join(d for t in tasks if (d := t.describe_prediction(preds[t.name])))
        return PageResult(panel, f"{path.name} ({w}x{h}): {words}")


__all__ = ["PagePredictor", "PageResult", "panel_columns"]
