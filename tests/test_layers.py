"""The import contracts of pyproject.toml ([tool.importlinter], docs/architecture.md)
hold, and they catch an upward import, a torch import in the reporting layer and a cycle."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT = Path(sys.executable).with_name("lint-imports")


def lint_imports(src: Path, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(src)}
    return subprocess.run(
        [str(LINT), "--no-cache", "--no-logo", str(ROOT / "pyproject.toml")],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
    )


pytestmark = pytest.mark.skipif(not LINT.exists(), reason="import-linter not installed")


@pytest.mark.slow
def test_the_import_contracts_hold(tmp_path):
    proc = lint_imports(ROOT / "src", tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 broken" in proc.stdout


@pytest.mark.parametrize(
    ("module", "line", "broken"),
    [
        # the studies read runs through the reporting layer, never through a command
        ("studies/report.py", "import scenemtl.commands.runs", "Layers"),
        ("studies/runner.py", "import scenemtl.cli", "Layers"),
        ("reporting/runs.py", "import torch", "never load torch"),
        ("models/joint.py", "import scenemtl.tasks", "do not know each other"),
        ("reporting/run_dir.py", "import scenemtl.reporting.runs", "No import cycles"),
    ],
)
@pytest.mark.slow
def test_a_forbidden_import_breaks_a_contract(tmp_path, module, line, broken):
    src = tmp_path / "src"
    shutil.copytree(
        ROOT / "src" / "scenemtl", src / "scenemtl", ignore=shutil.ignore_patterns("__pycache__")
    )
    path = src / "scenemtl" / module
    path.write_text(path.read_text() + f"\n{line}  # noqa\n")
    proc = lint_imports(src, tmp_path)
    assert proc.returncode != 0
    text = " ".join(proc.stdout.split())
    assert [ln for ln in text.split(" KEPT") if broken in ln and "BROKEN" in ln], text
