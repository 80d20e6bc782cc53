"""Ctrl-C: a KeyboardInterrupt everywhere, status 130 and one line, nothing half-written.

Lightning answers Ctrl-C inside a Trainer call with its own line, SIGINT ignored from
then on and ``sys.exit(1)``; :func:`scenemtl.engine.interrupts.interrupts_raise` turns
that back into a KeyboardInterrupt. The in-process tests check that conversion with a
real Trainer; the slow ones send SIGINT to real ``predict`` and ``validate`` processes
once they have printed a known line (``fit``: tests/engine/test_processes.py; ``data
synth`` and ``data cityscapes``: tests/data/test_interrupts.py).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from scenemtl.cli import main
from scenemtl.engine.interrupts import interrupts_raise
from tests.helpers import REPO, default_sigint, slow_fixture, tiny_config, write_random_dataset

# --------------------------------------------------------------------------------------
# in process


def test_lightnings_exit_after_ctrl_c_is_a_keyboard_interrupt_again() -> None:
    before = signal.getsignal(signal.SIGINT)

    def lightning_like() -> None:  # what lightning.pytorch.trainer.call does
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt:
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            sys.exit(1)

    with pytest.raises(KeyboardInterrupt), interrupts_raise():
        lightning_like()
    assert signal.getsignal(signal.SIGINT) is before
    with pytest.raises(SystemExit) as exited, interrupts_raise():
        sys.exit(3)  # any other exit stays what it is
    assert exited.value.code == 3


class _Tiny(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)

    def predict_step(self, batch, batch_idx):
        return self.layer(batch)


class _CtrlC(L.Callback):
    def on_predict_batch_end(self, *args) -> None:
        raise KeyboardInterrupt


def test_a_real_trainer_interrupted_raises_and_restores_sigint(caplog) -> None:
    before = signal.getsignal(signal.SIGINT)
    trainer = L.Trainer(
        accelerator="cpu",
        logger=False,
        callbacks=[_CtrlC()],
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    loader = DataLoader(torch.zeros(4, 2), batch_size=2)
    with pytest.raises(KeyboardInterrupt), interrupts_raise():
        trainer.predict(_Tiny(), dataloaders=loader)
    assert signal.getsignal(signal.SIGINT) is before  # Lightning had set SIG_IGN
    assert "Detected KeyboardInterrupt" not in caplog.text


# --------------------------------------------------------------------------------------
# real processes


@slow_fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(a config whose val split takes a few seconds, a checkpoint of it: one step)."""
    from scenemtl.data.stats import write_stats

    base = tmp_path_factory.mktemp("ctrl_c")
    root = base / "ds"
    write_random_dataset(root, sizes={"train": 2, "val": 300}, image_size=(32, 48))
    write_stats(root)
    config = tiny_config(
        base,
        root,
        **{"trainer.max_steps": 1, "trainer.limit_val_batches": 1, "visualize.ids": []},
    )
    with pytest.raises(SystemExit) as exited:
        main(["fit", "--config", str(config)])
    assert exited.value.code == 0
    (ckpt,) = (base / "runs" / "tiny").glob("version_*/checkpoints/last.ckpt")
    return config, ckpt


def _interrupt(argv: list[str], cwd: Path, ready: str) -> tuple[int, str, float]:
    """Start ``scenemtl ARGV`` in its own process group, send SIGINT to the group (a
    terminal's Ctrl-C) once ``ready`` appeared on stdout or stderr; (status, stderr,
    seconds from the signal to the exit)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO)])}
    proc = subprocess.Popen(
        [sys.executable, "-m", "scenemtl", *argv],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        preexec_fn=default_sigint,
    )
    seen = threading.Event()
    err: list[str] = []

    def pump(stream, keep: list[str] | None) -> None:
        for line in stream:
            if keep is not None:
                keep.append(line)
            if ready in line:
                seen.set()

    pumps = [
        threading.Thread(target=pump, args=(proc.stdout, None)),
        threading.Thread(target=pump, args=(proc.stderr, err)),
    ]
    for t in pumps:
        t.start()
    try:
        assert seen.wait(300), f"{ready!r} never printed: {''.join(err)[-2000:]}"
        assert proc.poll() is None, "ended before the signal"
        sent = time.monotonic()
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(60)
        elapsed = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        for t in pumps:
            t.join()
    return proc.returncode, "".join(err), elapsed


def _one_line_130(code: int, err: str, elapsed: float) -> None:
    assert code == 130, err[-3000:]
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err[-3000:]
    assert err.strip().splitlines()[-1] == "scenemtl: interrupted"
    # about a second; two shared cores add a few tenths to the exit
    assert elapsed < 1.5, f"took {elapsed:.2f} s"


@pytest.mark.slow
def test_ctrl_c_stops_predict_and_leaves_only_whole_files(tmp_path, trained) -> None:
    _, ckpt = trained
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(400):  # far more than it predicts before the signal
        Image.fromarray(rng.integers(0, 256, (64, 96, 3), dtype=np.uint8)).save(
            images / f"{i:03d}.png"
        )
    out = tmp_path / "out"
    argv = ["predict", "--ckpt_path", str(ckpt), "--input", str(images), "--output", str(out)]
    _one_line_130(*_interrupt(argv, tmp_path, ready=" -> "))  # its first image's line
    written = sorted(out.iterdir())
    assert written and len(written) < 400 * 5
    for path in written:  # whole PNGs only: no temporary file, nothing truncated
        assert not path.name.startswith(".") and path.suffix == ".png", path
        with Image.open(path) as im:
            im.load()


@pytest.mark.slow
def test_ctrl_c_stops_validate_and_removes_its_run_folder(tmp_path, trained) -> None:
    config, ckpt = trained
    runs = tmp_path / "runs"
    argv = ["validate", "--config", str(config), "--ckpt_path", str(ckpt)]
    argv += ["--run.root", str(runs), "--trainer.limit_val_batches", "1.0"]
    _one_line_130(*_interrupt(argv, tmp_path, ready="Loaded model weights"))
    # an evaluation writes run.json when complete: the half-done one leaves nothing
    assert not runs.exists(), sorted(runs.rglob("*"))
