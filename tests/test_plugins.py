"""The promise of README and docs/architecture.md, kept by running it: a new task kind, a
new balancing method, a new encoder family and a new architecture are each one new module
plus one registry line, and every command works with them without any other file changed.

The test copies the package, writes the four modules into the copy, adds the four
registry lines (and nothing else), and runs the commands on the copy, one after the other
in one child process (tests/cli_batch.py): data stats and check, fit, validate, test,
grade, predict, export, bench, complexity, runs, and a two-variant study run + report.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from tests.helpers import tiny_config, write_random_dataset

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]

TASK_KIND = '''
"""A toy task kind: a binary mask, one logit channel, IoU of the "on" pixels."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor
from torchmetrics import Metric

from scenemtl.errors import DataFormatError
from scenemtl.tasks.base import Task

NO_LABEL = 255


class MaskIoU(Metric):
    full_state_update = False

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name
        self.add_state("inter", default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("union", default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, pred: Tensor, target: Tensor) -> None:
        labelled = target != NO_LABEL
        p, t = (pred == 1) & labelled, (target == 1) & labelled
        self.inter += (p & t).sum()
        self.union += (p | t).sum()

    def compute(self) -> dict[str, Tensor]:
        return {self.name: 100.0 * self.inter / self.union.clamp(min=1)}


class MaskTask(Task):
    kind = "toy_mask"
    headline_label = "mask IoU"
    headline_unit = "%"
    prediction_modes = ("L",)
    fill_value = NO_LABEL
    target_dtype = torch.long

    def __init__(self, name: str) -> None:
        super().__init__(name, 1)

    def read_target(self, path: Path) -> np.ndarray:
        values = np.asarray(Image.open(path)).astype(np.int64)
        if ((values > 1) & (values != NO_LABEL)).any():
            raise DataFormatError(f"{path}: mask values other than 0, 1, 255")
        return values

    def encode_png(self, prediction: np.ndarray) -> Image.Image:
        return Image.fromarray(np.asarray(prediction, dtype=np.uint8), mode="L")

    def read_prediction(self, image: Image.Image, target: np.ndarray) -> np.ndarray:
        values = np.asarray(image).astype(np.int64)
        if values.max(initial=0) > 1:
            raise DataFormatError("mask values other than 0 and 1")
        return values

    def loss(self, output: Tensor, target: Tensor) -> Tensor:
        labelled = target != NO_LABEL
        logits = output[:, 0].float()
        per_pixel = F.binary_cross_entropy_with_logits(
            logits, (target == 1).float(), reduction="none"
        )
        return (per_pixel * labelled).sum() / labelled.sum().clamp(min=1)

    def decode(self, output: Tensor) -> Tensor:
        return (output[:, 0] > 0).long()

    def make_metric(self) -> Metric:
        return MaskIoU(self.name)

    def colorize(self, values: np.ndarray) -> np.ndarray:
        return np.repeat((np.asarray(values) == 1)[..., None] * np.uint8(255), 3, axis=-1)

    def compare_export(
        self, reference: Mapping[str, np.ndarray], candidate: Mapping[str, np.ndarray]
    ) -> tuple[bool, str]:
        share = float((reference[self.name] != candidate[self.name]).mean())
        return share < 0.01, f"{self.name}: {100 * share:.2f}% of pixels differ"

    def example_target(
        self, batch: int, height: int, width: int, generator: torch.Generator
    ) -> Tensor:
        return torch.randint(0, 2, (batch, height, width), generator=generator)
'''

BALANCER = '''
"""A toy balancing method: the first task's loss counts twice."""

from __future__ import annotations

from torch import Tensor

from scenemtl.balancing.base import LossBalancer


class FirstTwice(LossBalancer):
    def combine(self, losses: Tensor, present: Tensor | None = None) -> tuple[Tensor, Tensor]:
        weights = self.base_weights.to(losses.dtype).clone()
        weights[0] = 2 * weights[0]
        if present is not None:  # a task without labels in this batch counts 0
            weights = weights * present.to(weights)
        return (weights * losses).sum(), weights
'''

ENCODER = '''
"""A toy encoder family: three strided convs (strides 4, 8, 32)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor, nn

from scenemtl.models.encoders.base import Encoder


@dataclass(frozen=True)
class ToyOptions:
    width: int = 8


class ToyEncoder(Encoder):
    names: ClassVar[tuple[str, ...]] = ("toy_enc",)
    Options: ClassVar[type] = ToyOptions

    def __init__(self, name: str, options: ToyOptions) -> None:
        super().__init__()
        w = options.width
        self.s4 = nn.Sequential(nn.Conv2d(3, w, 4, stride=4), nn.ReLU())
        self.s8 = nn.Sequential(nn.Conv2d(w, w, 2, stride=2), nn.ReLU())
        self.s32 = nn.Sequential(nn.Conv2d(w, 2 * w, 3, stride=4, padding=1), nn.ReLU())
        self.channels = {4: w, 8: w, 32: 2 * w}
        self.output_stride = 32

    def forward(self, x: Tensor) -> dict[int, Tensor]:
        f4 = self.s4(x)
        f8 = self.s8(f4)
        return {4: f4, 8: f8, 32: self.s32(f8)}
'''

ARCHITECTURE = '''
"""A toy architecture: the encoder's 8x level, one 3x3 conv per task (its option)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor, nn

from scenemtl.models.base import MultiTaskNet
from scenemtl.models.config import ModelConfig


@dataclass(frozen=True)
class ToyHeadsOptions:
    hidden: int = 6


class ToyHeadsNet(MultiTaskNet):
    Options: ClassVar[type] = ToyHeadsOptions

    def __init__(self, cfg: ModelConfig, heads: Mapping[str, int]) -> None:
        super().__init__(cfg, heads)
        c = self.encoder.channels[8]
        h = self.options.hidden
        self.heads_ = nn.ModuleDict(
            {
                name: nn.Sequential(nn.Conv2d(c, h, 3, padding=1), nn.ReLU(), nn.Conv2d(h, k, 1))
                for name, k in self.heads.items()
            }
        )

    def shared_forward(self, x: Tensor) -> dict[str, Tensor]:
        return {"features": self.encoder(x)[8]}

    def shared_modules(self) -> list[nn.Module]:
        return [self.encoder]

    def decode(self, shared: dict[str, Tensor]) -> dict[str, list[Tensor]]:
        return {name: [head(shared["features"])] for name, head in self.heads_.items()}
'''

# (file of the copy, module text) and (registry file, line after which, the new line)
MODULES = {
    "tasks/toy_mask.py": TASK_KIND,
    "balancing/toy_first_twice.py": BALANCER,
    "models/encoders/toy.py": ENCODER,
    "models/toy_heads.py": ARCHITECTURE,
}
REGISTRATIONS = [
    (
        "tasks/__init__.py",
        "TASK_KINDS: dict[str, type[Task]] = {\n",
        '    "toy_mask": __import__("scenemtl.tasks.toy_mask", fromlist=["MaskTask"]).MaskTask,\n',
    ),
    (
        "balancing/__init__.py",
        "BALANCERS: dict[str, Callable[..., LossBalancer]] = {\n",
        '    "first_twice": __import__(\n'
        '        "scenemtl.balancing.toy_first_twice", fromlist=["x"]\n'
        "    ).FirstTwice,\n",
    ),
    (
        "models/encoders/registry.py",
        "ENCODER_FAMILIES: dict[str, type[Encoder] | Family] = {\n",
        '    "toy": __import__("scenemtl.models.encoders.toy", fromlist=["x"]).ToyEncoder,\n',
    ),
    (
        "models/registry.py",
        "ARCHITECTURES: dict[str, type[MultiTaskNet]] = {\n",
        '    "toy_heads": __import__("scenemtl.models.toy_heads", fromlist=["x"]).ToyHeadsNet,\n',
    ),
]


@pytest.fixture(scope="module")
def package(tmp_path_factory) -> Path:
    """A copy of the package with the four plug-ins: four new files, four new lines."""
    root = tmp_path_factory.mktemp("plugged")
    copy = root / "scenemtl"
    shutil.copytree(REPO / "src" / "scenemtl", copy, ignore=shutil.ignore_patterns("__pycache__"))
    for relative, text in MODULES.items():
        assert not (copy / relative).exists()
        (copy / relative).write_text(text.lstrip())
    for relative, anchor, line in REGISTRATIONS:
        path = copy / relative
        source = path.read_text()
        assert source.count(anchor) == 1, f"{relative}: the registry is not where it was"
        path.write_text(source.replace(anchor, anchor + line))
    return root


def scenemtl_batch(package: Path, commands: dict[str, tuple], cwd: Path) -> dict[str, dict]:
    """Run the command lines (by a name of the test's) one after the other in ONE child
    process on the package copy (tests/cli_batch.py: torch and Lightning imported once,
    not once per command); each must succeed without a traceback. Returns each command's
    result (``code``, ``stdout``, ``stderr``) by its name."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(package), str(REPO)])}
    batch = cwd / "batch.json"
    batch.write_text(json.dumps([[str(a) for a in argv] for argv in commands.values()]))
    done = subprocess.run(
        [sys.executable, "-m", "tests.cli_batch", str(batch)],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=1800,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(done.stdout.strip().splitlines()[-1])
    for result in results:
        where = f"{result['argv'][:2]}: {result['stderr'][-3000:]}"
        assert "Traceback" not in result["stderr"], where
        assert result["code"] == 0, where
    assert len(results) == len(commands), "the batch stopped early"
    return dict(zip(commands, results, strict=True))


def write_mask_dataset(root: Path) -> None:
    """A tiny dataset whose dataset.json lists the toy task beside semseg and depth."""
    from scenemtl.data.format import read_info, write_info

    write_random_dataset(root, sizes={"train": 4, "val": 2, "test": 2})
    rng = np.random.default_rng(7)
    for split, count in (("train", 4), ("val", 2), ("test", 2)):
        (root / split / "mask").mkdir()
        for i in range(count):
            mask = (rng.random((24, 40)) < 0.4).astype(np.uint8)
            Image.fromarray(mask).save(root / split / "mask" / f"{i}.png")
    info = read_info(root)
    write_info(root, dataclasses.replace(info, extra_tasks={"mask": {"kind": "toy_mask"}}))


def test_every_command_runs_on_a_new_task_method_encoder_and_architecture(package, tmp_path):
    data = tmp_path / "data"
    write_mask_dataset(data)
    config = tiny_config(
        tmp_path,
        data,
        **{
            "trainer.max_epochs": 1,
            "model.net.architecture": "toy_heads",
            "model.net.encoder": "toy_enc",
            "model.net.options": {"hidden": 5},
            "model.net.encoder_options": {"width": 16},  # model.net.encoder_width is its flat key
            "model.loss_weighting": "first_twice",
            "submission.enabled": True,
        },
    )
    version = tmp_path / "runs" / "tiny" / "version_0"
    ckpt = version / "checkpoints" / "best.ckpt"
    submission = version / "submission.zip"
    (tmp_path / "images").mkdir()
    Image.fromarray(np.zeros((24, 40, 3), np.uint8)).save(tmp_path / "images" / "a.png")
    study = tmp_path / "study.yaml"
    study.write_text(
        yaml.safe_dump(
            {
                "name": "toy",
                "config": config.name,
                "seeds": [0],
                # the fit above packed and graded a submission; the study's runs need not
                "overrides": {"submission.enabled": False},
                "variants": [
                    {"name": "first_twice"},
                    {"name": "fixed", "overrides": {"model.loss_weighting": "fixed"}},
                ],
            }
        )
    )
    images, predictions, onnx = tmp_path / "images", tmp_path / "p", tmp_path / "m.onnx"
    done = scenemtl_batch(
        package,
        {
            "stats": ("data", "stats", "--root", data),
            "check": ("data", "check", "--root", data),
            "fit": ("fit", "--config", config),
            "validate": ("validate", "--config", config, "--ckpt_path", ckpt),
            "test": ("test", "--config", config, "--ckpt_path", ckpt),
            "grade": ("grade", submission, "--gt", data, "--split", "test"),
            "predict": ("predict", "--ckpt_path", ckpt, "--input", images, "--output", predictions),
            "export": ("export", "onnx", "--ckpt_path", ckpt, "--out", onnx),
            "bench": ("bench", "--config", config, "--steps", "2"),
            "complexity": ("complexity", "--config", config, "--size", "32x64"),
            "runs": ("runs", tmp_path / "runs"),
            "study run": ("study", "run", study, "--runs", tmp_path / "study_runs"),
            "study report": ("study", "report", study, "--runs", tmp_path / "study_runs"),
        },
        cwd=tmp_path,
    )

    record = json.loads((version / "run.json").read_text())
    assert list(record["tasks"]) == ["semseg", "depth", "mask"], record["tasks"]
    assert "mask" in done["fit"]["stdout"] or (version / "metrics.csv").read_text().count(
        "val/mask"
    )
    with zipfile.ZipFile(submission) as archive:
        assert any("mask" in name for name in archive.namelist())
    assert "mask" in done["grade"]["stdout"]
    assert (predictions / "a_mask.png").is_file()
    assert "mask" in done["export"]["stdout"] + done["export"]["stderr"]
    bench = done["bench"]["stdout"]
    assert "mask" in bench and "first_twice" in bench and "toy_heads" in bench
    header = done["runs"]["stdout"].splitlines()[0]
    assert "mask" in header, header
    report = done["study report"]["stdout"]
    assert "| first_twice | 1/1 |" in report and "| fixed | 1/1 |" in report
    assert "mask IoU" in report
