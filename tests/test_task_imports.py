"""Task kinds and codecs sit below the dataset layouts, the run metrics and the panels.

The same rule is an import-linter contract in pyproject.toml (``make lint``); this test
reads the sources' imports itself, lazy and TYPE_CHECKING ones included, so the suite
holds it without the tool."""

from __future__ import annotations

import ast
from pathlib import Path

import scenemtl

PACKAGE = Path(scenemtl.__file__).resolve().parent
BELOW = {
    "tasks": ("data", "metrics", "visualize"),
    "codecs": ("data", "metrics", "visualize", "tasks"),
}


def imported_modules(path: Path, top: Path = PACKAGE) -> set[str]:
    """Every module ``path`` (a file under the package folder ``top``) imports, absolute
    names (relative imports resolved)."""
    package = ".".join(path.relative_to(top.parent).with_suffix("").parts[:-1])
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            found.add(base)
            found |= {f"{base}.{alias.name}" for alias in node.names}
    return found


def test_tasks_and_codecs_import_nothing_above_them():
    offending = []
    for low, forbidden in BELOW.items():
        for path in sorted((PACKAGE / low).rglob("*.py")):
            for module in imported_modules(path):
                for high in forbidden:
                    name = f"scenemtl.{high}"
                    if module == name or module.startswith(name + "."):
                        offending.append(f"{path.relative_to(PACKAGE)} imports {module}")
    assert offending == []


def test_the_check_sees_an_upward_import(tmp_path):
    """The reader finds lazy and relative imports (a check that cannot fail is no check)."""
    source = tmp_path / "scenemtl" / "tasks" / "x.py"
    source.parent.mkdir(parents=True)
    source.write_text("def f():\n    from ..metrics import grader\n")
    assert "scenemtl.metrics" in imported_modules(source, tmp_path / "scenemtl")
