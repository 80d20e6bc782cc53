"""Evaluation of dense predictions the way the published benchmarks score them (boundary
F-measure with the BSDS/SEISM matching, saliency maxF and IoU). numpy/scipy/torch only."""

from scenemtl.evaluation.boundary import (
    HED_THRESHOLDS,
    MAX_DIST,
    SEISM_THRESHOLDS,
    BoundaryFMeasure,
    boundary_scores,
    image_counts,
    seg2bmap,
    split_counts,
)
from scenemtl.evaluation.saliency import SaliencyMetrics
from scenemtl.evaluation.thinning import thin

__all__ = [
    "HED_THRESHOLDS",
    "MAX_DIST",
    "SEISM_THRESHOLDS",
    "BoundaryFMeasure",
    "SaliencyMetrics",
    "boundary_scores",
    "image_counts",
    "seg2bmap",
    "split_counts",
    "thin",
]
