"""Helpers of the study tests that run ``scenemtl`` in child processes: the command, a
small study file, and a worker killed as a lost machine would be (test_runner.py,
test_postgres.py, test_dashboard.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from scenemtl.reporting.run_dir import RunFamily
from tests.helpers import REPO, tiny_config

GRACE_S = 2.5
"""Longer than a dead worker's grace period at ``--heartbeat 1`` (2 heartbeats)."""


def scenemtl(*argv: str, wait: bool = True, cwd: Path | None = None):
    """``python -m scenemtl *argv`` with this checkout's sources: the finished process
    (``wait``), or the running one in its own session (its group can be killed)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO)])}
    cmd = [sys.executable, "-m", "scenemtl", *map(str, argv)]
    if not wait:
        return subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
            cwd=cwd,
            start_new_session=True,
        )
    return subprocess.run(
        cmd, capture_output=True, text=True, env=env, cwd=cwd, timeout=600, check=False
    )


def write_study(tmp_path: Path, tiny_root: Path, variants: list[dict], **extra) -> Path:
    """``study.yaml`` named ``t``, seed 0, on the tiny config (1 epoch, a quarter of the
    training batches)."""
    config = tiny_config(
        tmp_path, tiny_root, **{"trainer.max_epochs": 1, "trainer.limit_train_batches": 0.25}
    )
    study = tmp_path / "study.yaml"
    study.write_text(
        yaml.safe_dump(
            {"name": "t", "config": config.name, "seeds": [0], "variants": variants, **extra},
            sort_keys=False,
        )
    )
    return study


def write_long_study(tmp_path: Path, tiny_root: Path, epochs: int) -> tuple[Path, RunFamily]:
    """``study.yaml`` ``t`` of one variant ``long`` that trains ``epochs`` epochs (long
    enough to be killed in the middle), and the run family of its seed 0 under
    ``tmp_path/runs``."""
    config = tiny_config(tmp_path, tiny_root, **{"trainer.max_epochs": epochs})
    study = tmp_path / "study.yaml"
    study.write_text(
        yaml.safe_dump(
            {"name": "t", "config": config.name, "seeds": [0], "variants": [{"name": "long"}]}
        )
    )
    return study, RunFamily(tmp_path / "runs" / "t" / "long", "seed_0")


def kill_after_first_checkpoint(argv: tuple, family: RunFamily, timeout_s: float = 300) -> None:
    """Start a worker ``scenemtl *argv``, SIGKILL it and its run (the process group, as
    a lost machine) once the run has written ``last.ckpt``, and wait until its trial is
    past the grace period. Fails the test if no checkpoint comes within ``timeout_s``."""
    worker = scenemtl(*argv, wait=False)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        versions = family.versions()
        if versions and versions[0].last_ckpt.is_file():
            break
        time.sleep(0.2)
    else:
        worker.kill()
        pytest.fail("the run never wrote last.ckpt: " + worker.communicate()[0])
    os.killpg(worker.pid, signal.SIGKILL)
    worker.wait()
    time.sleep(GRACE_S)
