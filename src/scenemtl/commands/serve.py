"""``scenemtl serve``: a local page to try a trained model on images.

A person drops an image (or picks one of the dataset's with ``--data ROOT``) and sees the
panel (RGB | each task's picture), each segmentation task's class legend and each depth
task's scale. The page is :mod:`scenemtl.page.app` (Gradio, the ``serve`` extra);
predictions are :meth:`scenemtl.api.Model.predict`'s. Ctrl-C stops it (status 130).
"""

from __future__ import annotations

import argparse
import tempfile

from scenemtl.argtypes import int_at_least
from scenemtl.errors import UserError


def add_serve_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``serve`` on the ``scenemtl`` subcommand parser."""
    p = subparsers.add_parser(
        "serve",
        help="a local web page to try a model on images",
        description="Serve a page where an image dropped in (or one of the dataset's, with "
        "--data) is predicted on and shown as RGB | each task's picture, with the class "
        "legend and the depth scale. Needs the serve extra: pip install 'scenemtl[serve]'. "
        "Ctrl-C stops it.",
    )
    p.add_argument(
        "--ckpt_path", required=True, help="a .ckpt file, a model folder or hf://user/repo"
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1)")
    p.add_argument("--port", type=int_at_least(1), default=7860, help="port (7860)")
    p.add_argument(
        "--data",
        metavar="ROOT",
        default=None,
        help="a dataset root: a few of its val/test images are offered as examples",
    )
    p.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N or mps")
    p.set_defaults(func=cmd_serve)
    return p


def cmd_serve(args: argparse.Namespace) -> int:
    """Entry point of ``scenemtl serve``: returns only by an exception (Ctrl-C included)."""
    try:
        from scenemtl.page.app import build_page, launch
    except ImportError as e:
        if getattr(e, "name", None) != "gradio":
            raise
        raise UserError("gradio is not installed: pip install 'scenemtl[serve]'") from None
    from scenemtl.api import load
    from scenemtl.page.examples import dataset_examples

    if args.port > 65535:
        raise UserError(f"--port {args.port} is not a port number (1..65535)")
    with tempfile.TemporaryDirectory(prefix="scenemtl-serve-") as tmp:
        # the dataset first: a wrong --data is told before the model is read
        examples = dataset_examples(args.data, tmp) if args.data else []
        model = load(args.ckpt_path, device=args.device)
        page = build_page(model, examples)
        url = f"http://{args.host}:{args.port}/"
        print(f"scenemtl serve: {args.ckpt_path} at {url} (Ctrl-C stops it)", flush=True)
        try:
            launch(page, args.host, args.port, sorted({p.parent for p in examples}))
        except OSError as e:
            raise UserError(f"serve on {args.host}:{args.port}: {e.strerror or e}") from None
    # Gradio's launch returns only when Ctrl-C stopped it (it catches the interrupt
    # itself): the command ends as every interrupted command does (status 130)
    raise KeyboardInterrupt


__all__ = ["add_serve_parser", "cmd_serve"]
