"""bwmorph 'thin' port against a direct, pixel-by-pixel reading of its definition."""

import numpy as np
import pytest
from scipy import ndimage

from scenemtl.evaluation.thinning import thin, thin_levels


def _reference_thin(mask: np.ndarray) -> np.ndarray:
    """Lam, Lee & Suen (1992) p. 879, written out per pixel with plain loops."""
    img = np.pad(mask.astype(bool), 1)
    steps = [(0, 1), (-1, 1), (-1, 0), (-1, -1), (0, -1), (1, -1), (1, 0), (1, 1)]

    def deletable(y: int, x: int, second: bool) -> bool:
        v = [None] + [bool(img[y + dy, x + dx]) for dy, dx in steps]  # v[1..8]
        v.append(v[1])
        crossing = sum(1 for i in range(1, 5) if not v[2 * i - 1] and (v[2 * i] or v[2 * i + 1]))
        n1 = sum(1 for k in range(1, 5) if v[2 * k - 1] or v[2 * k])
        n2 = sum(1 for k in range(1, 5) if v[2 * k] or v[2 * k + 1])
        if crossing != 1 or not 2 <= min(n1, n2) <= 3:
            return False
        if second:
            return not ((v[6] or v[7] or not v[4]) and v[5])
        return not ((v[2] or v[3] or not v[8]) and v[1])

    while True:
        changed = False
        for second in (False, True):
            doomed = [
                (y, x)
                for y in range(1, img.shape[0] - 1)
                for x in range(1, img.shape[1] - 1)
                if img[y, x] and deletable(y, x, second)
            ]
            for y, x in doomed:  # simultaneous: decided on the image before any deletion
                img[y, x] = False
            changed |= bool(doomed)
        if not changed:
            return img[1:-1, 1:-1]


@pytest.mark.parametrize("seed", range(6))
def test_thin_matches_the_definition_on_random_shapes(seed):
    rng = np.random.default_rng(seed)
    mask = rng.random((24, 31)) < rng.uniform(0.3, 0.8)
    mask = ndimage.binary_closing(mask, iterations=seed % 3)
    np.testing.assert_array_equal(thin(mask), _reference_thin(mask))


def test_thin_stack_equals_maps_one_by_one():
    rng = np.random.default_rng(7)
    stack = ndimage.binary_dilation(rng.random((4, 20, 25)) < 0.1, iterations=2)
    stack[2] = False  # an empty map in the stack stays empty
    for k in range(4):
        np.testing.assert_array_equal(thin(stack)[k], thin(stack[k]))


def test_three_pixel_bar_thins_to_its_middle_row_and_a_ring_keeps_its_hole():
    bar = np.zeros((9, 14), dtype=bool)
    bar[3:6, 2:12] = True
    expected = np.zeros_like(bar)
    expected[4, 3:11] = True  # the ends recede by one pixel
    np.testing.assert_array_equal(thin(bar), expected)
    ring = np.zeros((12, 12), dtype=bool)
    ring[2:10, 2:10] = True
    ring[5:7, 5:7] = False
    thinned = thin(ring)
    # Euler number preserved: one component, one hole
    assert ndimage.label(thinned, structure=np.ones((3, 3)))[1] == 1
    assert ndimage.label(~thinned)[1] == 2
    assert not (thinned & ~ring).any()


@pytest.mark.parametrize("seed", range(4))
def test_thin_equals_scikit_image_on_larger_maps(seed):
    # scikit-image's thin is an independent implementation of the same algorithm (whole-image
    # correlation per subiteration); binary output, so equality is exact
    skimage_morphology = pytest.importorskip("skimage.morphology")
    rng = np.random.default_rng(seed)
    blobs = ndimage.gaussian_filter(rng.random((120, 160)), 2 + seed) > 0.5
    lines = np.zeros_like(blobs)
    lines[rng.integers(0, 120, 30), :] = True
    lines[:, rng.integers(0, 160, 30)] = True
    for mask in (blobs, blobs ^ lines, rng.random((120, 160)) < 0.55):
        np.testing.assert_array_equal(thin(mask), skimage_morphology.thin(mask))


@pytest.mark.parametrize("seed", range(3))
def test_thin_levels_equals_thinning_each_map(seed):
    # nested maps thinned from one carried state equal each map thinned from scratch
    rng = np.random.default_rng(seed)
    smooth = ndimage.gaussian_filter(rng.random((50, 70)), 2)
    levels = (255 * (smooth - smooth.min()) / np.ptp(smooth)).astype(np.uint8)
    levels[rng.random(levels.shape) < 0.05] = 255  # isolated bright pixels
    starts = [0, *sorted(rng.choice(np.arange(1, 256), 12, replace=False).tolist()), 256]
    got = thin_levels(levels, starts)
    for start, pixels in zip(starts, got, strict=True):
        np.testing.assert_array_equal(pixels, np.flatnonzero(thin(levels >= start)))
