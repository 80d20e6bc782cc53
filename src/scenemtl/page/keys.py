"""What the page shows beside the pictures: each task's
:meth:`~scenemtl.tasks.base.Task.picture_key` (a class legend, a colour bar), drawn as
HTML fragments (plain strings, no Gradio). The keys are data in the colours of the
task's own ``colorize`` (:mod:`scenemtl.tasks.keys`); this module only draws them, so it
knows the forms a key takes, never a task kind."""

from __future__ import annotations

import base64
import html
import io
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from scenemtl.tasks.keys import ColorBar, Legend, PictureKey

if TYPE_CHECKING:
    from scenemtl.tasks.base import Task


def legend_html(legend: Legend) -> str:
    """A legend as HTML: a swatch and the name per entry."""
    items = "".join(
        '<span class="smtl-class">'
        f'<span class="smtl-swatch" style="background: rgb({r}, {g}, {b})"></span>'
        f"{html.escape(name)}</span>"
        for name, (r, g, b) in legend.entries
    )
    return (
        f'<div class="smtl-legend"><div class="smtl-key-title">{html.escape(legend.title)}</div>'
        f'<div class="smtl-classes">{items}</div></div>'
    )


def _png_data_uri(rgb: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def color_bar_html(bar: ColorBar) -> str:
    """A colour bar as HTML: an image of the colours, the labelled values under it."""
    image = np.repeat(bar.colors[None], 2, axis=0)  # [2,W,3]; the page stretches it
    labels = []
    for i, tick in enumerate(bar.ticks):
        # the end labels stay inside the bar; the others are centred on their value
        shift = "0" if i == 0 else "-100%" if i == len(bar.ticks) - 1 else "-50%"
        labels.append(
            f'<span class="smtl-tick" style="left: {100 * tick.position:.3f}%; '
            f'transform: translateX({shift})">{html.escape(tick.label)}</span>'
        )
    return (
        f'<div class="smtl-scale"><div class="smtl-key-title">{html.escape(bar.title)}</div>'
        f'<img class="smtl-bar" alt="colour bar: {html.escape(bar.title, quote=True)}" '
        f'src="{_png_data_uri(image)}">'
        f'<div class="smtl-ticks">{"".join(labels)}</div></div>'
    )


KEYS_CSS = """
.smtl-key-title { font-weight: 600; margin: 0.4em 0; }
.smtl-classes { display: flex; flex-wrap: wrap; gap: 0.3em 1.2em; }
.smtl-class { display: inline-flex; align-items: center; gap: 0.4em; }
.smtl-swatch { display: inline-block; width: 1.1em; height: 1.1em;
               border: 1px solid #8888; border-radius: 2px; }
.smtl-bar { display: block; width: 100%; height: 1.4em; image-rendering: pixelated;
            border: 1px solid #8888; }
.smtl-ticks { position: relative; height: 1.6em; }
.smtl-tick { position: absolute; top: 0.2em; white-space: nowrap; font-size: 0.9em; }
"""
"""Styles of the fragments above."""


def key_html(key: PictureKey) -> str:
    """One key as HTML, whichever form it takes."""
    if isinstance(key, Legend):
        return legend_html(key)
    if isinstance(key, ColorBar):
        return color_bar_html(key)
    raise TypeError(f"no drawing for a picture key of type {type(key).__name__}")


def keys_html(tasks: list[Task]) -> str:
    """Every task's key, in the order of the tasks; empty if none has one (e.g.
    normals only)."""
    return "".join(key_html(key) for task in tasks if (key := task.picture_key()) is not None)


__all__ = ["KEYS_CSS", "color_bar_html", "key_html", "keys_html", "legend_html"]
