"""Helpers the tests share: tiny datasets, tiny configs, running the CLI in a child process.

Plain functions, imported by the tests that need them (``from tests.helpers import ...``);
the fixtures built from them live in the conftest files.
"""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from scenemtl.data.format import DISPARITY8, DatasetInfo, encodable_range, write_info, write_sample

SLOW_FIXTURE = "_scenemtl_slow_fixture"
"""Attribute :func:`slow_fixture` sets on a fixture's function (read by tests/conftest.py)."""


def slow_fixture(**kwargs: Any) -> Callable[[Callable[..., Any]], Any]:
    """``pytest.fixture(**kwargs)`` for a fixture that trains or starts a process (a
    fitted checkpoint, a server): every test that uses it, directly or through another
    fixture, is marked ``slow`` at collection (tests/conftest.py), whichever test happens
    to set it up first. A fixture that trains or starts a process without it fails."""

    def declare(func: Callable[..., Any]) -> Any:
        setattr(func, SLOW_FIXTURE, True)
        return pytest.fixture(**kwargs)(func)

    return declare


def write_random_dataset(
    root: Path,
    sizes: dict[str, int] | None = None,
    image_size: tuple[int, int] = (24, 40),
    depth_encoding: str = DISPARITY8,
    test_gt: bool = True,
    seed: int = 0,
    num_classes: int = 19,
) -> DatasetInfo:
    """A tiny dataset with random RGB, labels (incl. ignore) and depth (incl. invalid).

    ``num_classes`` other than 19 writes a class table of that many made-up classes.
    """
    sizes = sizes or {"train": 4, "val": 2, "test": 2}
    rng = np.random.default_rng(seed)
    h, w = image_size
    lo, hi = encodable_range(depth_encoding)
    hi = min(hi, 300.0)
    for split, n in sizes.items():
        gt = test_gt or split != "test"
        for i in range(n):
            rgb = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            semseg = rng.integers(0, num_classes, (h, w)).astype(np.uint8)
            semseg[rng.random((h, w)) < 0.1] = 255
            depth = np.exp(rng.uniform(np.log(max(lo, 4.0)), np.log(hi), (h, w)))
            depth[: h // 6] = 0.0  # "sky"
            write_sample(
                root,
                split,
                i,
                rgb,
                semseg if gt else None,
                depth if gt else None,
                depth_encoding=depth_encoding,
                rgb_extension=".png",
                num_classes=num_classes,
            )
    info = DatasetInfo(
        name="random",
        image_size=image_size,
        splits={s: {"size": n, "gt": test_gt or s != "test"} for s, n in sizes.items()},
        depth_encoding=depth_encoding,
        depth_range_m=(max(lo, 4.0) if depth_encoding == DISPARITY8 else lo, hi),
        rgb_extension=".png",
        classes=[]
        if num_classes == 19
        else [
            {"name": f"class{i}", "color": [37 * i % 256, 91 * i % 256, 53 * i % 256]}
            for i in range(num_classes)
        ],
    )
    write_info(root, info)
    return info


def tiny_config(tmp_path: Path, root: Path, **overrides) -> Path:
    """Write a YAML config for a 2-epoch run of a narrow ResNet-18 joint model (16 wide)."""
    cfg = {
        "seed_everything": 0,
        "trainer": {
            "max_epochs": 2,
            "accelerator": "cpu",
            "devices": 1,
            "log_every_n_steps": 1,
            "enable_model_summary": False,
            "enable_progress_bar": False,
        },
        "model": {
            "net": {
                "architecture": "joint",
                "encoder": "resnet18",
                # a 16-wide ResNet-18 (0.8 M parameters instead of 11.4 M) tests the same
                # paths; its checkpoints are ~9 MB instead of 135 MB, which most fits save
                "encoder_width": 16,
                "channels": 16,
                "skip_channels": 8,
            },
            "optimizer": "adam",
            "lr": 0.001,
        },
        "data": {
            "root": str(root),
            "batch_size": 2,
            "val_batch_size": 2,
            "num_workers": 0,
            "crop_size": [32, 32],
            "scale_min": 0.75,
            "scale_max": 1.25,
        },
        "run": {"root": str(tmp_path / "runs"), "name": "tiny"},
        "visualize": {"ids": [0, 1], "every_n_epochs": 1},
        # a submission packs the checkpoint: only the tests about it pay for that
        "submission": {"enabled": False},
    }
    for dotted, value in overrides.items():
        node = cfg
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


REPO = Path(__file__).resolve().parents[1]
"""The repository root (the child processes' working folder)."""


def run_scenemtl(*argv: str) -> subprocess.CompletedProcess:
    """`python -m scenemtl ...` in a child process (for crashes and DDP workers)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO)])}
    return subprocess.run(
        [sys.executable, "-m", "scenemtl", *argv],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=900,
        check=False,
    )


def read_metrics(run_dir: Path) -> list[dict[str, str]]:
    """The rows of a run's metrics.csv."""
    with open(run_dir / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def default_sigint() -> None:
    """``preexec_fn`` of a child a test sends SIGINT: Python installs its Ctrl-C handler
    only when SIGINT is not ignored at start, and a shell without job control starts
    background jobs with it ignored (a suite run as ``(make test &)`` saw every such
    child ignore the signal)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
