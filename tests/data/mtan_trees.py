"""Tiny MTAN-layout trees (the release's .npy folders), written by the tests themselves."""

from __future__ import annotations

from pathlib import Path

import numpy as np

H, W = 8, 16


def write_mtan_tree(
    root: Path,
    dataset: str = "cityscapes",
    sizes: dict[str, int] | None = None,
    channel_first: bool = False,
    seed: int = 0,
) -> Path:
    """Cityscapes (label_7 + label_19 + disparity) or NYUv2 (label + meters + normal).

    Every sample: left quarter labelled -1, the rest stripes of classes; depth 0 (invalid)
    in the top row; normals zero in the top row.
    """
    rng = np.random.default_rng(seed)
    sizes = sizes or {"train": 4, "val": 2}
    for split, n in sizes.items():
        for i in range(n):
            image = rng.random((H, W, 3), dtype=np.float32)
            if channel_first:
                image = np.moveaxis(image, -1, 0)
            _save(root / split / "image" / f"{i}.npy", image)
            cols = np.arange(W)[None, :].repeat(H, 0)
            if dataset == "cityscapes":
                for n_cls in (7, 19):
                    label = (cols % n_cls).astype(np.float32)
                    label[:, : W // 4] = -1
                    _save(root / split / f"label_{n_cls}" / f"{i}.npy", label)
                depth = rng.uniform(0.01, 0.45, (H, W, 1)).astype(np.float32)  # disparity
            else:
                label = (cols % 13).astype(np.float32)
                label[:, : W // 4] = -1
                _save(root / split / "label" / f"{i}.npy", label)
                depth = rng.uniform(0.5, 9.0, (H, W, 1)).astype(np.float32)  # meters
                normal = rng.normal(size=(H, W, 3)).astype(np.float32)
                normal /= np.linalg.norm(normal, axis=-1, keepdims=True)
                normal[0] = 0.0
                _save(root / split / "normal" / f"{i}.npy", normal)
            depth[0] = 0.0
            _save(root / split / "depth" / f"{i}.npy", depth)
    return root


def _save(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, array)
