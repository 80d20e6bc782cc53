"""A picture of the generated data: ``python -m scenemtl.data.procedural.montage``.

Each sample is shown as RGB | semantic labels in Cityscapes colours | depth (turbo
colour map on log depth, near = red, far = blue, invalid = black) and, with
``--normals``, | surface normals ((n + 1) / 2 of camera-frame x, y, z as R, G, B,
invalid = black; docs/normals.md) and, with ``--boundaries``, | boundaries (white on
black; docs/synth.md).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

from scenemtl.codecs.classes import class_colors
from scenemtl.data.format import IGNORE_INDEX, encode_normals
from scenemtl.data.procedural.boundaries import label_boundaries
from scenemtl.data.procedural.generate import sample_layers
from scenemtl.data.procedural.params import SynthParams


def depth_colours(depth: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """float32 [H, W] meters (0 = invalid) -> uint8 [H, W, 3]."""
    import matplotlib

    valid = depth > 0
    t = np.zeros(depth.shape)
    t[valid] = (np.log(hi) - np.log(np.clip(depth[valid], lo, hi))) / (np.log(hi) - np.log(lo))
    # Skip turbo's darkest end so that far depth never looks like the black of invalid.
    rgb = matplotlib.colormaps["turbo"](0.1 + 0.9 * t)[..., :3]
    rgb[~valid] = 0.0
    return (rgb * 255).round().astype(np.uint8)


def label_colours(semseg: np.ndarray) -> np.ndarray:
    """uint8 [H, W] trainIds -> uint8 [H, W, 3] Cityscapes colours (ignore = black)."""
    lut = np.zeros((256, 3), np.uint8)
    lut[: len(class_colors())] = np.array(class_colors(), np.uint8)
    lut[IGNORE_INDEX] = 0
    return lut[semseg]


def montage(
    params: SynthParams,
    split: str,
    indices: list[int],
    columns: int = 2,
    gap: int = 2,
    normals: bool = False,
    boundaries: bool = False,
) -> np.ndarray:
    """uint8 [rows * (H + gap), columns * (kW + gap), 3] grid of samples, k = 3 panels
    per sample (one more with ``normals``, one more with ``boundaries``)."""
    h, w = params.size
    lo, hi = params.depth_range_m
    k = 3 + int(normals) + int(boundaries)
    rows = -(-len(indices) // columns)
    out = np.full((rows * (h + gap) - gap, columns * (k * w + gap) - gap, 3), 255, np.uint8)
    for n, i in enumerate(indices):
        layers = sample_layers(params, split, i)
        panels = [layers["rgb"], label_colours(layers["semseg"])]
        panels.append(depth_colours(layers["depth"], lo, hi))
        if normals:
            panels.append(np.asarray(encode_normals(layers["normals"])))
        if boundaries:
            edges = label_boundaries(layers["semseg"])
            panels.append(np.repeat(edges[..., None] * np.uint8(255), 3, axis=-1))
        r, c = divmod(n, columns)
        y, x = r * (h + gap), c * (k * w + gap)
        for j, panel in enumerate(panels):
            out[y : y + h, x + j * w : x + (j + 1) * w] = panel
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Render a montage of generated samples.")
    parser.add_argument("--out", default="docs/synth_montage.png")
    parser.add_argument("--size", default="128x256", help="HxW")
    parser.add_argument("-n", type=int, default=12, help="number of samples")
    parser.add_argument("--split", default="val")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--columns", type=int, default=2)
    parser.add_argument("--normals", action="store_true", help="add a surface normals panel")
    parser.add_argument("--boundaries", action="store_true", help="add a boundaries panel")
    args = parser.parse_args(argv)
    h, w = (int(v) for v in args.size.lower().split("x"))
    params = SynthParams(size=(h, w), seed=args.seed)
    grid = montage(
        params,
        args.split,
        list(range(args.n)),
        args.columns,
        normals=args.normals,
        boundaries=args.boundaries,
    )
    # An adaptive 256-colour palette keeps the committed PNG small.
    img = Image.fromarray(grid).quantize(
        256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE
    )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    img.save(args.out, optimize=True)
    print(f"montage of {args.n} {args.split} samples ({h}x{w}) -> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
