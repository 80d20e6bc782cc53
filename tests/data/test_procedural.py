"""The procedural street-scene generator: geometry, determinism, format, cache."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from scenemtl.codecs.classes import CITYSCAPES_NUM_CLASSES, train_id
from scenemtl.data import format as fmt
from scenemtl.data.format import IGNORE_INDEX
from scenemtl.data.procedural import (
    GENERATOR_VERSION,
    SynthParams,
    bench,
    default_root,
    raycast,
    render_sample,
    synthesize,
)
from scenemtl.data.procedural import generate as gen
from scenemtl.data.procedural.camera import Camera, make_camera
from scenemtl.data.procedural.geometry import (
    BOX,
    CYLINDER,
    ELLIPSOID,
    ROUNDED_BOX,
    make,
    rot_y,
)
from scenemtl.data.procedural.render import render
from scenemtl.data.procedural.scene import make_scene
from scenemtl.errors import UserError

TINY = SynthParams(train=5, val=2, test=2, size=(24, 48), seed=3)
SKY = train_id("sky")
ROAD = train_id("road")


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


# --------------------------------------------------------------------------------------
# parameters


@pytest.mark.parametrize(
    "kwargs",
    [
        {"train": -1},
        {"val": 1.5},
        {"test": True},
        {"train": 0, "val": 0, "test": 0},
        {"size": (0, 64)},
        {"size": (32,)},
        {"size": "128x256"},
        {"seed": -3},
        {"depth_encoding": "meters8"},
        {"jpeg_quality": 0},
        {"jpeg_quality": 101},
        {"test_gt": "yes"},
    ],
)
def test_params_reject_bad_values(kwargs: dict) -> None:
    with pytest.raises(UserError):
        SynthParams(**kwargs)


def test_params_roundtrip_and_key() -> None:
    p = SynthParams(train=3, size=[32, 64])  # a list (from JSON) becomes a tuple
    assert p.size == (32, 64)
    q = SynthParams(train=np.int64(3), size=(np.int32(32), np.int64(64)), seed=np.uint8(0))
    assert q == p and type(q.train) is int and json.dumps(q.to_json())
    assert SynthParams.from_json(p.to_json()) == p
    assert p.key() == SynthParams(train=3, size=(32, 64)).key()
    assert p.key() != SynthParams(train=3, size=(32, 64), seed=1).key()
    with pytest.raises(UserError, match="unknown"):
        SynthParams.from_json({**p.to_json(), "colour": 1})


def test_default_root_follows_env_and_params(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("SCENEMTL_DATA", str(tmp_path))
    a = default_root(SynthParams())
    assert a.parent == tmp_path
    assert a == default_root(SynthParams())
    assert a != default_root(SynthParams(size=(256, 512)))
    monkeypatch.delenv("SCENEMTL_DATA")
    assert default_root(SynthParams()).parent == Path.home() / ".cache" / "scenemtl"


# --------------------------------------------------------------------------------------
# ray casting


def _camera(size: tuple[int, int] = (32, 64), height: float = 1.5) -> Camera:
    rot = np.array([[1.0, 0, 0], [0, -1.0, 0], [0, 0, 1.0]])  # level, looking along +z
    h, w = size
    return Camera(h, w, w * 1.1, w * 1.1, w / 2, h / 2, np.array([0.0, height, 0.0]), rot)


@pytest.mark.parametrize(
    ("shape", "half", "expected"),
    [
        (BOX, (1.0, 1.0, 1.0), 9.0),
        (CYLINDER, (1.0, 1.0, 1.0), 9.0),
        (ELLIPSOID, (1.0, 1.0, 2.0), 8.0),
        (ROUNDED_BOX, (1.0, 1.0, 1.0), 9.0),
    ],
)
def test_interval_on_axis(shape: int, half: tuple, expected: float) -> None:
    prim = make(shape, (0.0, 0.0, 10.0), half, 0, 0, (0.5, 0.5, 0.5))
    o = tuple(np.zeros(3) - prim.center)
    tin, tout = raycast.interval(prim, o, (0.0, 0.0, 1.0))
    assert float(tin) == pytest.approx(expected)
    assert float(tout) == pytest.approx(20.0 - expected)


def test_rounded_box_cuts_corners_and_rotation_matters() -> None:
    d = np.array([0.5, 0.5, 9.0])
    d /= np.linalg.norm(d)  # aims off-centre at the front face of a unit box centred at z=10
    kw = {"label": 0, "material": 0, "color": (0.5, 0.5, 0.5)}
    box = make(BOX, (0, 0, 10), (1, 1, 1), **kw)
    rounded = make(ROUNDED_BOX, (0, 0, 10), (1, 1, 1), round_scale=1.2, **kw)
    o = (0.0, 0.0, -10.0)
    t_box, _ = raycast.interval(box, o, tuple(d))
    t_round, out_round = raycast.interval(rounded, o, tuple(d))
    assert float(t_box) == pytest.approx(9.0 / d[2], rel=1e-5)
    assert float(t_round) > float(t_box) + 0.01
    assert float(t_round) < float(out_round)
    # Turned by 45 degrees, the box presents an edge: the on-axis hit comes earlier.
    turned = make(BOX, (0, 0, 10), (1, 1, 1), rotation=rot_y(math.pi / 4), **kw)
    o_local = tuple(np.array(o) @ turned.rotation)
    d_local = tuple(np.array([0.0, 0.0, 1.0]) @ turned.rotation)
    tin, _ = raycast.interval(turned, o_local, d_local)
    assert float(tin) == pytest.approx(10.0 - math.sqrt(2), rel=1e-5)


def test_local_normals_point_outward() -> None:
    kw = {"label": 0, "material": 0, "color": (0.5, 0.5, 0.5)}
    box = make(BOX, (0, 0, 0), (1, 2, 3), **kw)
    pts = np.array([[1.0, 0.5, 0.5], [0.2, -2.0, 1.0], [0.0, 0.0, 3.0]])
    np.testing.assert_allclose(raycast.local_normal(box, pts), [[1, 0, 0], [0, -1, 0], [0, 0, 1]])
    cyl = make(CYLINDER, (0, 0, 0), (1, 1, 1), **kw)
    pts = np.array([[0.6, 0.0, 0.8], [0.1, 1.0, 0.1]])
    np.testing.assert_allclose(
        raycast.local_normal(cyl, pts), [[0.6, 0, 0.8], [0, 1, 0]], atol=1e-6
    )


def _scene(seed: int = 11, size: tuple[int, int] = (48, 96)):
    return make_scene(np.random.default_rng(seed), size)


# Error bound of the float32 ray casting. Both casting paths (one primitive at a time,
# or many (primitive, pixel) pairs at once) evaluate the same formulas in float32 on the
# same inputs, in a different order: the one-by-one path subtracts the float64 centre
# and then rounds, the batch rounds the centre first and rotates with einsum. Neither
# is "the" answer, and which last bits come out depends on numpy's SIMD kernels (CPU,
# numpy version). So the tests compare each path with the exact (float64) value of the
# same hit and allow, per pixel, the forward error bound E below; two paths then agree
# within 2E. With u = 2^-24 (float32 unit roundoff, 6e-8) and the standard model
# fl(x op y) = (x op y)(1 + d), |d| <= u:
#
# * Inputs. The local ray origin o = R^T (camera - centre) is rounded from numbers of
#   size S = |camera| + |centre|, so each component is off by at most ~8 u S (rounding
#   of both points, the subtraction, a 3-term dot product with a float32 rotation); the
#   unit direction likewise by ~8 u.
# * Planes (box faces, cylinder caps), t = (+-h - o_a) / d_a: an error in o_a or d_a
#   moves t by (|do_a| + |t| |dd_a|) / |d_a|, where |d_a| = cos(incidence angle):
#       E_plane = K u (S + |t|) / cos(theta)          (grazing rays: cos -> 0).
# * Quadrics (ellipsoids, cylinder walls, the ellipsoid of a rounded box), in
#   coordinates scaled by the radii: a = |D|^2, b = O.D, c = |O|^2 - 1,
#   t = (-b -+ sqrt(b^2 - a c)) / a. The discriminant is a difference of two numbers of
#   size a |O|^2, so whatever its value its absolute error is up to
#   delta = K u a (M^2 + 1), M = max(|O|, S / r_min); the square root turns that into
#   delta / (2 a sqrt(disc)), and never more than sqrt(delta) / a (a ray grazing the
#   silhouette, disc ~ 0):
#       E_quad = K u (S + |t|) + min(delta / (2 a sqrt(disc)), sqrt(delta) / a).
#   For a thin pole far away the cancellation term dominates: a 5 cm radius at 50 m
#   gives |O| = 1000 and u |O|^2 r / 2 = 1.5 mm (3e-5 of the distance) per unit of K
#   head-on, more off-centre; a fixed rtol=1e-4 once failed at 1.08e-4 on such a pole.
# * A solid is the intersection of its pieces and is entered at the largest entering
#   parameter; any piece within the bound of that maximum may win after rounding, so
#   E is the largest bound among them.
# * K = 16 bounds the first-order constants of the longest chains above (a, b, c of
#   up to three rounded products and two sums after scaling, the products b*b and a*c,
#   their difference, the square root, the division). Observed errors stay below K/2
#   (numpy 1.26 and 2.4, with and without AVX2 kernels).
#
# The same rounding decides which surface a pixel shows where two surfaces are within
# the bound of each other (a tie: adjacent boxes share a face; the paths break ties in
# different orders) or where a ray grazes a solid (its interval is shorter than the
# bound). Primitive ids may differ exactly there and nowhere else.
U32 = float(np.finfo(np.float32).eps) / 2
K_BOUND = 16.0


def _pieces(prim, o: np.ndarray, d: np.ndarray, size: float) -> list[tuple]:
    """(t_enter, t_leave, E_enter, E_leave) in float64 of each convex piece of ``prim``
    for the local rays ``o + t d`` (``o`` [3], ``d`` [N, 3])."""
    half = prim.half.astype(np.float32).astype(np.float64)  # what both paths use
    ku = K_BOUND * U32
    out = []
    slab_axes = {BOX: (0, 1, 2), ROUNDED_BOX: (0, 1, 2), CYLINDER: (1,)}.get(prim.shape, ())
    with np.errstate(divide="ignore", invalid="ignore"):
        for ax in slab_axes:
            t1 = (-half[ax] - o[ax]) / d[:, ax]
            t2 = (half[ax] - o[ax]) / d[:, ax]
            cos = np.abs(d[:, ax])
            enter, leave = np.minimum(t1, t2), np.maximum(t1, t2)
            e_in, e_out = (ku * (size + np.abs(t)) / cos for t in (enter, leave))
            out.append((enter, leave, e_in, e_out))
        if prim.shape in (ELLIPSOID, CYLINDER, ROUNDED_BOX):
            axes = [0, 2] if prim.shape == CYLINDER else [0, 1, 2]
            radii = half.copy()
            if prim.shape == ROUNDED_BOX:
                radii = radii * np.asarray(prim.round_scale, np.float32)
            r = radii[axes]
            big_o, big_d = o[axes] / r, d[:, axes] / r
            a = (big_d**2).sum(1)
            b = big_d @ big_o
            c = (big_o**2).sum() - 1.0
            disc = b * b - a * c
            m = max(np.linalg.norm(big_o), size / r.min())
            delta = ku * a * (m * m + 1.0)
            sq = np.sqrt(np.maximum(disc, 0.0))
            cancel = np.minimum(delta / (2 * a * sq), np.sqrt(delta) / a)
            miss = disc < -delta  # a miss whatever the rounding
            enter = np.where(miss, np.inf, (-b - sq) / a)
            leave = np.where(miss, -np.inf, (-b + sq) / a)
            e_in = np.where(miss, 0.0, ku * (size + np.abs(enter)) + cancel)
            e_out = np.where(miss, 0.0, ku * (size + np.abs(leave)) + cancel)
            out.append((enter, leave, e_in, e_out))
    return out


def _exact_hits(camera: Camera, prims, ids: np.ndarray, dirs: np.ndarray):
    """The float64 ray parameter at which each pixel's ray enters the surface ``ids``
    names (a primitive or the ground), the bound E (see above) on the error of float32
    casting, and whether the hit is marginal (a grazing ray: float32 may see a hit or
    not). NaN where ``ids`` is the sky."""
    t64 = np.full(ids.shape, np.nan)
    bound = np.full(ids.shape, np.nan)
    marginal = np.zeros(ids.shape, bool)
    pos = np.asarray(camera.position, np.float64)
    ground = ids == raycast.GROUND
    dy = dirs[..., 1][ground].astype(np.float64)
    t64[ground] = -pos[1] / dy
    bound[ground] = K_BOUND * U32 * (abs(pos[1]) + t64[ground]) / np.abs(dy)
    for k in np.unique(ids[ids >= 0]).tolist():
        sel = ids == k
        prim = prims[k]
        rot = np.asarray(prim.rotation, np.float64)
        o = (pos - prim.center) @ rot
        d = dirs[sel].astype(np.float64) @ rot
        size = float(np.linalg.norm(pos) + np.linalg.norm(prim.center))
        pieces = _pieces(prim, o, d, size)
        enter, leave, e_in, e_out = (np.stack(x) for x in zip(*pieces, strict=True))
        cols = np.arange(enter.shape[1])
        tin, tout = enter.max(0), leave.min(0)
        # pieces that may come out on top once both they and the exact winner are rounded
        near_in = enter + e_in >= tin - e_in[enter.argmax(0), cols]
        near_out = leave - e_out <= tout + e_out[leave.argmin(0), cols]
        ein = np.where(near_in, e_in, 0.0).max(0)
        eout = np.where(near_out, e_out, 0.0).max(0)
        t64[sel], bound[sel] = tin, ein
        marginal[sel] = tout - tin <= ein + eout
    return t64, bound, marginal


def _assert_same_hits(camera: Camera, prims, dirs: np.ndarray, a, b) -> None:
    """Two castings of one scene, ``a`` and ``b`` = (t, ids), agree up to float32
    rounding: every hit within E of the exact value, and ids equal except at ties and
    grazing hits."""
    (t_a, ids_a), (t_b, ids_b) = a, b
    assert (ids_a >= 0).sum() > 100  # the scene does show objects
    ex_a, e_a, marg_a = _exact_hits(camera, prims, ids_a, dirs)
    ex_b, e_b, marg_b = _exact_hits(camera, prims, ids_b, dirs)
    for t, ex, e, ids in ((t_a, ex_a, e_a, ids_a), (t_b, ex_b, e_b, ids_b)):
        hit = ids != raycast.SKY
        err = np.abs(t[hit] - ex[hit])
        worst = np.argmax(err / e[hit])
        assert (err <= e[hit]).all(), (
            f"float32 hit off by {err[worst]:.3g} at t={ex[hit][worst]:.6g}, "
            f"beyond the rounding bound {e[hit][worst]:.3g}"
        )
        # the bound is no blanket: typically a few 1e-6 of the distance
        assert np.median(e[hit] / ex[hit]) < 1e-4
    differ = ids_a != ids_b
    tie = np.abs(ex_a - ex_b) <= e_a + e_b
    unexplained = differ & ~tie & ~marg_a & ~marg_b
    assert not unexplained.any(), f"{unexplained.sum()} pixel(s) show different surfaces"


def test_batched_and_per_primitive_casting_agree(monkeypatch) -> None:
    scene = _scene()
    dirs, _ = scene.camera.rays()
    planes = np.ascontiguousarray(dirs.transpose(2, 0, 1))
    inv = raycast.safe_inverse(planes)
    monkeypatch.setattr(raycast, "BATCH_AREA", -1)  # every primitive one by one
    loop = raycast.cast_primary(scene.camera, scene.prims, planes, inv)
    monkeypatch.setattr(raycast, "BATCH_AREA", 10**9)  # every primitive in the batch
    batch = raycast.cast_primary(scene.camera, scene.prims, planes, inv)
    _assert_same_hits(scene.camera, scene.prims, dirs, loop, batch)


def test_screen_rectangles_are_conservative(monkeypatch) -> None:
    """Culling by projected rectangles must never lose a hit."""
    scene = _scene(seed=5)
    dirs, _ = scene.camera.rays()
    planes = np.ascontiguousarray(dirs.transpose(2, 0, 1))
    inv = raycast.safe_inverse(planes)
    culled = raycast.cast_primary(scene.camera, scene.prims, planes, inv)
    cam = scene.camera
    monkeypatch.setattr(
        type(cam),
        "pixel_rects",
        lambda self, pts: np.tile([0, self.height, 0, self.width], (len(pts), 1)),
    )
    monkeypatch.setattr(raycast, "BATCH_AREA", -1)
    full = raycast.cast_primary(cam, scene.prims, planes, inv)
    _assert_same_hits(cam, scene.prims, dirs, culled, full)


def test_ground_depth_matches_the_plane() -> None:
    """Road pixels are ground-plane hits: their z-depth follows from the camera alone."""
    scene = _scene(seed=2)
    _, semseg, depth = render(scene, np.random.default_rng(0))
    cam = scene.camera
    dirs, zfac = cam.rays()
    road = (semseg == ROAD) & (dirs[..., 1] < -0.01)
    assert road.sum() > 200
    expected = -cam.position[1] / dirs[..., 1] * zfac
    # float32 rounds three times here (camera height, the division, the product with
    # zfac), each by at most u: well conditioned, whatever the machine.
    np.testing.assert_allclose(depth[road], expected[road], rtol=4 * U32)
    # Sky is exactly where nothing is hit.
    assert np.array_equal(semseg == SKY, ~np.isfinite(depth))


def test_shadow_falls_under_a_floating_box() -> None:
    cam = _camera(size=(48, 96), height=3.0)
    box = make(BOX, (0.0, 2.0, 20.0), (1.5, 0.2, 1.5), 2, 0, (0.5, 0.5, 0.5))
    dirs, _ = cam.rays()
    planes = np.ascontiguousarray(dirs.transpose(2, 0, 1))
    t, ids = raycast.cast_primary(cam, [box], planes, raycast.safe_inverse(planes))
    points = cam.position.astype(np.float32) + np.where(np.isfinite(t), t, 0)[..., None] * dirs
    normals = np.zeros_like(points)
    normals[..., 1] = 1.0
    lit = ids == raycast.GROUND
    sun = np.array([0.0, 1.0, 0.0])  # straight above (a test-only sun)
    shadow = raycast.cast_shadows(cam, [box], ids, points, normals, lit, sun)
    under = lit & (np.abs(points[..., 0]) < 1.3) & (np.abs(points[..., 2] - 20.0) < 1.3)
    away = lit & ((np.abs(points[..., 0]) > 1.8) | (np.abs(points[..., 2] - 20.0) > 1.8))
    assert under.sum() > 5 and away.sum() > 5
    assert shadow[under].all()
    assert not shadow[away].any()


def test_camera_jitter_stays_plausible() -> None:
    for seed in range(20):
        cam = make_camera(np.random.default_rng(seed), (128, 256))
        assert 1.2 <= cam.position[1] <= 1.7
        forward = cam.rotation[:, 2]
        assert forward[2] > 0.99  # looks along the street
        hfov = 2 * math.degrees(math.atan(cam.width / 2 / cam.fx))
        assert 44 < hfov < 53


# --------------------------------------------------------------------------------------
# samples


def test_render_sample_contract() -> None:
    params = SynthParams(size=(40, 80), seed=1)
    rgb, semseg, depth = render_sample(params, "train", 4)
    assert rgb.shape == (40, 80, 3) and rgb.dtype == np.uint8
    assert semseg.shape == (40, 80) and semseg.dtype == np.uint8
    assert depth.shape == (40, 80) and depth.dtype == np.float32
    assert semseg.max() < CITYSCAPES_NUM_CLASSES
    lo, hi = params.depth_range_m
    valid = depth > 0
    assert (lo, hi) == (4.0, 300.0)
    assert depth[valid].min() >= lo and depth[valid].max() <= hi
    assert np.array_equal(~valid, semseg == SKY)
    assert rgb.std() > 10  # not a flat picture
    again = render_sample(params, "train", 4)
    for a, b in zip((rgb, semseg, depth), again, strict=True):
        assert np.array_equal(a, b)
    other = render_sample(params, "val", 4)
    assert not np.array_equal(other[1], semseg)


def test_same_scene_at_every_size() -> None:
    """The layout does not depend on the resolution: a bigger image shows the same
    scene (so `--size 256x512` is the same dataset, sharper)."""
    small = render_sample(SynthParams(size=(32, 64)), "train", 0)[1]
    big = render_sample(SynthParams(size=(64, 128)), "train", 0)[1]
    agree = (big[::2, ::2] == small).mean()
    assert agree > 0.8


def test_the_large_size_renders() -> None:
    rgb, semseg, depth = render_sample(SynthParams(size=(256, 512)), "val", 1)
    assert rgb.shape == (256, 512, 3) and semseg.shape == depth.shape == (256, 512)
    assert np.array_equal(depth == 0, semseg == SKY)


def test_every_class_appears_in_a_modest_sample() -> None:
    params = SynthParams(size=(48, 96), seed=0)
    seen = np.zeros(CITYSCAPES_NUM_CLASSES, bool)
    for i in range(60):
        seen |= np.bincount(render_sample(params, "train", i)[1].ravel(), minlength=19)[:19] > 0
        if seen.all():
            break
    missing = [c for c in range(CITYSCAPES_NUM_CLASSES) if not seen[c]]
    assert not missing, f"classes never rendered: {missing}"


# --------------------------------------------------------------------------------------
# datasets on disk


def test_synthesize_writes_readable_format(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    info = synthesize(root, TINY, workers=1, progress=False)
    assert fmt.read_info(root).to_json() == info.to_json()
    assert info.image_size == TINY.size
    assert info.splits == {s: {"size": n, "gt": True} for s, n in TINY.splits.items()}
    assert info.source["params"] == TINY.to_json()
    assert info.source["generator_version"] == GENERATOR_VERSION
    assert sum(info.source["class_pixel_frequency"]) == pytest.approx(1.0)
    for split, n in TINY.splits.items():
        assert len(list((root / split / "rgb").iterdir())) == n
        for i in range(n):
            rgb = fmt.read_rgb(fmt.find_rgb(root, split, i))
            sem = fmt.read_semseg(fmt.label_path(root, split, "semseg", i))
            dep = fmt.read_depth(fmt.label_path(root, split, "depth", i))
            ref_rgb, ref_sem, ref_dep = render_sample(TINY, split, i)
            assert np.array_equal(sem, ref_sem)
            assert np.abs(rgb.astype(int) - ref_rgb).mean() < 12  # JPEG
            assert np.array_equal(dep > 0, ref_dep > 0)
            valid = ref_dep > 0
            # The disparity code is linear in 1/depth with 254 steps over [1/300, 1/4].
            step = (1 / 4 - 1 / 300) / 254
            assert np.all(np.abs(1 / dep[valid] - 1 / ref_dep[valid]) <= step / 2 + 1e-6)
            assert not np.isin(sem, [IGNORE_INDEX]).any()


@pytest.mark.slow
def test_output_is_identical_whatever_the_worker_count(tmp_path: Path) -> None:
    a = synthesize(tmp_path / "one", TINY, workers=1, progress=False)
    b = synthesize(tmp_path / "two", TINY, workers=2, progress=False)
    assert a.to_json() == b.to_json()
    fa, fb = _files(tmp_path / "one"), _files(tmp_path / "two")
    assert fa.keys() == fb.keys() and len(fa) == 3 * 9 + 1
    assert all(fa[k] == fb[k] for k in fa)


def test_second_call_is_a_cache_hit(tmp_path: Path, monkeypatch) -> None:
    root = tmp_path / "ds"
    first = synthesize(root, TINY, workers=1, progress=False)
    stamps = {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}

    def fail(*args, **kwargs):
        raise AssertionError("rendered although cached")

    monkeypatch.setattr(gen, "_render_chunk", fail)
    again = synthesize(root, TINY, workers=1, progress=False)
    assert again.to_json() == first.to_json()
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()} == stamps


def test_other_params_regenerate_in_place(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    synthesize(root, TINY, workers=1, progress=False)
    smaller = SynthParams(train=2, val=1, test=0, size=(24, 48), seed=3)
    info = synthesize(root, smaller, workers=1, progress=False)
    assert info.source["params"] == smaller.to_json()
    assert len(list((root / "train" / "rgb").iterdir())) == 2  # stale images are gone
    assert not (root / "test").exists()


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2])
def test_interrupted_run_is_never_complete(tmp_path: Path, monkeypatch, workers: int) -> None:
    """A failing image (here: every val image) aborts the run, in-process or in a pool
    (forked workers inherit the patch), and leaves nothing behind: the images went to
    a private folder beside the root, which is removed."""
    root = tmp_path / "ds"
    real = gen.sample_layers  # what the writer renders each image with

    def flaky(params, split, index, *args):
        if split == "val":
            raise RuntimeError("killed")
        return real(params, split, index, *args)

    monkeypatch.setattr(gen, "sample_layers", flaky)
    with pytest.raises(RuntimeError, match="killed"):
        synthesize(root, TINY, workers=workers, progress=False)
    assert not root.exists()
    assert [p.name for p in tmp_path.iterdir()] == [".ds.lock"]
    monkeypatch.setattr(gen, "sample_layers", real)
    info = synthesize(root, TINY, workers=1, progress=False)  # resumes from scratch
    assert fmt.read_info(root).splits == info.splits


def test_refuses_to_overwrite_foreign_data(tmp_path: Path) -> None:
    stray = tmp_path / "stray"
    stray.mkdir()
    (stray / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match=r"files this generator did not write \(e.g. notes.txt\)"):
        synthesize(stray, TINY, workers=1, progress=False)
    other = tmp_path / "other"
    fmt.write_info(
        other, fmt.DatasetInfo(name="real", image_size=(24, 48), splits={"train": {"size": 0}})
    )
    with pytest.raises(UserError, match="did not make"):
        synthesize(other, TINY, workers=1, progress=False)
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(UserError, match="not a directory"):
        synthesize(a_file, TINY, workers=1, progress=False)
    with pytest.raises(UserError, match="workers"):
        synthesize(tmp_path / "w", TINY, workers=0, progress=False)


def test_meters16_and_test_split_without_gt(tmp_path: Path) -> None:
    params = SynthParams(
        train=2, val=0, test=2, size=(24, 48), depth_encoding="meters16", test_gt=False
    )
    root = tmp_path / "ds"
    info = synthesize(root, params, workers=1, progress=False)
    assert info.depth_encoding == "meters16"
    assert info.depth_range_m[1] < 256
    assert info.splits["test"] == {"size": 2, "gt": False}
    assert not (root / "test" / "depth").exists() and not (root / "test" / "semseg").exists()
    dep = fmt.read_depth(fmt.label_path(root, "train", "depth", 0))
    _, _, ref = render_sample(params, "train", 0)
    np.testing.assert_allclose(dep, ref, atol=1 / 512 + 1e-6)
    assert ref.max() <= info.depth_range_m[1]


def test_bench_reports_a_rate(capsys) -> None:
    assert bench(size=(16, 32), n=2, workers=1) > 0
    from scenemtl.data.procedural import bench as bench_module  # may now be the module

    assert callable(bench_module)
    from scenemtl.data.procedural.bench import main

    assert main(["--size", "16x32", "-n", "2", "--workers", "1"]) == 0
    assert "images/s at 16x32" in capsys.readouterr().out


@pytest.mark.parametrize(
    "p", [[0.62, 0.12, 0.14, 0.12], [0.85, 0.025, 0.04, 0.06, 0.025], [0.3, 0.45, 0.25], [1.0]]
)
def test_weighted_draws_are_generator_choice(p: list[float]) -> None:
    """Weighted.draw and uniform give what rng.choice gives and leave the generator in
    the same state, so the layout drawn with them is the one choice drew."""
    from scenemtl.data.procedural import draws

    options = [10 * i + 0.5 for i in range(len(p))]
    ref, fast = np.random.default_rng(11), np.random.default_rng(11)
    weighted = draws.Weighted(options, p)
    for _ in range(2000):
        assert weighted.draw(fast) == ref.choice(options, p=p)
        assert draws.uniform(fast, options) == ref.choice(options)
    assert fast.random() == ref.random()  # same position in the stream
    with pytest.raises(ValueError):
        draws.Weighted([*options, 1.0], p)


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ({"cpu.max": "200000 100000\n"}, 2),
        ({"cpu.max": "150000 100000\n"}, 2),  # 1.5 CPUs: two workers, each part-time
        ({"cpu.max": "max 100000\n"}, None),
        ({"cpu/cpu.cfs_quota_us": "100000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 1),
        ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),
        ({}, None),
        ({"cpu.max": "garbage\n"}, None),
    ],
)
def test_workers_respect_a_cpu_quota(tmp_path: Path, monkeypatch, files, expected) -> None:
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    monkeypatch.setattr(gen.os, "sched_getaffinity", lambda pid: set(range(64)), raising=False)
    assert gen._available_cores(tmp_path) == (64 if expected is None else expected)


def test_stage_laps_add_up(monkeypatch) -> None:
    """Each lap adds the time since the previous one to its stage; the table's total is
    their sum (a fake clock makes every figure exact)."""
    from scenemtl.data.procedural import profile

    clock = iter([10.0, 10.5, 12.0, 12.25])
    monkeypatch.setattr(profile.time, "process_time", lambda: next(clock))
    times = profile.StageTimes()
    lap = times.laps()  # 10.0
    lap("layout")  # +0.5
    lap("raycast")  # +1.5
    lap("layout")  # +0.25
    times.images = 2
    assert times.seconds["layout"] == 0.75 and times.seconds["raycast"] == 1.5
    assert "| layout | 375.0 | 33% |" in times.table()
    assert "| total | 1125.0 | 100% |" in times.table()
    other = profile.StageTimes()
    other.seconds["write"], other.images = 1.0, 3
    times.add(other)
    assert times.seconds["write"] == 1.0 and times.images == 5


@pytest.mark.parametrize("workers", [1, 2])
def test_bench_times_every_stage(workers: int) -> None:
    """The workers' stage times reach the caller, for every image and every stage."""
    from scenemtl.data.procedural.profile import STAGES, StageTimes

    times = StageTimes()
    bench(size=(16, 32), n=3, workers=workers, times=times)
    assert times.images == 3
    assert set(times.seconds) == set(STAGES)
    assert all(times.seconds[s] > 0 for s in STAGES)


def test_profile_needs_bench(capsys) -> None:
    from scenemtl.cli import main

    with pytest.raises(SystemExit) as e:
        main(["data", "synth", "--profile"])
    assert e.value.code == 1
    assert "--profile goes with --bench" in capsys.readouterr().err


def test_png_level_changes_bytes_not_pixels() -> None:
    """The zlib level of the label PNGs is a size/time trade: the decoded labels are the
    ones the default level gives (integer codes, compared exactly)."""
    import io

    from PIL import Image

    layers = gen.sample_layers(TINY, "train", 0)
    args = (layers["rgb"], layers["semseg"], layers["depth"])
    fast = fmt.encode_sample(*args, png_compress_level=1, normals=layers["normals"])
    default = fmt.encode_sample(*args, normals=layers["normals"])
    assert fast["rgb"] == default["rgb"]  # the JPEG does not depend on it
    for name in ("semseg", "depth", "normals"):
        a = np.asarray(Image.open(io.BytesIO(fast[name])))
        b = np.asarray(Image.open(io.BytesIO(default[name])))
        assert a.dtype == b.dtype and np.array_equal(a, b), name
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(fast["semseg"]))), layers["semseg"])


def test_normals_skipped_leave_the_other_layers_alone() -> None:
    """Without normals the same computation runs up to the last step, which is skipped."""
    full = gen.sample_layers(TINY, "val", 1)
    lean = gen.sample_layers(TINY, "val", 1, normals=False)
    assert "normals" not in lean and set(full) == {"rgb", "semseg", "depth", "normals"}
    for name in ("rgb", "semseg", "depth"):
        # one float path run twice, not two paths: it must repeat bit for bit
        assert np.array_equal(lean[name], full[name]), name


# --------------------------------------------------------------------------------------
# calibration and montage tools


def test_calibration_metrics() -> None:
    from scenemtl.data.procedural.calibrate import miou, si_log_rmse

    gt = np.array([0, 0, 1, 1, 2, 255])
    assert miou(gt.clip(0, 2), gt) == pytest.approx(100.0)
    # Class 1 predicted as 0 once: IoU(0) = 2/3, IoU(1) = 1/2, IoU(2) = 1.
    assert miou(np.array([0, 0, 0, 1, 2, 0]), gt) == pytest.approx(100 * (2 / 3 + 1 / 2 + 1) / 3)
    depth = np.random.default_rng(0).uniform(4, 300, (2, 8, 8)).astype(np.float32)
    depth[:, 0] = 0.0  # invalid rows are ignored
    assert si_log_rmse(np.where(depth > 0, depth * 3.0, 1.0), depth) == pytest.approx(0.0, abs=1e-3)
    assert si_log_rmse(np.full_like(depth, 20.0), depth) > 50


def test_calibration_and_montage_run(tmp_path: Path) -> None:
    from scenemtl.data.procedural.calibrate import measure
    from scenemtl.data.procedural.montage import depth_colours, montage

    params = SynthParams(train=6, val=3, test=0, size=(24, 48))
    synthesize(tmp_path / "ds", params, workers=1, progress=False)
    res = measure(tmp_path / "ds")
    assert 0 < res["semseg_colour_only_miou"] < 100
    assert res["depth_row_prior_silog"] > 0
    assert res["val_images"] == 3
    dep = np.array([[0.0, 4.0], [300.0, 20.0]], np.float32)
    col = depth_colours(dep, 4.0, 300.0)
    assert (col[0, 0] == 0).all() and col[[0, 1, 1], [1, 0, 1]].max(axis=1).min() > 0
    grid = montage(params, "val", [0, 1, 2], columns=2, gap=2)
    assert grid.shape == (2 * 24 + 2, 2 * 3 * 48 + 2, 3)


# --------------------------------------------------------------------------------------
# surface normals


def test_ground_normals_are_world_up_in_the_camera_frame() -> None:
    """Road pixels hit the plane y = 0, whose normal is world up: in the camera frame
    that is ``(0, 1, 0) @ rotation`` (about (0, -1, 0): up is -y in a y-down frame)."""
    from scenemtl.data.procedural.render import render_layers

    scene = _scene(seed=2)
    layers = render_layers(scene, np.random.default_rng(0))
    normals, semseg, depth = layers["normals"], layers["semseg"], layers["depth"]
    assert normals.shape == (3, *semseg.shape) and normals.dtype == np.float32
    up = np.array([0.0, 1.0, 0.0]) @ scene.camera.rotation
    assert up[1] < -0.99
    road = (semseg == ROAD) & (normals[1] < -0.9)  # markings on the road are flat too
    assert road.sum() > 200
    # float32 normals rotated in float64: a few ulp off the exact unit vector
    np.testing.assert_allclose(normals[:, road].T, np.broadcast_to(up, (road.sum(), 3)), atol=1e-6)
    # sky (no hit, invalid depth) is the zero vector; every hit a unit vector
    sky = ~np.isfinite(depth)
    assert (normals[:, sky] == 0).all()
    np.testing.assert_allclose(np.linalg.norm(normals[:, ~sky], axis=0), 1.0, atol=1e-6)


@pytest.mark.parametrize("seed", [11, 12])
def test_normals_agree_with_the_depth_surface_and_face_the_camera(seed: int) -> None:
    """An independent check of every primitive's normals, sign and frame: the cross
    product of the back-projected depth map's finite differences is the surface normal
    (pointing away from the camera, +x cross +y = +z). On planes it agrees exactly; on the
    curved primitives a 2-pixel difference is off by up to a few degrees, and most
    smooth pixels of a street are planes."""
    from scenemtl.data.procedural.render import render_layers

    scene = _scene(seed=seed, size=(64, 128))
    layers = render_layers(scene, np.random.default_rng(0))
    cam = scene.camera
    z = layers["depth"].astype(np.float64)
    h, w = z.shape
    u = (np.arange(w) + 0.5 - cam.cx) / cam.fx
    v = (np.arange(h) + 0.5 - cam.cy) / cam.fy
    with np.errstate(invalid="ignore"):
        points = np.stack([u[None, :] * z, v[:, None] * z, z])
        du = points[:, 1:-1, 2:] - points[:, 1:-1, :-2]
        dv = points[:, 2:, 1:-1] - points[:, :-2, 1:-1]
        fd = np.cross(du, dv, axis=0)
    # pixels whose 3x3 neighbourhood is one class, all hit, with smooth depth
    sem, zc = layers["semseg"], z[1:-1, 1:-1]
    smooth = np.isfinite(zc)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            smooth &= sem[1 + dy : h - 1 + dy, 1 + dx : w - 1 + dx] == sem[1:-1, 1:-1]
            smooth &= np.isfinite(z[1 + dy : h - 1 + dy, 1 + dx : w - 1 + dx])
    with np.errstate(invalid="ignore"):
        second = np.abs(z[1:-1, 2:] + z[1:-1, :-2] - 2 * zc) + np.abs(
            z[2:, 1:-1] + z[:-2, 1:-1] - 2 * zc
        )
    smooth &= second < 0.01 * zc
    assert smooth.sum() > 3000
    fd = fd[:, smooth] / np.linalg.norm(fd[:, smooth], axis=0)
    n = layers["normals"][:, 1:-1, 1:-1][:, smooth].astype(np.float64)
    cos = np.sum(-fd * n, axis=0)
    assert (cos > 0).all()  # facing the camera, every one of them
    angle = np.degrees(np.arccos(np.clip(cos, -1, 1)))
    assert np.median(angle) < 0.1 and np.percentile(angle, 90) < 2.0


def test_synthesize_with_normals_writes_them_and_keys_the_cache(tmp_path: Path) -> None:
    from scenemtl.data.check import check_dataset
    from scenemtl.data.procedural.generate import sample_layers
    from scenemtl.tasks import dataset_task_specs

    params = SynthParams(
        train=2, val=1, test=1, size=(24, 48), seed=3, tasks=("normals", "depth", "semseg")
    )
    assert params.tasks == ("semseg", "depth", "normals")  # canonical order
    assert params.key() != SynthParams(train=2, val=1, test=1, size=(24, 48), seed=3).key()
    # the default task list is not written: keys (cache folders) made before normals stay
    assert "tasks" not in TINY.to_json() and SynthParams.from_json(params.to_json()) == params
    root = tmp_path / "ds"
    info = synthesize(root, params, workers=1, progress=False)
    assert list(dataset_task_specs(fmt.read_info(root))) == ["semseg", "depth", "normals"]
    assert info.extra_tasks == {"normals": {"kind": "normals", "encoding": "rgb8"}}
    for split, n in params.splits.items():
        for i in range(n):
            ref = sample_layers(params, split, i)["normals"]
            got = fmt.read_normals(fmt.label_path(root, split, "normals", i))
            assert np.array_equal(got == 0, ref == 0)
            cos = np.clip(np.sum(got * ref, axis=0)[(ref != 0).any(0)], -1, 1)
            assert np.degrees(np.arccos(cos)).max() <= fmt.NORMALS_CODEC_MAX_ANGLE_DEG + 0.01
    assert check_dataset(root) == []
    # a cache hit
    assert synthesize(root, params, workers=1, progress=False).to_json() == info.to_json()
    # data check names a broken normals file
    bad = fmt.label_path(root, "val", "normals", 0)
    bad.write_bytes(b"not a png")
    problems = check_dataset(root)
    assert len(problems) == 1 and problems[0].startswith(str(bad))


def test_montage_with_a_normals_panel() -> None:
    from scenemtl.data.procedural.montage import montage

    params = SynthParams(train=0, val=2, test=0, size=(24, 48))
    grid = montage(params, "val", [0, 1], columns=2, gap=2, normals=True)
    assert grid.shape == (24, 2 * 4 * 48 + 2, 3)
    # the fourth panel of the first sample is the normals picture: road is purple
    # (0, -1, 0) -> (128, 0, 128), nothing there is sky-black at the bottom row
    bottom = grid[-1, 3 * 48 : 4 * 48].astype(int)
    assert (np.abs(bottom - [128, 0, 128]).max(axis=1) <= 3).mean() > 0.5


def test_params_refuse_task_lists_the_layout_cannot_hold() -> None:
    with pytest.raises(UserError, match="'depth' is missing"):
        SynthParams(tasks=("semseg", "normals"))
    with pytest.raises(UserError, match="not 'flow'"):
        SynthParams(tasks=("semseg", "depth", "flow"))
