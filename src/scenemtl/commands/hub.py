"""``scenemtl hub push``: a trained model onto the Hugging Face Hub.

A model folder (:meth:`scenemtl.api.Model.save`) is uploaded as it is, after checking
that it loads; a checkpoint is first saved as a model folder in a temporary folder. Log
in first (``hf auth login``, or ``HF_TOKEN``). Loading from the Hub needs no command:
``--ckpt_path hf://user/repo`` wherever a checkpoint is taken (:mod:`scenemtl.hub`).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from scenemtl.errors import UserError


def add_hub_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``hub push`` on the ``scenemtl`` subcommand parser."""
    hub = subparsers.add_parser("hub", help="Hugging Face Hub: push a trained model")
    actions = hub.add_subparsers(dest="hub_command", required=True, metavar="HUB_COMMAND")
    p = actions.add_parser(
        "push",
        help="upload a checkpoint or a model folder as a Hub model repository",
        description="Upload a model to the Hugging Face Hub (the repository is created if "
        "missing): a model folder as it is, a checkpoint as the folder Model.save writes "
        "(safetensors weights, config.json, classes.json, model card). Load it with "
        "scenemtl.load('hf://REPO_ID') or --ckpt_path hf://REPO_ID.",
    )
    p.add_argument("source", metavar="CKPT_OR_FOLDER", help="a .ckpt file or a model folder")
    p.add_argument("repo_id", metavar="REPO_ID", help="user/repo (or organization/repo)")
    p.add_argument("--private", action="store_true", help="create the repository private")
    p.set_defaults(func=cmd_hub_push)
    return p


def push_model(source: str | Path, repo_id: str, private: bool = False) -> str:
    """Upload a checkpoint or a model folder to ``repo_id``; returns the commit URL.

    Raises:
        UserError: ``source`` does not load (see :func:`scenemtl.load`), or the upload
            failed (see :func:`scenemtl.hub.push`).
    """
    from scenemtl import hub
    from scenemtl.api import load

    source = Path(source)
    if not source.exists():
        raise UserError(f"{source} not found (a .ckpt file or a model folder)")
    model = load(source)  # what is pushed must load
    if source.is_dir():
        return hub.push(source, repo_id, private=private)
    with tempfile.TemporaryDirectory(prefix="scenemtl-push-") as tmp:
        folder = model.save(Path(tmp) / "model")
        return hub.push(folder, repo_id, private=private)


def cmd_hub_push(args: argparse.Namespace) -> int:
    """Entry point of ``scenemtl hub push``."""
    url = push_model(args.source, args.repo_id, private=args.private)
    print(f"pushed {args.source} to {args.repo_id}: {url}")
    return 0


__all__ = ["add_hub_parser", "cmd_hub_push", "push_model"]
