"""The generator's cheaper code paths against direct, independent solutions.

These paths only move data (index arithmetic, gathers) or cache a result, so their
integer outputs and copied values are compared exactly; the cached geometry, computed
in float32, is compared with a float64 solution within a stated bound.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from scenemtl.data.procedural import vec3
from scenemtl.data.procedural.camera import make_camera
from scenemtl.data.procedural.geometry import (
    BOX,
    CUT_FOLIAGE,
    CUT_LATTICE,
    CUT_NONE,
    CYLINDER,
    ELLIPSOID,
    ROUNDED_BOX,
    make,
    rot_y,
)
from scenemtl.data.procedural.raycast import PrimTable, _pairs
from scenemtl.data.procedural.render import _EvenPixels
from scenemtl.data.procedural.textures import TILE, cutout_open, noise, noise_tiles


def _pairs_by_loops(rects: np.ndarray, ks: np.ndarray, width: int) -> tuple[list, list]:
    prim, pix = [], []
    for k in ks.tolist():
        r0, r1, c0, c1 = rects[k].tolist()
        for r in range(r0, r1):
            for c in range(c0, c1):
                prim.append(k)
                pix.append(r * width + c)
    return prim, pix


@pytest.mark.parametrize("seed", range(6))
def test_pairs_lists_every_pixel_of_every_rectangle_in_order(seed: int) -> None:
    """(primitive, flat pixel) pairs, primitive by primitive in the order given and row
    by row inside each rectangle; empty rectangles (zero rows or columns) give none."""
    rng = np.random.default_rng(seed)
    width, k = 37, 30
    r0, c0 = rng.integers(0, 20, k), rng.integers(0, 30, k)
    rows, cols = rng.integers(0, 6, k), rng.integers(0, 8, k)
    rects = np.stack([r0, r0 + rows, c0, np.minimum(c0 + cols, width)], 1).astype(np.int64)
    ks = rng.permutation(k)[: rng.integers(1, k)]
    prim, pix = _pairs(rects, ks, width)
    want_prim, want_pix = _pairs_by_loops(rects, ks, width)
    assert prim.tolist() == want_prim
    assert pix.tolist() == want_pix


def test_pairs_of_only_empty_rectangles_is_empty() -> None:
    rects = np.array([[3, 3, 0, 5], [0, 4, 2, 2]], np.int64)
    prim, pix = _pairs(rects, np.array([0, 1]), 10)
    assert len(prim) == 0 and len(pix) == 0


@pytest.mark.parametrize(("h", "w"), [(6, 8), (7, 9), (1, 1)])
def test_even_pixels_are_the_scattered_image_taken_every_other_row_and_column(
    h: int, w: int
) -> None:
    """The half-resolution grid of per-hit values equals scattering them into the image
    (``fill`` elsewhere) and keeping the even rows and columns, for float rows and bools."""
    rng = np.random.default_rng(h * w)
    hit_idx = np.flatnonzero(rng.random(h * w) < 0.6)
    rgb = rng.random((len(hit_idx), 3)).astype(np.float32)
    flag = rng.random(len(hit_idx)) < 0.5
    even = _EvenPixels(hit_idx, h, w)
    got_rgb, got_flag = even.gather(rgb, -1.0), even.gather(flag, False)
    position = {p: i for i, p in enumerate(hit_idx.tolist())}
    assert got_rgb.shape == ((h + 1) // 2, (w + 1) // 2, 3)
    for i in range(0, h, 2):
        for j in range(0, w, 2):
            at = position.get(i * w + j)
            want_rgb = [-1.0, -1.0, -1.0] if at is None else rgb[at].tolist()
            assert got_rgb[i // 2, j // 2].tolist() == want_rgb
            assert bool(got_flag[i // 2, j // 2]) == (at is not None and bool(flag[at]))


def _box_distance(point: np.ndarray, center, half, rotation) -> float:
    """Distance from ``point`` to a solid box, in float64: clamp in the local frame."""
    q = (np.asarray(point, float) - center) @ rotation
    return float(np.linalg.norm(np.maximum(np.abs(q) - half, 0.0)))


def test_prim_table_bounds_follow_the_point_and_corners_are_computed_once() -> None:
    """``distance_bounds`` keeps the last point's answer but recomputes for a new point;
    ``corners`` is the same read-only array on every call. Float32 coordinates below
    ~40 m round to within 40 * 2**-24 per operation; a handful of operations stay far
    below the 1e-4 m allowed."""
    prims = [
        make(BOX, (1.0, 0.5, 8.0), (0.5, 0.5, 1.0), 0, 0, (0.5, 0.5, 0.5)),
        make(ROUNDED_BOX, (-3.0, 1.0, 15.0), (1.0, 1.0, 2.0), 0, 0, (0.5, 0.5, 0.5), rot_y(0.4)),
        make(BOX, (0.2, 2.0, 30.0), (2.0, 2.0, 0.3), 0, 0, (0.5, 0.5, 0.5), rot_y(-1.1)),
    ]
    table = PrimTable.of(prims)
    for point in (np.array([0.0, 1.5, 0.0]), np.array([0.0, 1.5, 0.0]), np.array([2.0, 1.2, 9.0])):
        want = [_box_distance(point, p.center, p.half, p.rotation) for p in prims]
        np.testing.assert_allclose(table.distance_bounds(point), want, atol=1e-4)
    corners = table.corners()
    assert table.corners() is corners and not corners.flags.writeable
    np.testing.assert_allclose(corners, np.stack([p.corners() for p in prims]), atol=1e-4)


@pytest.mark.parametrize("seed", range(3))
def test_rays_are_the_unit_directions_through_the_pixel_centres(seed: int) -> None:
    """Per pixel, in float64 one ray at a time: the camera-frame direction (u, v, 1)
    normalized and turned to the world; ``zfac`` its z component. The float32 outputs
    (values <= 1) are one float32 rounding, at most 2**-25, from float64 arithmetic
    whose own error is ~1e-16: 2e-7 leaves a factor 6."""
    cam = make_camera(np.random.default_rng(seed), (12, 20))
    dirs, zfac = cam.rays()
    for i in range(cam.height):
        for j in range(cam.width):
            local = np.array([(j + 0.5 - cam.cx) / cam.fx, (i + 0.5 - cam.cy) / cam.fy, 1.0])
            local /= math.sqrt(float(local @ local))
            np.testing.assert_allclose(dirs[i, j], cam.rotation @ local, rtol=0, atol=2e-7)
            assert abs(zfac[i, j] - local[2]) <= 2e-7


def test_row_reductions_of_three_components() -> None:
    """Against float64 sums and Python's max over each row: float32 sums of three
    terms round at most twice, within 2 * 2**-24 of the exact sum of their magnitudes;
    the index of the largest component is the first on ties, as ``argmax`` has it."""
    rng = np.random.default_rng(7)
    a = (rng.standard_normal((500, 3)) * rng.choice([1e-3, 1.0, 1e3], (500, 3))).astype(np.float32)
    a[:40, 1] = a[:40, 0]  # ties between the first two components
    a[40:80, 2] = a[40:80, 1] = a[40:80, 0]  # three-way ties
    exact = a.astype(np.float64)
    bound = 2 * 2.0**-24 * np.abs(exact).sum(axis=1)
    assert np.all(np.abs(vec3.sum3(a) - exact.sum(axis=1)) <= bound)
    lengths = np.sqrt((exact**2).sum(axis=1))
    np.testing.assert_allclose(vec3.norm3(a), lengths, rtol=4 * 2.0**-24)
    rows = exact.tolist()
    assert vec3.max3(a).tolist() == [max(r) for r in a.tolist()]
    assert vec3.argmax3(a).tolist() == [r.index(max(r)) for r in rows]


@pytest.mark.parametrize("kind", range(3))
def test_noise_is_the_texel_at_the_wrapped_floor_of_the_coordinates(kind: int) -> None:
    """Nearest-texel lookup with wrap-around, one point at a time with Python's floor and
    modulo (negative and large coordinates included): the tile's values, copied."""
    rng = np.random.default_rng(kind)
    u = (rng.standard_normal(300) * 900).astype(np.float32)
    v = (rng.standard_normal(300) * 900).astype(np.float32)
    u[:3], v[:3] = (-0.5, 255.99, 256.0), (0.0, -256.0, -1e-3)
    tile = noise_tiles()[kind]
    want = [
        tile[math.floor(b) % TILE, math.floor(a) % TILE]
        for a, b in zip(u.tolist(), v.tolist(), strict=True)
    ]
    assert noise(kind, u, v).tolist() == want
    assert (
        noise(kind, u.reshape(20, 15), v.reshape(20, 15)).tolist()
        == np.reshape(want, (20, 15)).tolist()
    )


def test_cutout_of_one_solid_is_the_cutout_of_its_rows_repeated() -> None:
    """One solid's sizes given once (a primitive cast alone) or repeated per point (the
    batch) select the same open points; with mixed kinds, every point as if alone."""
    rng = np.random.default_rng(3)
    n = 400
    p = (rng.uniform(-1, 1, (n, 3)) * [1.5, 1.2, 0.8]).astype(np.float32)
    half = np.array([1.5, 1.2, 0.8], np.float32)
    params = np.array([0.12, 0.3, 1.1, 0.0], np.float32)
    rows = (np.tile(half, (n, 1)), np.tile(params, (n, 1)), np.full(n, 17.0, np.float32))
    for kind in (CUT_NONE, CUT_LATTICE, CUT_FOLIAGE):
        one = cutout_open(kind, p, half, params, 17.0)
        assert one.tolist() == cutout_open(np.full(n, kind), p, *rows).tolist()
        assert (kind != CUT_NONE) == one.any() and not one.all()
    kinds = rng.choice([CUT_NONE, CUT_LATTICE, CUT_FOLIAGE], n)
    mixed = cutout_open(kinds, p, *rows)
    alone = [cutout_open(kinds[i : i + 1], p[i : i + 1], half, params, 17.0)[0] for i in range(n)]
    assert mixed.tolist() == alone


def test_table_sizes_are_the_primitives_float32_sizes() -> None:
    """Primitives cast one by one read their half sizes and ellipsoid radii from the
    table: the float32 rounding of ``half``, and its product with ``round_scale`` in
    float32, as the per-primitive :func:`raycast.interval` computes them."""
    prims = [
        make(BOX, (1.0, 0.5, 8.0), (0.51, 0.5, 1.3), 0, 0, (0.5, 0.5, 0.5)),
        make(ROUNDED_BOX, (0, 1, 5), (1.1, 0.7, 2.3), 0, 0, (0.5,) * 3, round_scale=1.27),
        make(
            ROUNDED_BOX, (0, 1, 5), (1.1, 0.7, 2.3), 0, 0, (0.5,) * 3, round_scale=(1.3, 9.0, 1.1)
        ),
        make(CYLINDER, (2, 1, 9), (0.1, 1.7, 0.1), 0, 0, (0.5,) * 3),
        make(ELLIPSOID, (2, 3, 9), (1.9, 1.3, 1.7), 0, 0, (0.5,) * 3),
    ]
    table = PrimTable.of(prims)
    for k, prim in enumerate(prims):
        half = prim.half.astype(np.float32)
        radii = half * np.asarray(prim.round_scale, dtype=np.float32)
        assert table.half[k].tolist() == half.tolist()
        assert table.radii[k].tolist() == radii.tolist()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_put_rows_writes_each_row_where_the_index_says(dtype: type) -> None:
    """``put_rows`` against a row-by-row assignment loop: the selected rows get the given
    values (float64 rows cast to the destination's dtype, as ``dst[idx] = rows`` casts
    them, broadcast rows repeated) and every other row is left alone."""
    rng = np.random.default_rng(11)
    dst = rng.standard_normal((50, 3)).astype(dtype)
    idx = rng.permutation(50)[:20]
    rows = rng.standard_normal((20, 3))  # float64
    want = dst.copy()
    for i, r in zip(idx.tolist(), rows.tolist(), strict=True):
        want[i] = np.asarray(r, dtype=dtype)
    vec3.put_rows(dst, idx, rows)
    assert dst.tolist() == want.tolist()
    vec3.put_rows(dst, idx[:5], np.array([1.0, 2.0, 3.0]))
    want[idx[:5]] = [1.0, 2.0, 3.0]
    assert dst.tolist() == want.tolist()
    with pytest.raises(ValueError):
        vec3.put_rows(np.zeros((3, 4), dtype).T, idx[:1], rows[:1])  # not C-contiguous


def test_draws_uniform_is_numpys_uniform_and_leaves_the_same_stream() -> None:
    """``Draws.uniform`` against ``Generator.uniform`` from the same seed, call by call:
    scalar bounds of every plain type (the fast path), arrays, sizes, equal and reversed
    bounds (NumPy's own path). Both compute ``low + (high - low) * u`` from the same 53-bit
    ``u``, so the values agree to the last bit here; the bound allows one rounding more
    (2**-52 * (|low| + |high - low|)) for a NumPy built to fuse the multiply-add. The
    generators' states must match exactly after every call: the same draws consumed."""
    from scenemtl.data.procedural.draws import Draws

    fast = Draws(np.random.PCG64(np.random.SeedSequence([5, 1, 9])))
    ref = np.random.default_rng(np.random.SeedSequence([5, 1, 9]))
    rng_cases = np.random.default_rng(0)
    calls: list[tuple] = []
    for _ in range(300):
        low = float(rng_cases.normal() * 10.0 ** int(rng_cases.integers(-3, 4)))
        span = float(rng_cases.random() * 10.0 ** int(rng_cases.integers(-3, 4)))
        calls.append((low, low + span))
    calls += [(0, 3), (np.float64(2.5), 7), (1.5, 1.5), ((0.0, 1.0), 2.0), (0.0, 1.0, 3)]
    for args in calls:
        got, want = fast.uniform(*args), ref.uniform(*args)
        assert type(got) is type(want)
        low, high = np.broadcast_arrays(*map(np.asarray, args[:2]))
        bound = 2.0**-52 * (np.abs(low) + np.abs(high - low))
        assert np.all(np.abs(np.asarray(got) - want) <= bound)
        assert fast.bit_generator.state == ref.bit_generator.state
    with pytest.raises(ValueError):
        fast.uniform(2.0, 1.0)  # reversed bounds: NumPy's error
