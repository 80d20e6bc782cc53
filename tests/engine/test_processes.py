"""Real processes: Ctrl-C during `fit`, then resume; two `fit` started at the same moment.

(A crash then a resume, whose error moves to ``previous_errors``: test_fit.py.)
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from scenemtl.reporting.runs import summarize_run
from tests.helpers import REPO, default_sigint, read_metrics, run_scenemtl, tiny_config


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO)])}


def _wait_for(paths: list[Path], procs: list[subprocess.Popen], timeout: float = 300) -> None:
    """Until every path exists; fails at once if a process ended first."""
    deadline = time.monotonic() + timeout
    while not all(p.exists() for p in paths):
        for proc in procs:
            if proc.poll() is not None:
                _, err = proc.communicate()
                pytest.fail(f"process ended early ({proc.returncode}): {err[-3000:]}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {paths}")
        time.sleep(0.02)


@pytest.mark.slow
def test_ctrl_c_exits_130_as_interrupted_and_a_resume_finishes_clean(tmp_path, tiny_root):
    marker = tmp_path / "at_step_3"
    waiter = {
        "class_path": "tests.engine.killer.WaitAtStep",
        "init_args": {"step": 3, "marker": str(marker)},
    }
    cfg = tiny_config(
        tmp_path,
        tiny_root,
        **{
            "trainer.max_epochs": 2,
            "trainer.limit_train_batches": 2,
            "trainer.limit_val_batches": 1,
            "run.checkpoint_every_n_steps": 2,
            "trainer.callbacks": [waiter],
        },
    )
    # its own process group, as a terminal's Ctrl-C signals the whole foreground group;
    # SIGINT back to its default first: a suite started in the background of a
    # non-interactive shell (`make test &`) inherits SIGINT ignored, and Python then
    # installs no KeyboardInterrupt handler, so the child would sleep through the signal
    proc = subprocess.Popen(
        [sys.executable, "-m", "scenemtl", "fit", "--config", str(cfg)],
        cwd=REPO,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        preexec_fn=default_sigint,
    )
    try:
        _wait_for([marker], [proc])
        os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1] == "scenemtl: interrupted"
    # one line: Lightning's "Detected KeyboardInterrupt, attempting graceful shutdown"
    # is not printed above it
    assert "KeyboardInterrupt" not in err, err[-3000:]
    run_dir = tmp_path / "runs" / "tiny" / "version_0"
    record = json.loads((run_dir / "run.json").read_text())
    assert record["status"] == "interrupted" and "error" not in record
    assert summarize_run(run_dir).status == "interrupted"

    resumed = run_scenemtl(
        "fit", "--config", str(cfg), "--ckpt_path", "last", "--trainer.callbacks", "[]"
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    record = json.loads((run_dir / "run.json").read_text())
    assert record["status"] == "finished"
    assert "error" not in record and not record.get("previous_errors")
    assert summarize_run(run_dir).status == "finished"
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu")
    assert last["global_step"] == 4  # 2 epochs x 2 batches, resumed from step 2


@pytest.mark.slow
def test_two_fits_started_at_once_with_one_name_get_two_versions(tmp_path, tiny_root):
    cfg = tiny_config(
        tmp_path,
        tiny_root,
        **{
            "trainer.max_epochs": 1,
            "trainer.limit_train_batches": 2,
            "trainer.limit_val_batches": 1,
        },
    )
    lrs = ["0.001", "0.002"]
    go = tmp_path / "go"
    ready = [tmp_path / f"ready_{i}" for i in range(2)]
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.engine.barrier_main",
                str(ready[i]),
                str(go),
                "fit",
                "--config",
                str(cfg),
                "--model.lr",
                lr,
            ],
            cwd=REPO,
            env=_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i, lr in enumerate(lrs)
    ]
    try:
        _wait_for(ready, procs)
        go.touch()
        results = [p.communicate(timeout=600) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for proc, (_, err) in zip(procs, results, strict=True):
        assert proc.returncode == 0, err[-3000:]

    family = tmp_path / "runs" / "tiny"
    assert sorted(p.name for p in family.iterdir()) == ["version_0", "version_1"]
    seen = []
    for run_dir in sorted(family.iterdir()):
        config = yaml.safe_load((run_dir / "config.yaml").read_text())
        lr = float(config["model"]["lr"])
        seen.append(lr)
        # every file of the folder belongs to the run of that config
        hparams = yaml.safe_load((run_dir / "hparams.yaml").read_text())
        assert float(hparams["lr"]) == lr
        rows = read_metrics(run_dir)
        steps = [int(r["step"]) for r in rows if r.get("train/loss")]
        assert steps == [0, 1]  # one run's trace, not two interleaved
        assert float(next(r["lr"] for r in rows if r.get("lr"))) == pytest.approx(lr)
        ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
        assert ckpt["hyper_parameters"]["lr"] == lr and ckpt["global_step"] == 2
        assert json.loads((run_dir / "run.json").read_text())["status"] == "finished"
    assert sorted(seen) == [0.001, 0.002]
