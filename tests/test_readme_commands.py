"""Every command that README.md and docs/*.md show in a shell block runs, here.

Each command of a fenced ``bash``/``sh``/``shell``/``console`` block (a line, with its
``\\`` continuations and without its comment) is either in :data:`RUNNABLE`, and runs in
this process on tiny data with the substitutions of :func:`substitute`, or in
:data:`NOT_RUNNABLE` with the reason. A command in neither fails
:func:`test_every_shell_command_is_classified`: a new README command must be classified,
so that it cannot break unnoticed.

The substitutions keep each command as written and change only what makes it slow or
impossible here: ``configs/X.yaml`` becomes a copy of that config for one training step
on the tiny dataset of ``tests/conftest.py`` (no ImageNet download, no workers, 32x32
crops), ``/data/cityscapes`` a fake Cityscapes tree, ``/data/cityscapes2`` a fake MTAN
tree, ``/data/NYUD_MT`` and ``/data/PASCAL_MT`` tiny releases, ``data synth`` renders
4/2/2 images, the default procedural dataset is the tiny one,
``bench`` and ``export`` time 2 and 1 runs. ``runs/demo/version_0`` is one fitted run of
``configs/demo.yaml`` shared by the commands that need a checkpoint (what ``make demo``
leaves behind).
"""

from __future__ import annotations

import contextlib
import io
import itertools
import re
import shlex
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from scenemtl.cli import main
from tests.data.mtan_trees import write_mtan_tree
from tests.data.mtl_trees import write_nyud_tree, write_pascal_tree
from tests.data.test_cityscapes import _write_fake_cityscapes
from tests.helpers import slow_fixture

REPO = Path(__file__).resolve().parents[1]
DOCUMENTS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
SHELL_LANGUAGES = {"bash", "sh", "shell", "console"}


def normalize(line: str) -> str:
    """One command line as the shell reads it: words re-joined, comment dropped."""
    return shlex.join(shlex.split(line, comments=True))


NOT_RUNNABLE: dict[str, str] = {
    normalize(k): v
    for k, v in {
        "make demo": "renders 1500 images and trains 4 epochs (4-10 minutes)",
        "make test": "the whole suite (8-10 minutes) and the install",
        "tensorboard --logdir runs": "a server that runs until stopped",
        "torchrun --nnodes 2 --nproc-per-node 4 --rdzv-backend c10d --rdzv-endpoint "
        "HOST:29500 -m scenemtl fit --config configs/distillation.yaml --trainer.devices 4 "
        "--trainer.num_nodes 2 --trainer.strategy ddp": "torchrun on 2 nodes of 4 GPUs",
        "scenemtl study run studies/course.yaml --preset cpu && scenemtl study report "
        "studies/course.yaml": "18 trainings, about 70 minutes",
        "scenemtl study run studies/course.yaml --preset cpu": "18 trainings, about 70 minutes",
        "scenemtl study report studies/course.yaml": "reports the 18 runs of `study run`",
        "scenemtl study run studies/backbones.yaml --preset cpu && scenemtl study report "
        "studies/backbones.yaml --preset cpu": "16 trainings, about an hour",
        "scenemtl study tune studies/hyperparameters.yaml --preset cpu --trials 12": (
            "12 trainings, hours"
        ),
        "scenemtl hub push demo-model user/demo-model --private": (
            "needs a Hub account and the network; tests/api/test_hub.py runs it against "
            "huggingface_hub with its HTTP client mocked"
        ),
        "scenemtl predict --ckpt_path hf://user/demo-model --input photos/ --output preds/": (
            "needs the repository on the Hub; tests/api/test_hub.py runs it from a "
            "pre-filled Hub cache offline"
        ),
    }.items()
}
"""Command -> why a test cannot run it."""

RUNNABLE: set[str] = {
    normalize(k)
    for k in (
        # README.md
        "scenemtl data cityscapes --src /data/cityscapes --out /data/cityscapes-256x512 "
        "--size 256x512",
        "scenemtl data stats --root /data/cityscapes-256x512",
        "scenemtl fit --config configs/cityscapes_mtan.yaml --data.root /data/cityscapes2",
        "scenemtl runs runs --last-epochs 10",
        "scenemtl fit --config configs/deeplabv3p.yaml",
        "scenemtl fit --config configs/deeplabv3p.yaml --model.lr 3e-4 --data.batch_size 8 "
        "--run.name lr3e-4",
        "scenemtl fit --config configs/deeplabv3p.yaml --ckpt_path last",
        "scenemtl test --config configs/deeplabv3p.yaml "
        "--ckpt_path runs/deeplabv3p/version_0/checkpoints/best.ckpt",
        "scenemtl fit --config configs/demo.yaml --model.loss_weighting upgrad "
        "--run.name demo-upgrad",
        "scenemtl bench --config configs/demo.yaml --model.loss_weighting pcgrad",
        "scenemtl fit --config configs/demo.yaml --data.tasks '[semseg]' --run.name demo-semseg",
        "scenemtl fit --config configs/demo.yaml --data.tasks '[depth]' --run.name demo-depth",
        "scenemtl data synth --tasks semseg depth normals --train 200 --val 50 --test 50",
        'ROOT="$(scenemtl data synth --tasks semseg depth normals --train 200 --val 50 '
        '--test 50 --print-root)"',
        'scenemtl fit --config configs/demo.yaml --data.root "$ROOT" --trainer.max_epochs 2 '
        "--run.name demo-normals",
        'scenemtl grade runs/demo-normals/version_0/submission.zip --gt "$ROOT"',
        "scenemtl grade runs/demo/version_0/submission.zip "
        '--gt "$(scenemtl data synth --print-root)"',
        "scenemtl predict --ckpt_path runs/demo/version_0/checkpoints/best.ckpt "
        "--input photos/ --output preds/",
        "scenemtl predict --ckpt_path runs/demo/version_0/checkpoints/best.ckpt "
        "--input photos/ --output preds/ --tta-scales 0.75 1 1.25 --tta-flip",
        "scenemtl export onnx --ckpt_path runs/demo/version_0/checkpoints/best.ckpt "
        "--out demo.onnx --size 128x256",
        # docs/benchmarks.md
        "scenemtl data cityscapes --src /data/cityscapes --out /data/cityscapes-mtan "
        "--layout mtan --classes 7 --depth disparity --size 128x256",
        "scenemtl fit --config configs/cityscapes_mtan.yaml --data.root /data/cityscapes2 "
        "--data.tasks '[semseg]' --run.name stl_semseg",
        "scenemtl fit --config configs/cityscapes_mtan.yaml --data.root /data/cityscapes2 "
        "--data.tasks '[depth]' --run.name stl_depth",
        "scenemtl fit --config configs/cityscapes_mtan.yaml --data.root /data/cityscapes2 "
        "--model.loss_weighting dwa --run.name dwa",
        "scenemtl fit --config configs/nyud.yaml --data.root /data/NYUD_MT",
        "scenemtl fit --config configs/nyud.yaml --data.root /data/NYUD_MT --data.tasks '[semseg]'",
        # docs/data.md
        "scenemtl data check --root /data/PASCAL_MT",
        "scenemtl fit --config configs/pascal_context.yaml --data.root /data/PASCAL_MT",
    )
}
"""Commands that run here (after :func:`substitute`)."""


# --------------------------------------------------------------------------------------
# reading the documents


@dataclass(frozen=True)
class Block:
    """One shell block: where it starts and its commands, in order."""

    where: str
    commands: tuple[str, ...]


_FENCE = re.compile(r"^\s*(```+|~~~+)\s*([^\s`]*)")


def shell_blocks(path: Path) -> list[Block]:
    """The shell blocks of a Markdown file, each command normalized (see :func:`normalize`)."""
    blocks: list[Block] = []
    fence: str | None = None
    shell, start, lines = False, 0, []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        m = _FENCE.match(line)
        if fence is None and m:
            fence, shell, start, lines = (
                m.group(1),
                m.group(2).lower() in SHELL_LANGUAGES,
                number,
                [],
            )
        elif (
            fence is not None
            and line.strip().startswith(fence)
            and not line.strip()[len(fence) :].strip()
        ):
            if shell:
                name = path.relative_to(REPO) if path.is_relative_to(REPO) else path
                blocks.append(Block(f"{name}:{start}", _commands(lines)))
            fence = None
        elif fence is not None:
            lines.append(line)
    return blocks


def _commands(lines: list[str]) -> tuple[str, ...]:
    joined: list[str] = []
    pending = ""
    for line in lines:
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        joined.append(pending + line)
        pending = ""
    if pending:
        joined.append(pending)
    return tuple(c for c in (normalize(line) for line in joined) if c)


BLOCKS = [block for path in DOCUMENTS for block in shell_blocks(path)]


def test_every_shell_command_is_classified():
    """A command neither runnable nor listed as not runnable fails here: classify it (and
    a listed command that no document shows any more is dropped from the lists)."""
    assert BLOCKS, "no shell block found: the parser broke"
    shown = {c for block in BLOCKS for c in block.commands}
    unclassified = [
        f"{b.where}: {c}"
        for b in BLOCKS
        for c in b.commands
        if (c in RUNNABLE) == (c in NOT_RUNNABLE)
    ]
    assert not unclassified, "add to RUNNABLE or NOT_RUNNABLE:\n" + "\n".join(unclassified)
    stale = sorted((RUNNABLE | set(NOT_RUNNABLE)) - shown)
    assert not stale, f"no document shows these any more: {stale}"


def test_the_parser_reads_continuations_comments_and_fences(tmp_path):
    doc = tmp_path / "case.md"
    doc.write_text(
        "text\n```bash\nscenemtl runs runs   # a comment\n\nscenemtl predict --ckpt_path a \\\n"
        "  --tta-flip\n```\n```\nscenemtl in a block of no language\n```\n"
        "~~~sh\nmake demo && make test\n~~~\n"
    )
    blocks = shell_blocks(doc)
    assert [b.commands for b in blocks] == [
        ("scenemtl runs runs", "scenemtl predict --ckpt_path a --tta-flip"),
        ("make demo '&&' make test",),
    ]
    assert [b.where for b in blocks] == [f"{doc}:2", f"{doc}:11"]


# --------------------------------------------------------------------------------------
# running them


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for key, value in extra.items():
        out[key] = _merge(out.get(key) or {}, value) if isinstance(value, dict) else value
    return out


@dataclass
class Workspace:
    """The folder the commands run in, and the data their paths stand for."""

    path: Path
    tiny_root: Path
    paths: dict[str, str]

    def config(self, name: str) -> str:
        """``configs/<name>`` made one training step on the tiny data (written once)."""
        target = self.path / "configs" / Path(name).name
        if not target.exists():
            cfg = yaml.safe_load((REPO / name).read_text(encoding="utf-8"))
            data = cfg.get("data") or {}
            fast = {
                "trainer": {
                    "max_epochs": 1,
                    "max_steps": 1,
                    "limit_val_batches": 1,
                    "limit_test_batches": 1,
                    "num_sanity_val_steps": 0,
                    "accelerator": "cpu",
                    "devices": 1,
                    "enable_progress_bar": False,
                },
                # the config's architecture, at the smallest width (checkpoints of ~9
                # instead of 320 MB); tests/test_configs.py builds the configured networks
                "model": {
                    "net": {
                        "weights": None,
                        "encoder": "resnet18",
                        "encoder_width": 16,
                        "channels": 16,
                        "skip_channels": 8,
                    },
                    "grad_monitor_every": 0,
                },
                "data": {
                    "batch_size": 2,
                    "val_batch_size": 4,
                    "num_workers": 0,
                    "train_limit": 2,
                    **({"root": str(self.tiny_root)} if data.get("root") is None else {}),
                    **({"crop_size": [32, 32]} if data.get("crop_size") else {}),
                },
                "visualize": {"ids": [0]},
                # only the runs a documented command grades write one (see substitute)
                "submission": {"enabled": False},
            }
            target.parent.mkdir(exist_ok=True)
            target.write_text(yaml.safe_dump(_merge(cfg, fast)), encoding="utf-8")
        return str(target)

    def substitute(self, argv: list[str]) -> list[str] | str:
        """The argv to run for a documented one, or (a str) the output that stands for it."""
        if argv == ["scenemtl", "data", "synth", "--print-root"]:
            return str(self.tiny_root)  # the default procedural dataset is the tiny one
        out = [self.paths.get(a, a) for a in argv]
        out = [self.config(a) if re.fullmatch(r"configs/\w+\.yaml", a) else a for a in out]
        if out[1:3] == ["data", "synth"]:
            small = {"--train": "4", "--val": "2", "--test": "2"}
            out = [small.get(prev, a) for prev, a in zip(["", *out[:-1]], out, strict=True)]
        if out[1:2] == ["fit"] and _run_name(argv) in GRADED:
            out += ["--submission.enabled", "true"]
        if out[1:2] == ["bench"]:
            out += ["--steps", "2"]
        if out[1:3] == ["export", "onnx"]:
            out += ["--runs", "1"]
        return out

    @contextlib.contextmanager
    def inside(self) -> Iterator[None]:
        with pytest.MonkeyPatch.context() as mp:
            mp.chdir(self.path)
            mp.setenv("SCENEMTL_DATA", str(self.path / "cache"))
            yield

    def scenemtl(self, argv: list[str]) -> str:
        """Run a documented command line (after substitution); returns its stdout."""
        run = self.substitute(argv)
        if isinstance(run, str):
            return run
        assert run[0] == "scenemtl", f"not a scenemtl command: {shlex.join(argv)}"
        stdout = io.StringIO()
        with contextlib.redirect_stdout(stdout):
            try:
                main(run[1:])
                code = 0
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        assert code == 0, f"`{shlex.join(argv)}` exited {code} (ran: {shlex.join(run)})"
        return stdout.getvalue()

    def shell(self, line: str, variables: dict[str, str]) -> None:
        """One documented line: ``&&`` chains, ``NAME="$(...)"``, ``"$NAME"``, ``"$(...)"``."""
        words = shlex.split(line, comments=True)
        commands: list[list[str]] = [[]]
        for word in words:
            if word == "&&":
                commands.append([])
            else:
                commands[-1].append(word)
        for command in commands:
            assign = re.fullmatch(r"([A-Za-z_]\w*)=(.*)", command[0], re.DOTALL)
            if assign and len(command) == 1:
                variables[assign.group(1)] = self._expand(assign.group(2), variables)
                continue
            self.scenemtl([self._expand(w, variables) for w in command])

    def _expand(self, word: str, variables: dict[str, str]) -> str:
        sub = re.fullmatch(r"\$\((.*)\)", word, re.DOTALL)
        if sub:
            return self.scenemtl(shlex.split(sub.group(1))).strip()
        var = re.fullmatch(r"\$([A-Za-z_]\w*)", word)
        if var:
            return variables[var.group(1)]
        assert "$" not in word, f"shell syntax this test does not know: {word}"
        return word


@slow_fixture(scope="module")
def workspace(tmp_path_factory, tiny_root) -> Workspace:
    """A folder with photos/, fake Cityscapes and MTAN trees, and the demo's fitted run."""
    path = tmp_path_factory.mktemp("readme")
    data = tmp_path_factory.mktemp("data")
    _write_fake_cityscapes(data / "cityscapes")
    write_mtan_tree(data / "cityscapes2")
    write_nyud_tree(data / "NYUD_MT")
    write_pascal_tree(data / "PASCAL_MT")
    paths = {
        "/data/NYUD_MT": str(data / "NYUD_MT"),
        "/data/PASCAL_MT": str(data / "PASCAL_MT"),
        "/data/cityscapes": str(data / "cityscapes"),
        "/data/cityscapes2": str(data / "cityscapes2"),
        "/data/cityscapes-256x512": str(data / "cityscapes-256x512"),
        "/data/cityscapes-mtan": str(data / "cityscapes-mtan"),
    }
    ws = Workspace(path, tiny_root, paths)
    (path / "photos").mkdir()
    for i in (0, 1):  # "the first two test images ..., copied into photos/"
        shutil.copy(tiny_root / "test" / "rgb" / f"{i}.png", path / "photos" / f"{i}.png")
    with ws.inside():
        ws.scenemtl(["scenemtl", "fit", "--config", "configs/demo.yaml"])  # what make demo fits
    assert (path / "runs" / "demo" / "version_0" / "submission.zip").is_file()
    return ws


def _run_name(argv: list[str]) -> str:
    """The run a documented ``fit`` logs into: ``--run.name``, else the config's stem."""
    words = dict(itertools.pairwise(argv))
    return words.get("--run.name") or Path(words.get("--config", "")).stem


GRADED = {
    m.group(1)
    for block in BLOCKS
    for command in block.commands
    for m in re.finditer(r"grade runs/([^/\s]+)/", command)
}
"""The runs whose submission a documented command grades: only their fits write one."""

RUN_BLOCKS = [b for b in BLOCKS if any(c in RUNNABLE for c in b.commands)]


@pytest.mark.slow
@pytest.mark.parametrize("block", RUN_BLOCKS, ids=[b.where for b in RUN_BLOCKS])
def test_documented_block_runs(workspace, block):
    variables: dict[str, str] = {}
    with workspace.inside():
        for command in block.commands:
            if command in RUNNABLE:
                workspace.shell(command, variables)
