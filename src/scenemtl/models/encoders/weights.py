"""Where an encoder's initial weights come from: a published file (through a cache), a
local state dict, or the encoder of a scenemtl checkpoint. Family-independent."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from scenemtl.errors import UserError


@dataclass(frozen=True)
class TorchHubFile:
    """A file published at ``url`` and kept in the torch hub cache
    (``torch.hub.get_dir()/checkpoints``); ``check_hash`` verifies the sha256 prefix
    that torchvision's file names carry after the dash."""

    url: str
    what: str = "published weights"
    publisher: str = ""
    """Whose file it is, as the error line says it ("torchvision's ")."""
    check_hash: bool = True

    @property
    def file_name(self) -> str:
        return self.url.rsplit("/", 1)[-1]

    def load(self) -> Mapping[str, Tensor]:
        """The file's state dict, downloaded once; offline and not cached ->
        :class:`UserError` naming the file and the folder to put it in."""
        folder = Path(torch.hub.get_dir()) / "checkpoints"
        try:
            return torch.hub.load_state_dict_from_url(
                self.url,
                map_location="cpu",
                check_hash=self.check_hash,
                weights_only=True,
                progress=False,
            )
        except Exception as e:  # URLError, hash mismatch, corrupt cache file ...
            reason = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise UserError(
                f"cannot get {self.what} {self.file_name} ({reason}); "
                f"download {self.publisher}{self.file_name} and put it in {folder}"
            ) from None


@dataclass(frozen=True)
class PublishedFile:
    """A published file that a family's own function fetches (e.g. from the Hugging
    Face Hub): ``loader()`` returns its state dict or raises one UserError line."""

    what: str
    file_name: str
    loader: Callable[[], Mapping[str, Tensor]]

    def load(self) -> Mapping[str, Tensor]:
        return self.loader()


def load_weights_file(path: str | Path) -> Mapping[str, Tensor]:
    """A state dict from a ``.pth`` file, loaded with ``weights_only=True`` on the CPU."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise UserError(f"weights file not found: {p}")
    try:
        return torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # unpickling refused, truncated file, not a torch file
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"cannot load weights file {p}: {reason}") from None


def is_checkpoint(state: object) -> bool:
    """Whether a loaded file is a scenemtl (Lightning) checkpoint, not a state dict."""
    return isinstance(state, Mapping) and "state_dict" in state and "hyper_parameters" in state


def encoder_state_from_checkpoint(
    checkpoint: Mapping[str, object], task: str | None, source: str
) -> Mapping[str, Tensor]:
    """The encoder's entries of a scenemtl checkpoint's ``state_dict``, without their
    prefix: ``net.encoder.*`` (one encoder for all tasks), else ``net.encoders.<task>.*``
    (one per task: that of ``task``, or the only one). A single-task run's checkpoint
    thus initializes one task's trunk. Raises :class:`UserError` when none fits."""
    state = checkpoint["state_dict"]
    if not isinstance(state, Mapping):
        raise UserError(f"{source} has no state dict")
    keys = [k for k in state if isinstance(k, str)]
    if any(k.startswith("net.encoder.") for k in keys):
        prefix = "net.encoder."
    else:
        owners = sorted({k.split(".")[2] for k in keys if k.startswith("net.encoders.")})
        if task in owners or len(owners) == 1:
            prefix = f"net.encoders.{task if task in owners else owners[0]}."
        else:
            found = f"encoders of {', '.join(owners)}" if owners else "no encoder"
            raise UserError(f"{source} holds {found}; cannot tell which one task {task!r} takes")
    return {k[len(prefix) :]: state[k] for k in keys if k.startswith(prefix)}


HUB_WEIGHTS_FILE = "model.safetensors"


def hub_safetensors(repo_id: str, what: str) -> PublishedFile:
    """A ``model.safetensors`` published in Hugging Face Hub repository ``repo_id`` (timm's
    files), downloaded once through the Hub cache (:func:`scenemtl.hub.download`: offline
    and not cached is one line naming the repository)."""

    def load() -> Mapping[str, Tensor]:
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        from scenemtl.hub import download

        path = download(repo_id, HUB_WEIGHTS_FILE)
        try:
            return load_file(path)
        except (SafetensorError, OSError) as e:
            raise UserError(f"{path}: not a readable safetensors file ({e})") from None

    return PublishedFile(what, f"{repo_id}/{HUB_WEIGHTS_FILE}", load)
