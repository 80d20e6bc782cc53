"""scenemtl: multi-task semantic segmentation and metric depth for street scenes.

``scenemtl.load(path)`` gives a trained :class:`~scenemtl.api.Model` (see
:mod:`scenemtl.api`); it is imported on first use, so ``import scenemtl`` stays cheap.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_LAZY = {"load": "scenemtl.api", "Model": "scenemtl.api"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'scenemtl' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])


__all__ = ["Model", "__version__", "load"]
