"""``scenemtl study dashboard``: the study's own Optuna storage in optuna-dashboard.

The dashboard reads the storage the workers write (live progress, each trial's state,
parameters and user attributes: variant, seed, run folder; parameter importances for a
``study tune``); nothing is copied.
"""

from __future__ import annotations

import os
from pathlib import Path

from scenemtl.errors import UserError
from scenemtl.studies.runner import STORAGE_FILE, default_storage, open_storage
from scenemtl.studies.spec import StudySpec


def study_storage_url(spec: StudySpec, runs_root: str | os.PathLike, storage: str | None) -> str:
    """The storage URL the study's workers use (``--storage``, else the SQLite file in
    the study folder).

    Raises:
        UserError: no ``--storage`` and the study has no database yet.
    """
    if storage:
        return storage
    study_dir = spec.study_dir(runs_root)
    if not (study_dir / STORAGE_FILE).is_file():
        raise UserError(
            f"{Path(study_dir) / STORAGE_FILE} does not exist: the study has not been run "
            "(`scenemtl study run` or `study tune` first), or give --runs/--storage"
        )
    return default_storage(study_dir)


def serve_dashboard(url: str, host: str, port: int) -> None:
    """Serve optuna-dashboard on ``url``'s storage until interrupted.

    Raises:
        UserError: optuna-dashboard is not installed, or the address is taken.
    """
    try:
        from optuna_dashboard import run_server
    except ImportError:
        raise UserError(
            "optuna-dashboard is not installed: pip install 'scenemtl[dashboard]'"
        ) from None
    storage = open_storage(url, None)
    print(f"dashboard of {url}: http://{host}:{port}/ (Ctrl-C stops it)", flush=True)
    try:
        run_server(storage, host=host, port=port)
    except OSError as e:
        raise UserError(f"dashboard on {host}:{port}: {e.strerror or e}") from None
    # the server returns only when Ctrl-C stopped it (it catches the interrupt itself):
    # the command ends as every interrupted command does (status 130)
    raise KeyboardInterrupt
