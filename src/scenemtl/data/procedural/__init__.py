"""Procedural street scenes: the embedded default dataset.

A pinhole camera in a road lane looks down a randomly laid-out street; convex
primitives (planes, boxes, cylinders, ellipsoids) are ray cast analytically, which
gives exact per-pixel Cityscapes labels and metric depth; procedural textures, sun and
sky light, cast shadows, haze and a camera response make the RGB. See docs/synth.md.

Public API::

    SynthParams, GENERATOR_VERSION, default_root(params)
    synthesize(root, params, workers=None, progress=True, stats=True) -> DatasetInfo
    cached_dataset(params=None, workers=None) -> root (rendered on first use)
    render_sample(params, split, index) -> (rgb, semseg, depth)
    bench(size=(128, 256), n=64, workers=None) -> images/s
"""

from scenemtl.data.procedural.generate import bench, cached_dataset, render_sample, synthesize
from scenemtl.data.procedural.params import (
    GENERATOR_VERSION,
    SynthParams,
    data_home,
    default_root,
)

__all__ = [
    "GENERATOR_VERSION",
    "SynthParams",
    "bench",
    "cached_dataset",
    "data_home",
    "default_root",
    "render_sample",
    "synthesize",
]
