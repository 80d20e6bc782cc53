"""The dataset images the page offers as examples (``scenemtl serve --data ROOT``)."""

from __future__ import annotations

import os
from pathlib import Path

from PIL import Image

from scenemtl.errors import UserError

EXAMPLE_SPLITS = ("val", "test")
"""Where examples come from: images the model did not train on."""

EXAMPLES_PER_SPLIT = 2


def dataset_examples(
    root: str | os.PathLike, cache_dir: str | os.PathLike, per_split: int = EXAMPLES_PER_SPLIT
) -> list[Path]:
    """The first ``per_split`` images of each of ``val`` and ``test`` of a dataset root,
    as image files: a MiniScapes root's own RGB files; an MTAN root's ``.npy`` images
    written as PNG into ``cache_dir`` (which must outlive the page).

    Raises:
        UserError: not a dataset root (see :func:`scenemtl.data.format.read_info`), or
            no image in either split.
    """
    from scenemtl.data.mtan import is_mtan_root

    root = Path(root).resolve()  # the page serves the files by absolute path
    found = (
        _mtan_examples(root, Path(cache_dir).resolve(), per_split)
        if is_mtan_root(root)
        else _miniscapes_examples(root, per_split)
    )
    if not found:
        raise UserError(f"{root}: no {' or '.join(EXAMPLE_SPLITS)} image to offer as example")
    return found


def _miniscapes_examples(root: Path, per_split: int) -> list[Path]:
    from scenemtl.data.format import find_rgb, read_info

    info = read_info(root)
    found = []
    for split in EXAMPLE_SPLITS:
        if split not in info.splits:
            continue
        for index in range(min(per_split, info.split_size(split))):
            path = find_rgb(root, split, index)
            if path.is_file():
                found.append(path)
    return found


def _mtan_examples(root: Path, cache_dir: Path, per_split: int) -> list[Path]:
    from scenemtl.data.mtan import read_image, read_mtan_info

    info = read_mtan_info(root)
    found = []
    for split in EXAMPLE_SPLITS:
        if split not in info.splits:
            continue
        for index in range(min(per_split, info.split_size(split))):
            out = cache_dir / f"{split}_{index}.png"
            Image.fromarray(read_image(root / split / "image" / f"{index}.npy")).save(out)
            found.append(out)
    return found


__all__ = ["EXAMPLES_PER_SPLIT", "EXAMPLE_SPLITS", "dataset_examples"]
