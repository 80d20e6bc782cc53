"""The Hugging Face Hub: the one place scenemtl downloads from and uploads to it.

Downloads go through ``huggingface_hub``'s own cache (``HF_HUB_CACHE``, by default
``~/.cache/huggingface/hub``): a repository is fetched once and then read from the cache,
also offline (``HF_HUB_OFFLINE=1``). Models are named ``hf://user/repo`` or
``hf://user/repo@revision`` (a branch, tag or commit) wherever scenemtl takes a
checkpoint; encoder weights can use :func:`download` with a file name.

Every failure (no network and not cached, offline and not cached, an unknown repository
or revision, a malformed id, ``huggingface_hub`` missing) is one :class:`UserError` line
naming the repository.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from scenemtl.errors import UserError

URI_PREFIX = "hf://"


def is_hub_uri(text: str | os.PathLike) -> bool:
    """Whether ``text`` names a Hub repository (``hf://user/repo[@revision]``)."""
    return isinstance(text, str) and text.startswith(URI_PREFIX)


def parse_hub_uri(uri: str) -> tuple[str, str | None]:
    """``hf://user/repo@rev`` -> ``("user/repo", "rev")`` (revision None when absent).

    Raises:
        UserError: not of that form.
    """
    if not is_hub_uri(uri):
        raise UserError(f"{uri!r} is not a Hub model; write hf://user/repo[@revision]")
    body = uri[len(URI_PREFIX) :]
    repo_id, at, revision = body.partition("@")
    if not repo_id or (at and not revision):
        raise UserError(f"{uri!r} is not a Hub model; write hf://user/repo[@revision]")
    return repo_id, revision or None


def _hub() -> Any:
    import huggingface_hub  # imported on use: `import scenemtl.hub` stays cheap

    return huggingface_hub


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


def _named(repo_id: str, revision: str | None) -> str:
    return f"{URI_PREFIX}{repo_id}" + (f"@{revision}" if revision else "")


def download(repo_id: str, filename: str | None = None, revision: str | None = None) -> Path:
    """A model repository (or one file of it) from the Hub, through the Hub cache.

    Args:
        repo_id: ``user/repo`` of a model repository.
        filename: one file of the repository (e.g. encoder weights); None: all of it.
        revision: branch, tag or commit (None: the default branch).

    Returns:
        the snapshot folder in the cache (``filename`` None), or the cached file.

    Raises:
        UserError: one line naming the repository: not cached while offline
            (``HF_HUB_OFFLINE``) or without network, unknown repository, revision or
            file, malformed id.
    """
    hub = _hub()
    errors = hub.errors
    name = _named(repo_id, revision) + (f" ({filename})" if filename else "")
    try:
        if filename is None:
            path = hub.snapshot_download(repo_id=repo_id, revision=revision)
        else:
            path = hub.hf_hub_download(repo_id=repo_id, filename=filename, revision=revision)
    except errors.HFValidationError as e:
        raise UserError(f"{name}: not a Hub repository id ({_first_line(e)})") from None
    except errors.LocalEntryNotFoundError as e:
        # not in the cache and no way to download: offline by choice, or no network
        if hub.constants.is_offline_mode():
            raise UserError(
                f"{name} is not in the Hub cache ({hub.constants.HF_HUB_CACHE}) and "
                "HF_HUB_OFFLINE is set: download it once with network access (unset "
                "HF_HUB_OFFLINE), then it loads offline"
            ) from None
        cause = e.__cause__ or e
        raise UserError(
            f"{name}: cannot reach the Hub and it is not in the Hub cache "
            f"({type(cause).__name__}); connect once to download it (HF_HUB_OFFLINE=1 "
            "then reads the cache only)"
        ) from None
    except errors.RevisionNotFoundError:
        raise UserError(f"{name}: the repository has no revision {revision!r}") from None
    except errors.RepositoryNotFoundError:
        raise UserError(
            f"{name}: no such model repository on the Hub, or it is private or gated "
            "(log in with `hf auth login` or set HF_TOKEN)"
        ) from None
    except errors.EntryNotFoundError:
        raise UserError(f"{name}: the repository has no file {filename!r}") from None
    except errors.HfHubHTTPError as e:
        raise UserError(f"{name}: the Hub answered {_first_line(e)}") from None
    return Path(path)


def push(folder: str | os.PathLike, repo_id: str, private: bool = False) -> str:
    """Upload a folder as the content of a model repository (created if missing).

    Args:
        folder: the files to upload (a folder written by :meth:`scenemtl.api.Model.save`).
        repo_id: ``user/repo``.
        private: create the repository private (False: the Hub's default for the account;
            an existing repository keeps its visibility).

    Returns:
        the URL of the commit.

    Raises:
        UserError: not logged in, no permission, malformed id, network failure (one line).
    """
    hub = _hub()
    errors = hub.errors
    api = hub.HfApi()
    try:
        api.create_repo(repo_id=repo_id, private=True if private else None, exist_ok=True)
        commit = api.upload_folder(
            repo_id=repo_id,
            folder_path=str(folder),
            commit_message="Upload scenemtl model",
        )
    except errors.HFValidationError as e:
        raise UserError(f"{repo_id!r}: not a Hub repository id ({_first_line(e)})") from None
    except errors.OfflineModeIsEnabled:
        raise UserError(f"cannot push to {repo_id}: HF_HUB_OFFLINE is set") from None
    except errors.HfHubHTTPError as e:
        status = getattr(getattr(e, "response", None), "status_code", None)
        hint = " (log in with `hf auth login` or set HF_TOKEN)" if status in (401, 403) else ""
        raise UserError(f"cannot push to {repo_id}: {_first_line(e)}{hint}") from None
    except (ConnectionError, TimeoutError, *_transport_errors()) as e:
        raise UserError(f"cannot push to {repo_id}: {type(e).__name__}: {_first_line(e)}") from None
    return str(commit.commit_url)


def _transport_errors() -> tuple[type[BaseException], ...]:
    """The HTTP client's network errors (``huggingface_hub`` 1.x and later use httpx2)."""
    try:
        import httpx2
    except ImportError:
        return ()
    return (httpx2.TransportError,)


__all__ = ["URI_PREFIX", "download", "is_hub_uri", "parse_hub_uri", "push"]
