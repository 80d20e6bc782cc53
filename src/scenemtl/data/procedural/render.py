"""From a scene to (RGB, semantic labels, metric depth, surface normals)."""

from __future__ import annotations

import numpy as np

from scenemtl.data.procedural import objects as ob
from scenemtl.data.procedural import palette as pal
from scenemtl.data.procedural.camera import Camera
from scenemtl.data.procedural.profile import StageTimes
from scenemtl.data.procedural.raycast import (
    GROUND,
    SKY,
    PrimTable,
    cast_primary,
    cast_shadows,
    pair_normal,
    safe_inverse,
)
from scenemtl.data.procedural.scene import Scene
from scenemtl.data.procedural.shading import (
    SHADERS,
    Shade,
    Surface,
    camera_response,
    contact_occlusion,
    ground_labels,
    haze,
    illuminate,
    shade_ground,
    sky,
)
from scenemtl.data.procedural.vec3 import norm3, put_rows, sum3


def render(scene: Scene, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Render a scene: ``(rgb, semseg, depth)`` of :func:`render_layers`."""
    layers = render_layers(scene, rng)
    return layers["rgb"], layers["semseg"], layers["depth"]


def render_layers(
    scene: Scene,
    rng: np.random.Generator,
    times: StageTimes | None = None,
    normals: bool = True,
    parts: bool = False,
) -> dict[str, np.ndarray]:
    """Render a scene.

    Args:
        rng: randomness of the image itself (sensor noise), after the layout's draws.
        times: if given, the time of each stage (raycast, shadows, shading, camera) is
            added to it.
        normals: whether to make the ``normals`` layer (~5% of the time of an image);
            nothing else depends on it.
        parts: whether to make the ``parts`` layer; nothing else depends on it.

    Returns:
        ``rgb``: uint8 [H, W, 3].
        ``semseg``: uint8 [H, W] Cityscapes trainIds (sky = 10).
        ``depth``: float32 [H, W] z-depth in meters, ``inf`` for sky (callers clip/mark).
        ``normals`` (unless ``normals`` is false): float32 [3, H, W] unit surface normals
        at the hit points in the camera frame (x right, y down, z forward), facing the
        camera; zero for sky. Exact: the primitive's analytic normal at the hit (the
        ground plane's is world up).
        ``parts`` (with ``parts``): uint8 [H, W] human parts (:mod:`.parts`), 0 off people.
    """
    lap = (times if times is not None else StageTimes()).laps()
    cam = scene.camera
    h, w = cam.height, cam.width
    dirs, zfac = cam.rays()
    planes = np.ascontiguousarray(dirs.transpose(2, 0, 1))
    table = PrimTable.of(scene.prims)
    t, ids = cast_primary(cam, scene.prims, planes, safe_inverse(planes), table)

    flat_ids = ids.ravel()
    hit_idx = np.flatnonzero(flat_ids != SKY)
    hid = flat_ids[hit_idx]
    d_hit = np.take(dirs.reshape(-1, 3), hit_idx, axis=0)
    t_hit = t.ravel()[hit_idx]
    origin = cam.position.astype(np.float32)
    p = origin + t_hit[:, None] * d_hit
    m = len(hit_idx)
    prims = scene.prims
    k = len(prims)

    def rows(values: list | np.ndarray, width: int, dtype: type = np.float32) -> np.ndarray:
        # One extra row at the end stands for the ground plane.
        out = np.zeros((k + 1, width) if width else (k + 1,), dtype)
        if k:
            out[:k] = np.asarray(values, dtype=dtype).reshape(out[:k].shape)
        return out

    table_color = rows([p.color for p in prims], 3)
    table_color2 = rows([p.color2 for p in prims], 3)
    # the same float32 roundings of the same values as in ``table`` (PrimTable.of)
    table_params = rows(table.params, 4)
    table_half = rows(table.half, 3)
    table_half[k] = 1.0
    table_tex = rows(table.tex, 0)
    table_label = rows([p.label for p in prims], 0, np.uint8)
    table_mat = rows([p.material for p in prims], 0, np.int32)

    # Hits are on a primitive or on the ground: local points and normals are made for
    # each group apart and put in pixel order by one gather each (much cheaper than a
    # 2-D scatter ``a[rows] = ...``).
    ground = hid == GROUND
    on_prim = np.flatnonzero(~ground)
    gsel = np.flatnonzero(ground)
    p_ground = np.take(p, gsel, axis=0)
    kp = hid[on_prim]
    rot = np.take(table.rotation, kp, axis=0)
    q = np.einsum(
        "pi,pij->pj", np.take(p, on_prim, axis=0) - np.take(table.center, kp, axis=0), rot
    )
    nloc = pair_normal(table, kp, q)
    up = np.zeros((len(gsel), 3), np.float32)
    up[:, 1] = 1.0  # the ground's normal, world and local
    pixel_order = np.empty(m, np.intp)
    pixel_order[np.concatenate([on_prim, gsel])] = np.arange(m)
    pl = np.take(np.concatenate([q, p_ground]), pixel_order, axis=0)
    nl = np.take(np.concatenate([nloc, up]), pixel_order, axis=0)
    n = np.take(np.concatenate([np.einsum("pj,pij->pi", nloc, rot), up]), pixel_order, axis=0)

    prim_rows = np.where(ground, k, hid)
    labels = table_label[prim_rows]
    labels[gsel] = ground_labels(scene.ground, p_ground)
    part_map = _part_map(prims, prim_rows, pl, hit_idx, h, w) if parts else None
    lap("raycast")

    surf = Surface(
        p=p,
        pl=pl,
        n=n,
        nl=nl,
        pid=hid,
        color=np.take(table_color, prim_rows, axis=0),
        color2=np.take(table_color2, prim_rows, axis=0),
        params=np.take(table_params, prim_rows, axis=0),
        half=np.take(table_half, prim_rows, axis=0),
        tex=table_tex[prim_rows],
    )
    out = Shade(
        albedo=np.zeros((m, 3), np.float32),
        emission=np.zeros((m, 3), np.float32),
        gloss=np.zeros(m, np.float32),
    )
    mats = table_mat[prim_rows]
    for key, shader in SHADERS.items():
        sel = np.flatnonzero((mats == key) & ~ground)
        if len(sel):
            shader(surf, sel, out)
    put_rows(out.albedo, gsel, shade_ground(scene.ground, p_ground, labels[gsel]))

    lap("shading")
    light = scene.light
    shadow = np.zeros(m, dtype=np.float32)
    if light.sun_rgb.max() > 0.6:
        ndotl = n @ light.sun.astype(np.float32)
        # Far points gain little from shadows once hazed and tiny; skip them.
        lit = (ndotl > 0.0) & (t_hit < 150.0)
        shadow = _soft_shadows(cam, scene, ids, hit_idx, p, n, lit, table)
    lap("shadows")

    occlusion = np.ones(m, np.float32)
    near_ground = np.flatnonzero(ground & (t_hit < 80.0))
    if len(near_ground):
        occlusion[near_ground] = contact_occlusion(
            np.take(p, near_ground, axis=0), _footprints(scene, table)
        )

    lit_rgb = illuminate(light, out, n, shadow, d_hit, occlusion)
    sky_idx = np.flatnonzero(flat_ids == SKY)
    sky_rgb = sky(
        light, np.take(dirs.reshape(-1, 3), sky_idx, axis=0), float(scene.meta.get("sky_tex", 0.0))
    )
    # Every pixel is a hit or sky: put both in pixel order by one gather.
    image_order = np.empty(h * w, np.intp)
    image_order[np.concatenate([hit_idx, sky_idx])] = np.arange(h * w)
    radiance = np.take(
        np.concatenate(
            [
                haze(light, lit_rgb, t_hit).astype(np.float32, copy=False),
                sky_rgb.astype(np.float32, copy=False),
            ]
        ),
        image_order,
        axis=0,
    )
    lap("shading")
    rgb = camera_response(scene.post, radiance.reshape(h, w, 3), rng)
    lap("camera")

    semseg = np.full(h * w, ob.SKY, np.uint8)
    semseg[hit_idx] = labels
    depth = np.full(h * w, np.inf, np.float32)
    depth[hit_idx] = t_hit * zfac.ravel()[hit_idx]
    layers = {"rgb": rgb, "semseg": semseg.reshape(h, w), "depth": depth.reshape(h, w)}
    if normals:
        layers["normals"] = _camera_normals(cam, n, d_hit, hit_idx)
    if part_map is not None:
        layers["human_parts"] = part_map
    lap("raycast")
    return layers


def _camera_normals(
    cam: Camera, n_world: np.ndarray, d_world: np.ndarray, hit_idx: np.ndarray
) -> np.ndarray:
    """World normals [M, 3] of the hit pixels as camera-frame normals [3, H, W], 0 = sky.

    ``cam.rotation`` maps camera vectors to world vectors, so a world row vector ``v``
    is ``v @ rotation`` in the camera frame. Outward normals of convex solids hit from
    outside face the ray already; the flip only guards a camera inside a primitive.
    """
    h, w = cam.height, cam.width
    rot = cam.rotation.astype(np.float64)
    n = n_world.astype(np.float64) @ rot
    facing_away = sum3(n_world.astype(np.float64) * d_world) > 0
    n[facing_away] = -n[facing_away]
    n /= np.maximum(norm3(n)[:, None], 1e-12)
    out = np.zeros((h * w, 3), np.float32)
    out[hit_idx] = n
    return np.ascontiguousarray(out.T.reshape(3, h, w))


_VEHICLES = (ob.CAR, ob.TRUCK, ob.BUS, ob.TRAIN)


def _footprints(scene: Scene, table: PrimTable) -> np.ndarray:
    """[F, 4] ground footprints (x, z, half_x, half_z) of vehicle bodies near the camera."""
    rows = [
        k
        for k, prim in enumerate(scene.prims)
        if prim.label in _VEHICLES
        and prim.material == pal.M_PAINT
        and prim.center[1] - prim.half[1] < 0.6  # the body, not the cabin or roof
        and np.hypot(prim.center[0], prim.center[2]) < 90.0
    ]
    if not rows:
        return np.zeros((0, 4), np.float32)
    corners = table.corners()[rows]
    lo, hi = corners.min(axis=1), corners.max(axis=1)
    # Shrink the bounding box a little: rounded bodies do not fill it.
    half = (hi - lo) / 2 * 0.85
    centre = (hi + lo) / 2
    return np.stack([centre[:, 0], centre[:, 2], half[:, 0], half[:, 2]], 1).astype(np.float32)


def _soft_shadows(
    cam: Camera,
    scene: Scene,
    ids: np.ndarray,
    hit_idx: np.ndarray,
    p: np.ndarray,
    n: np.ndarray,
    lit: np.ndarray,
    table: PrimTable,
) -> np.ndarray:
    """Sun shadow factor in [0, 1] per hit pixel [M].

    Shadow rays are traced for every other pixel in both directions and spread back with
    a small blur: four times cheaper, and the soft edge stands in for the penumbra.
    """
    h, w = ids.shape
    even = _EvenPixels(hit_idx, h, w)
    shadow = cast_shadows(
        _half_camera(cam),
        scene.prims,
        ids[::2, ::2],
        even.gather(p, 0.0),
        even.gather(n, 0.0),
        even.gather(lit, False),
        scene.light.sun,
        table,
    ).astype(np.float32)
    if not shadow.any():
        return np.zeros(len(hit_idx), np.float32)  # what the blur below gives then
    up = np.repeat(np.repeat(shadow, 2, axis=0), 2, axis=1)[:h, :w]
    pad = np.pad(up, 1, mode="edge")
    soft = (pad[:-2, 1:-1] + pad[2:, 1:-1] + pad[1:-1, :-2] + pad[1:-1, 2:] + 2 * up) / 6
    return soft.ravel().take(hit_idx) * lit


class _EvenPixels:
    """Per-hit values [M, ...] on the grid of the even rows and columns of an [H, W]
    image: the same as scattering them into the image and taking ``[::2, ::2]``, without
    making the full image.

    Args:
        hit_idx: [M] increasing flat pixel indices of the hits.
    """

    def __init__(self, hit_idx: np.ndarray, h: int, w: int) -> None:
        self.shape = ((h + 1) // 2, (w + 1) // 2)
        row, col = np.divmod(hit_idx, w)
        even = np.flatnonzero(((row | col) & 1) == 0)
        # for each pixel of the half grid, the hit it shows, or M (the fill row)
        self.src = np.full(self.shape[0] * self.shape[1], len(hit_idx), np.intp)
        self.src[(row[even] >> 1) * self.shape[1] + (col[even] >> 1)] = even

    def gather(self, values: np.ndarray, fill: float | bool) -> np.ndarray:
        """[ceil(H/2), ceil(W/2), ...] values of the hits, ``fill`` elsewhere."""
        tail = values.shape[1:]
        padded = np.concatenate([values, np.full((1, *tail), fill, values.dtype)])
        return np.take(padded, self.src, axis=0).reshape(*self.shape, *tail)


def _half_camera(cam: Camera) -> Camera:
    """The camera whose pixels are the even rows/columns of ``cam``'s (for culling)."""
    from dataclasses import replace

    return replace(
        cam,
        height=(cam.height + 1) // 2,
        width=(cam.width + 1) // 2,
        fx=cam.fx / 2,
        fy=cam.fy / 2,
        cx=(cam.cx + 0.5) / 2,
        cy=(cam.cy + 0.5) / 2,
    )


def _part_map(
    prims: list, prim_rows: np.ndarray, local: np.ndarray, hit_idx: np.ndarray, h: int, w: int
) -> np.ndarray:
    """uint8 [H, W] human part of every pixel: its primitive's ``part``, or ``part_below``
    where the hit lies at local y < 0; 0 on the ground (row ``len(prims)``) and the sky.

    Args:
        prim_rows: [M] primitive of each hit, ``len(prims)`` for the ground.
        local: [M, 3] hit points in their primitive's frame (world points on the ground).
    """
    k = len(prims)
    upper = np.zeros(k + 1, np.uint8)
    lower = np.zeros(k + 1, np.uint8)
    for i, prim in enumerate(prims):
        upper[i] = prim.part
        lower[i] = prim.part if prim.part_below < 0 else prim.part_below
    part = np.where(local[:, 1] >= 0, upper[prim_rows], lower[prim_rows])
    out = np.zeros(h * w, np.uint8)
    out[hit_idx] = part
    return out.reshape(h, w)
