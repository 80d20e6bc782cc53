"""Analytic ray casting of the convex primitives, with screen-space culling.

Each primitive is intersected only with the rays of the pixel rectangle its bounding
box projects to, so the cost follows screen area, not scene size. Intersections are
ray-parameter intervals ``[t_in, t_out]``; a compound solid is the intersection of its
pieces' intervals. A z-buffer keeps the nearest hit per pixel; normals and local
coordinates are recovered afterwards from the winning hit points only.

Large primitives are cast one by one, front to back, so that those wholly behind
nearer surfaces are skipped. The many small ones (a person's limbs, a far car's
wheels) are cast together as one batch of (primitive, pixel) pairs, which removes the
per-primitive overhead that would otherwise dominate.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from scenemtl.data.procedural.camera import NEAR, Camera
from scenemtl.data.procedural.geometry import (
    BOX,
    CUT_NONE,
    CYLINDER,
    ELLIPSOID,
    ROUNDED_BOX,
    Prim,
)
from scenemtl.data.procedural.textures import cutout_open
from scenemtl.data.procedural.vec3 import argmax3, max3, norm3, put_rows, sum3

SKY = -1
"""Buffer id of pixels whose ray hits nothing."""
GROUND = -2
"""Buffer id of pixels whose ray hits the ground plane y = 0."""

BATCH_AREA = 600
"""Primitives whose pixel rectangle is at most this big are cast in the batch."""

_INF = np.float32(np.inf)


@dataclass
class PrimTable:
    """The primitives' geometry as arrays (K rows), for batched intersection."""

    center: np.ndarray  # [K, 3]
    rotation: np.ndarray  # [K, 3, 3] local -> world
    half: np.ndarray  # [K, 3]
    radii: np.ndarray  # [K, 3] ellipsoid semi-axes of ROUNDED_BOX (half * round_scale)
    shape: np.ndarray  # [K]
    cutout: np.ndarray  # [K]
    params: np.ndarray  # [K, 4]
    tex: np.ndarray  # [K]
    # caches of corners() and distance_bounds(); the rows above are never modified
    _corners: np.ndarray | None = field(default=None, repr=False, compare=False)
    _bounds: tuple[tuple[float, ...], np.ndarray] | None = field(
        default=None, repr=False, compare=False
    )

    @classmethod
    def of(cls, prims: list[Prim]) -> PrimTable:
        if not prims:
            z3 = np.zeros((0, 3), np.float32)
            return cls(
                z3,
                np.zeros((0, 3, 3), np.float32),
                z3,
                z3,
                np.zeros(0, int),
                np.zeros(0, int),
                np.zeros((0, 4), np.float32),
                np.zeros(0, np.float32),
            )
        half = np.array([p.half for p in prims], np.float32)
        scale = np.array(
            [r if isinstance(r, tuple) else (r, r, r) for r in (p.round_scale for p in prims)],
            np.float32,
        )
        return cls(
            center=np.array([p.center for p in prims], np.float32),
            rotation=np.array([p.rotation for p in prims], np.float32),
            half=half,
            radii=half * scale,
            shape=np.array([p.shape for p in prims]),
            cutout=np.array([p.cutout for p in prims]),
            params=np.array([p.params for p in prims], np.float32),
            tex=np.array([p.tex for p in prims], np.float32),
        )

    def corners(self) -> np.ndarray:
        """[K, 8, 3] world corners of the bounding boxes (read-only: computed once per
        table, as primary rays, shadow rays and contact shadows all need them)."""
        if self._corners is None:
            local = _SIGNS[None, :, :] * self.half[:, None, :]
            corners = self.center[:, None, :] + np.einsum("knj,kij->kni", local, self.rotation)
            corners.flags.writeable = False
            self._corners = corners
        return self._corners

    def distance_bounds(self, point: np.ndarray) -> np.ndarray:
        """[K] lower bounds of the distance from ``point`` to each primitive (read-only;
        the last point's bounds are kept: primary and shadow rays share the camera)."""
        key = tuple(np.asarray(point, np.float32).tolist())
        if self._bounds is None or self._bounds[0] != key:
            q = np.einsum(
                "ki,kij->kj", point[None, :].astype(np.float32) - self.center, self.rotation
            )
            bounds = np.linalg.norm(np.maximum(np.abs(q) - self.half, 0.0), axis=1)
            bounds.flags.writeable = False
            self._bounds = (key, bounds)
        return self._bounds[1]


_SIGNS = np.array(
    [[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)], dtype=np.float32
)


def safe_inverse(d: np.ndarray) -> np.ndarray:
    """1 / d with zeros nudged away, so slabs parallel to a ray give +-inf, not NaN."""
    tiny = np.float32(1e-12)
    return 1.0 / np.where(np.abs(d) < tiny, tiny, d)


def _quadric(o, d, radii, axes: tuple[int, ...]):
    """Interval of rays inside the ellipsoid / elliptic cylinder
    ``sum over axes of (p_a / r_a)^2 <= 1``.

    ``o[a]``, ``d[a]`` and ``radii[a]`` are scalars or equally shaped arrays. Rays
    parallel to a cylinder's axis would need care; none occur here (camera rays stay
    within the field of view, the sun is never at the zenith nor on the horizon).
    """
    a = 0.0
    b = 0.0
    c = -1.0
    for ax in axes:
        inv_r = np.float32(1.0) / radii[ax]
        oa = o[ax] * inv_r
        da = d[ax] * inv_r
        a = a + da * da
        b = b + oa * da
        c = c + oa * oa
    disc = b * b - a * c
    a_safe = np.maximum(a, np.float32(1e-20))
    sq = np.sqrt(np.maximum(disc, np.float32(0.0)))
    miss = disc < 0
    t0 = np.where(miss, _INF, (-b - sq) / a_safe)
    t1 = np.where(miss, -_INF, (-b + sq) / a_safe)
    return t0, t1


def _slab(o, inv, h):
    t1 = (-h - o) * inv
    t2 = (h - o) * inv
    return np.minimum(t1, t2), np.maximum(t1, t2)


def _interval(shape: int, o, d, half, radii, inv=None):
    """Interval of rays ``o + t d`` (local frame) inside a solid of ``shape``.

    All vectors are 3-tuples of components (scalars or equally shaped arrays); ``half``
    and ``radii`` likewise; ``inv`` optionally the precomputed 1/d. A miss has
    ``t_in > t_out``.
    """
    if shape in (BOX, ROUNDED_BOX):
        if inv is None:
            inv = tuple(safe_inverse(np.asarray(c, dtype=np.float32)) for c in d)
        x0, x1 = _slab(o[0], inv[0], half[0])
        y0, y1 = _slab(o[1], inv[1], half[1])
        z0, z1 = _slab(o[2], inv[2], half[2])
        tin = np.maximum(np.maximum(x0, y0), z0)
        tout = np.minimum(np.minimum(x1, y1), z1)
        if shape == ROUNDED_BOX:
            e0, e1 = _quadric(o, d, radii, (0, 1, 2))
            tin = np.maximum(tin, e0)
            tout = np.minimum(tout, e1)
        return tin, tout
    if shape == CYLINDER:
        inv_y = safe_inverse(np.asarray(d[1], dtype=np.float32)) if inv is None else inv[1]
        y0, y1 = _slab(o[1], inv_y, half[1])
        c0, c1 = _quadric(o, d, half, (0, 2))
        return np.maximum(y0, c0), np.minimum(y1, c1)
    if shape == ELLIPSOID:
        return _quadric(o, d, half, (0, 1, 2))
    raise ValueError(f"unknown primitive shape {shape}")


def interval(prim: Prim, o, d, inv_d=None) -> tuple[np.ndarray, np.ndarray]:
    """Ray-parameter interval [t_in, t_out] of rays ``o + t d`` inside ``prim``.

    ``o`` and ``d`` are local-frame origins/directions given as three components, each
    a scalar or a float32 array, broadcasting against each other.
    """
    half = prim.half.astype(np.float32)
    radii = half * np.asarray(prim.round_scale, dtype=np.float32)
    return _interval(prim.shape, o, d, tuple(half), tuple(radii), inv_d)


def _table_interval(tab: PrimTable, k: int, shape: int, o, d, inv_d=None):
    """:func:`interval` of primitive ``k`` with its sizes read from ``tab``: the same
    float32 numbers (``tab.half`` and ``tab.radii`` round and multiply as ``interval``
    does), without converting the primitive's arrays on every call."""
    return _interval(shape, o, d, tuple(tab.half[k]), tuple(tab.radii[k]), inv_d)


def pair_interval(tab: PrimTable, k: np.ndarray, o: np.ndarray, d: np.ndarray):
    """Intervals for a batch of (primitive, ray) pairs.

    Args:
        k: int [P] primitive of each pair.
        o, d: float32 [P, 3] local-frame ray origins and directions.

    Returns:
        (t_in, t_out), float32 [P] each.
    """
    tin = np.full(len(k), _INF, np.float32)
    tout = np.full(len(k), -_INF, np.float32)
    shapes = tab.shape[k]
    for shape in (BOX, CYLINDER, ELLIPSOID, ROUNDED_BOX):
        m = np.flatnonzero(shapes == shape)
        if not len(m):
            continue
        km = k[m]
        half = np.take(tab.half, km, axis=0)
        radii = np.take(tab.radii, km, axis=0)
        oo, dd = np.take(o, m, axis=0), np.take(d, m, axis=0)
        a, b = _interval(
            shape,
            (oo[:, 0], oo[:, 1], oo[:, 2]),
            (dd[:, 0], dd[:, 1], dd[:, 2]),
            (half[:, 0], half[:, 1], half[:, 2]),
            (radii[:, 0], radii[:, 1], radii[:, 2]),
        )
        tin[m] = a
        tout[m] = b
    return tin, tout


def local_normal(prim: Prim, p: np.ndarray) -> np.ndarray:
    """Outward unit normals [N, 3] (local frame) at surface points ``p`` [N, 3].

    The active piece of a compound solid is the one whose implicit function is closest
    to (or past) its boundary at the point.
    """
    half = prim.half
    n = np.zeros_like(p)
    if prim.shape in (BOX, ROUNDED_BOX):
        ratio = np.abs(p) / half
        axis = ratio.argmax(axis=1)
        rows = np.arange(len(p))
        n[rows, axis] = np.sign(p[rows, axis])
        if prim.shape == ROUNDED_BOX:
            radii = half * np.asarray(prim.round_scale)
            ell = np.sqrt(np.sum((p / radii) ** 2, axis=1))
            on_ell = ell >= ratio.max(axis=1)
            n[on_ell] = p[on_ell] / radii**2
    elif prim.shape == CYLINDER:
        radial = np.sqrt((p[:, 0] / half[0]) ** 2 + (p[:, 2] / half[2]) ** 2)
        cap = np.abs(p[:, 1]) / half[1] >= radial
        n[cap, 1] = np.sign(p[cap, 1])
        side = ~cap
        n[side, 0] = p[side, 0] / half[0] ** 2
        n[side, 2] = p[side, 2] / half[2] ** 2
    else:
        n = p / half**2
    norm = np.linalg.norm(n, axis=1, keepdims=True)
    return (n / np.maximum(norm, 1e-12)).astype(np.float32)


def pair_normal(tab: PrimTable, k: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Batched :func:`local_normal`: unit local normals [N, 3] at local surface points
    ``p`` [N, 3] of primitives ``k`` [N]."""
    n = np.zeros(p.shape, p.dtype)  # C order: written by flat index below
    shapes = tab.shape[k]
    boxy = (shapes == BOX) | (shapes == ROUNDED_BOX)
    if boxy.any():
        b = np.flatnonzero(boxy)
        ratio = np.abs(np.take(p, b, axis=0)) / np.take(tab.half, k[b], axis=0)
        # n[b, axis] = sign(p[b, axis]), by flat index (2-D fancy indexing is slower)
        flat = b * 3 + argmax3(ratio)
        n.reshape(-1)[flat] = np.sign(p.reshape(-1).take(flat))
        rb = shapes[b] == ROUNDED_BOX
        if rb.any():
            r = b[rb]
            radii = np.take(tab.radii, k[r], axis=0)
            ell = np.sqrt(sum3((np.take(p, r, axis=0) / radii) ** 2))
            on = np.flatnonzero(ell >= max3(ratio[rb]))
            put_rows(n, r[on], np.take(p, r[on], axis=0) / np.take(radii, on, axis=0) ** 2)
    c = np.flatnonzero(shapes == CYLINDER)
    if len(c):
        half = np.take(tab.half, k[c], axis=0)
        q = np.take(p, c, axis=0)
        radial = np.sqrt((q[:, 0] / half[:, 0]) ** 2 + (q[:, 2] / half[:, 2]) ** 2)
        cap = np.abs(q[:, 1]) / half[:, 1] >= radial
        n[c, 0] = np.where(cap, 0.0, q[:, 0] / half[:, 0] ** 2)
        n[c, 1] = np.where(cap, np.sign(q[:, 1]), 0.0)
        n[c, 2] = np.where(cap, 0.0, q[:, 2] / half[:, 2] ** 2)
    e = np.flatnonzero(shapes == ELLIPSOID)
    if len(e):
        put_rows(n, e, np.take(p, e, axis=0) / np.take(tab.half, k[e], axis=0) ** 2)
    norm = norm3(n)[:, None]
    return (n / np.maximum(norm, 1e-12)).astype(np.float32, copy=False)


def _pairs(rects: np.ndarray, ks: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    """All (primitive, flat pixel index) pairs of the given primitives' rectangles, in
    the order of ``ks`` and row-major within each rectangle."""
    r0, r1, c0, c1 = rects[ks].T
    w = c1 - c0
    rows = r1 - r0
    area = rows * w
    nonempty = area > 0
    if not nonempty.all():
        ks, r0, c0, w, rows, area = (a[nonempty] for a in (ks, r0, c0, w, rows, area))
    total = int(area.sum())
    if total == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    # One entry per pixel row of every rectangle: its first flat index and its length.
    row_rect = np.repeat(np.arange(len(ks)), rows)
    row_in_rect = np.arange(len(row_rect)) - np.repeat(np.cumsum(rows) - rows, rows)
    row_first = (r0[row_rect] + row_in_rect) * width + c0[row_rect]
    row_len = w[row_rect]
    # Flat indices step by 1 along a row and jump at the start of the next row: a
    # cumulative sum of steps, with no integer division per pair.
    steps = np.ones(total, np.int64)
    steps[0] = row_first[0]
    steps[(np.cumsum(row_len) - row_len)[1:]] = row_first[1:] - (row_first[:-1] + row_len[:-1] - 1)
    return np.repeat(ks, area), np.cumsum(steps)


def cast_primary(
    camera: Camera,
    prims: list[Prim],
    dirs: np.ndarray,
    inv_dirs: np.ndarray,
    table: PrimTable | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Nearest hit per pixel.

    Args:
        dirs: float32 [3, H, W] unit world ray directions as planes; ``inv_dirs`` their
            inverses.

    Returns:
        t: float32 [H, W] ray distance of the nearest hit (inf for sky).
        ids: int32 [H, W] index into ``prims``, GROUND or SKY.
    """
    h, w = dirs.shape[1:]
    tab = PrimTable.of(prims) if table is None else table
    origin = camera.position.astype(np.float32)
    ids = np.full((h, w), SKY, dtype=np.int32)
    # The ground plane first: every ray pointing down reaches it.
    down = dirs[1] < -1e-6
    t = np.where(down, -origin[1] / np.where(down, dirs[1], -1.0), _INF).astype(np.float32)
    ids[down] = GROUND
    if not prims:
        return t, ids
    rects = camera.pixel_rects(tab.corners())
    lower = tab.distance_bounds(camera.position)
    area = (rects[:, 1] - rects[:, 0]) * (rects[:, 3] - rects[:, 2])
    rect_list = rects.tolist()
    # Big primitives front to back, so that whatever is wholly behind nearer surfaces
    # is skipped.
    for k in np.argsort(lower, kind="stable").tolist():
        if area[k] == 0 or area[k] <= BATCH_AREA:
            continue
        r0, r1, c0, c1 = rect_list[k]
        tb = t[r0:r1, c0:c1]
        if lower[k] > tb.max():
            continue
        prim = prims[k]
        o = (origin - prim.center).astype(np.float32)
        world = (dirs[0, r0:r1, c0:c1], dirs[1, r0:r1, c0:c1], dirs[2, r0:r1, c0:c1])
        if prim.axis_aligned:
            d = world
            inv = (inv_dirs[0, r0:r1, c0:c1], inv_dirs[1, r0:r1, c0:c1], inv_dirs[2, r0:r1, c0:c1])
            tin, tout = _table_interval(tab, k, prim.shape, tuple(o.tolist()), d, inv)
        else:
            rot = prim.rotation.astype(np.float32)
            o = o @ rot
            d = tuple(
                world[0] * rot[0, j] + world[1] * rot[1, j] + world[2] * rot[2, j] for j in range(3)
            )
            tin, tout = _table_interval(tab, k, prim.shape, tuple(o.tolist()), d)
        closer = (tin <= tout) & (tin > NEAR) & (tin < tb)
        if prim.cutout != CUT_NONE:
            idx = np.flatnonzero(closer)
            if len(idx):
                # ravel + take: ``.flat[idx]`` of a strided rectangle view costs ~6x more
                p = o + tin.ravel().take(idx)[:, None] * np.stack(
                    [c.ravel().take(idx) for c in d], 1
                )
                opened = cutout_open(prim.cutout, p, tab.half[k], tab.params[k], tab.tex[k])
                closer.flat[idx[opened]] = False
        # masked copies: no gather/scatter of the selected pixels
        np.copyto(tb, tin, where=closer)
        np.copyto(ids[r0:r1, c0:c1], k, where=closer)

    # Small primitives as one batch of pairs.
    small = np.flatnonzero((area > 0) & (area <= BATCH_AREA))
    k, pix = _pairs(rects, small, w)
    tflat = t.reshape(-1)
    keep = lower[k] <= tflat[pix]
    keep = np.flatnonzero(keep)  # then gathers: boolean masks index ~4x slower
    k, pix = k.take(keep), pix.take(keep)
    if len(k):
        rot = np.take(tab.rotation, k, axis=0)
        o = np.einsum("pi,pij->pj", origin[None, :] - np.take(tab.center, k, axis=0), rot)
        d = np.einsum("pi,pij->pj", np.take(dirs.reshape(3, -1), pix, axis=1).T, rot)
        tin, tout = pair_interval(tab, k, o, d)
        hit = (tin <= tout) & (tin > NEAR) & (tin < tflat[pix])
        cut = hit & (tab.cutout[k] != CUT_NONE)
        ci = np.flatnonzero(cut)
        if len(ci):
            kc = k[ci]
            p = np.take(o, ci, axis=0) + tin[ci, None] * np.take(d, ci, axis=0)
            opened = cutout_open(
                tab.cutout[kc],
                p,
                np.take(tab.half, kc, axis=0),
                np.take(tab.params, kc, axis=0),
                tab.tex[kc],
            )
            hit[ci[opened]] = False
        hi = np.flatnonzero(hit)
        if len(hi):
            # Nearest pair per pixel: sort by (pixel, t) and keep each pixel's first.
            order = np.lexsort((tin[hi], pix[hi]))
            hs = hi[order]
            first = np.ones(len(hs), bool)
            first[1:] = pix[hs][1:] != pix[hs][:-1]
            win = hs[first]
            tflat[pix[win]] = tin[win]
            ids.reshape(-1)[pix[win]] = k[win]
    return t, ids


def cast_shadows(
    camera: Camera,
    prims: list[Prim],
    ids: np.ndarray,
    points: np.ndarray,
    normals: np.ndarray,
    lit: np.ndarray,
    sun: np.ndarray,
    table: PrimTable | None = None,
) -> np.ndarray:
    """Which surface points are hidden from the sun by some primitive.

    Args:
        camera: the camera whose pixel grid ``ids`` etc. are on.
        ids: int32 [H, W] from :func:`cast_primary`.
        points: float32 [H, W, 3] world hit points; ``normals`` their world normals.
        lit: bool [H, W] points facing the sun (the only ones that can be shadowed).
        sun: (3,) unit direction towards the sun, y > 0.

    Returns:
        bool [H, W], True where the point is in a cast shadow.
    """
    h, w = ids.shape
    shadow = np.zeros((h, w), dtype=bool)
    tab = PrimTable.of(prims) if table is None else table
    # Shadows of far casters fall on far, hazy, tiny surfaces: not worth their rays.
    if not prims or not lit.any():
        return shadow
    near = tab.distance_bounds(camera.position) < 110.0
    casts = np.array([p.shadow for p in prims])
    casters = np.flatnonzero(near & casts)
    if not len(casters):
        return shadow
    corners = tab.corners()[casters]
    # The shadow volume is the solid swept away from the sun down to the ground; its
    # hull projects to the only pixels that can lie in this shadow.
    drop = (corners[..., 1] + 0.05) / sun[1]
    hull = np.concatenate([corners, corners - drop[..., None] * sun], axis=1)
    rects = np.zeros((len(prims), 4), np.int64)
    rects[casters] = camera.pixel_rects(hull)
    area = (rects[:, 1] - rects[:, 0]) * (rects[:, 3] - rects[:, 2])
    sun32 = sun.astype(np.float32)
    lifted = (points + 0.03 * normals).reshape(-1, 3)
    flat_shadow = shadow.reshape(-1)
    for k in casters.tolist():
        if area[k] == 0 or area[k] <= BATCH_AREA:
            continue
        r0, r1, c0, c1 = rects[k].tolist()
        cand = lit[r0:r1, c0:c1] & (ids[r0:r1, c0:c1] != k) & ~shadow[r0:r1, c0:c1]
        if not cand.any():
            continue
        prim = prims[k]
        rot = tab.rotation[k]
        cand_r, cand_c = np.nonzero(cand)
        pix = (cand_r + r0) * w + (cand_c + c0)
        o = (np.take(lifted, pix, axis=0) - tab.center[k]) @ rot
        d = sun32 @ rot
        tin, tout = _table_interval(
            tab, k, prim.shape, (o[:, 0], o[:, 1], o[:, 2]), tuple(d.tolist())
        )
        hit = (tin <= tout) & (tout > 1e-3)
        if prim.cutout != CUT_NONE and hit.any():
            sel = np.flatnonzero(hit)
            q = o[sel] + np.maximum(tin[sel], 0.0)[:, None] * d
            hit[sel[cutout_open(prim.cutout, q, tab.half[k], tab.params[k], tab.tex[k])]] = False
        flat_shadow[pix] = hit
    small = casters[(area[casters] > 0) & (area[casters] <= BATCH_AREA)]
    k, pix = _pairs(rects, small, w)
    keep = lit.reshape(-1)[pix] & (ids.reshape(-1)[pix] != k) & ~shadow.reshape(-1)[pix]
    keep = np.flatnonzero(keep)  # then gathers: boolean masks index ~4x slower
    k, pix = k.take(keep), pix.take(keep)
    if len(k):
        rot = np.take(tab.rotation, k, axis=0)
        o = np.einsum(
            "pi,pij->pj",
            np.take(lifted, pix, axis=0) - np.take(tab.center, k, axis=0),
            rot,
        )
        d = np.einsum("i,pij->pj", sun32, rot)
        tin, tout = pair_interval(tab, k, o, d)
        hit = (tin <= tout) & (tout > 1e-3)
        ci = np.flatnonzero(hit & (tab.cutout[k] != CUT_NONE))
        if len(ci):
            kc = k[ci]
            q = o[ci] + np.maximum(tin[ci], 0.0)[:, None] * d[ci]
            hit[ci[cutout_open(tab.cutout[kc], q, tab.half[kc], tab.params[kc], tab.tex[kc])]] = (
                False
            )
        shadow.reshape(-1)[pix[hit]] = True
    return shadow
