"""The Gradio page of ``scenemtl serve`` (needs the ``serve`` extra).

Layout: the upload (and the dataset's examples) on the left, the panel (RGB | each
task's picture) and one line of text on the right, each task's key (class legend, depth
scale) below. A new upload or example predicts at once.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import gradio as gr

from scenemtl.api import MAX_PIXELS, Model
from scenemtl.page.keys import KEYS_CSS, keys_html
from scenemtl.page.predict import PagePredictor, panel_columns

PAGE_CSS = (
    KEYS_CSS
    + """
#smtl-status { min-height: 2.5em; }
.smtl-error { color: #c62828; font-weight: 600; }
/* small images (a dataset's 128x256) drawn as large as the box, pixels kept sharp */
#smtl-upload img, #smtl-panel img { width: 100%; height: 100%; object-fit: contain;
                                    image-rendering: pixelated; }
"""
)

MAX_UPLOAD_BYTES = 256 << 20
"""Largest upload accepted (Gradio refuses larger files on the page): a 16.8-megapixel
image is at most 50 MB uncompressed, far less as PNG or JPEG."""

IMAGE_HEIGHT = 360
"""Display height of the upload and the panel (pixels; the images are scaled to fit)."""

SYSTEM_FONTS = ["system-ui", "Segoe UI", "Helvetica", "Arial", "sans-serif"]
"""The page's fonts: the default theme's fonts come from Google Fonts, which a machine
without a network cannot reach."""


def upload_path(payload: Any) -> str | None:
    """The file of an upload as Gradio stored it (in its upload folder, named as the
    user's file), from the image's raw payload ``{"path": ..., "orig_name": ...}``.

    The page's event takes the payload unprocessed (``preprocess=False``): ``gr.Image``'s
    own preprocessing opens the file with Pillow, which raises on a file that is not an
    image (a traceback in the server log) and decodes any size; the handler checks the
    size from the header first and answers in one line.
    """
    if not payload:
        return None
    return payload.get("path") if isinstance(payload, dict) else getattr(payload, "path", None)


def theme() -> gr.themes.Theme:
    return gr.themes.Default(font=SYSTEM_FONTS, font_mono=["ui-monospace", "monospace"])


def build_page(model: Model, examples: Sequence[Path] = ()) -> gr.Blocks:
    """The page for ``model``; ``examples`` are image files offered under the upload."""
    predictor = PagePredictor(model)
    columns = panel_columns(model)

    def on_image(payload: Any) -> tuple[Any, str]:
        result = predictor(upload_path(payload))
        text = html.escape(result.message)
        return result.panel, f'<span class="smtl-error">{text}</span>' if result.error else text

    with gr.Blocks(title=f"scenemtl: {model.source}", analytics_enabled=False) as page:
        gr.Markdown(
            f"## scenemtl: {html.escape(str(model.source))}\n"
            f"Tasks: {', '.join(model.tasks)}. Drop an image (at most "
            f"{MAX_PIXELS / 1e6:.1f} megapixels) or pick an example: the panel shows "
            f"{columns}."
        )
        with gr.Row():
            with gr.Column(scale=1):
                upload = gr.Image(
                    label="Image",
                    type="filepath",
                    sources=["upload"],
                    elem_id="smtl-upload",
                    height=IMAGE_HEIGHT,
                )
                if examples:
                    gr.Examples(
                        examples=[[str(p)] for p in examples],
                        inputs=[upload],
                        label="Examples from the dataset",
                    )
            with gr.Column(scale=2):
                panel = gr.Image(
                    label=columns,
                    type="numpy",
                    format="png",
                    interactive=False,
                    height=IMAGE_HEIGHT,
                    elem_id="smtl-panel",
                )
                # HTML of escaped text: a file name is shown as it is, not as Markdown
                status = gr.HTML(
                    "Drop an image on the left, or pick an example.", elem_id="smtl-status"
                )
        keys = keys_html(model.module.task_list)
        if keys:
            gr.HTML(keys, elem_id="smtl-keys")
        upload.change(on_image, inputs=[upload], outputs=[panel, status], preprocess=False)
    return page


def launch(page: gr.Blocks, host: str, port: int, allowed_paths: Sequence[Path] = ()) -> None:
    """Serve ``page`` until Ctrl-C; Gradio catches the interrupt itself and returns."""
    page.launch(
        server_name=host,
        server_port=port,
        share=False,
        inbrowser=False,
        allowed_paths=[str(p) for p in allowed_paths],
        theme=theme(),
        css=PAGE_CSS,
        footer_links=[],
        run_history=False,
        max_file_size=MAX_UPLOAD_BYTES,
    )


__all__ = ["build_page", "launch", "upload_path"]
