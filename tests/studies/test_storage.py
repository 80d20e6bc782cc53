"""Workers opening one new SQLite study database at the same instant: all of them get it
(Optuna creates the tables on first open, and unserialized openings collide)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import optuna
import pytest

from tests.helpers import REPO

OPENER = textwrap.dedent(
    """
    import os, sys
    from pathlib import Path
    import optuna
    from scenemtl.studies.runner import open_storage

    db, ready, go = sys.argv[1:]
    Path(ready).touch()
    while not os.path.exists(go):  # spin: the collision needs a start within microseconds
        pass
    storage = open_storage(f"sqlite:///{db}", 30)
    optuna.create_study(study_name="s", storage=storage, load_if_exists=True)
    print("opened")
    """
)


@pytest.mark.slow
def test_workers_released_together_all_open_a_new_database(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO)])}
    go = tmp_path / "go"
    for attempt in range(3):  # without the lock, the first attempt fails (seen 8 times in 8)
        db = tmp_path / f"study_{attempt}.db"
        ready = [tmp_path / f"ready_{attempt}_{k}" for k in range(2)]
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", OPENER, str(db), str(r), str(go)],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                env=env,
            )
            for r in ready
        ]
        deadline = time.monotonic() + 120
        while not all(r.exists() for r in ready) and time.monotonic() < deadline:
            time.sleep(0.01)
        go.touch()
        outputs = [p.communicate(timeout=120)[0] for p in procs]
        go.unlink()
        assert [p.returncode for p in procs] == [0, 0], outputs
        assert all("opened" in out for out in outputs), outputs
        studies = optuna.get_all_study_summaries(f"sqlite:///{db}")
        assert [s.study_name for s in studies] == ["s"]
