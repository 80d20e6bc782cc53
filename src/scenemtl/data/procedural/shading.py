"""Appearance: procedural textures per material, sun and sky light, haze, and the
camera response (exposure, white balance, tone curve, blur, vignetting, noise).

Shaders work on flat arrays of the pixels one material covers, in linear RGB; the
camera response at the end turns radiance into 8-bit sRGB.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from scenemtl.data.procedural import objects as ob
from scenemtl.data.procedural import palette as pal
from scenemtl.data.procedural.scene import Ground, Light, Post
from scenemtl.data.procedural.textures import FINE, MEDIUM, SMOOTH, hash01, noise
from scenemtl.data.procedural.vec3 import norm3, put_rows, sum3


@dataclass
class Surface:
    """The visible surface points of one image, flattened (M hit pixels).

    Attributes:
        p: float32 [M, 3] world points; ``pl`` the same in the primitive's local frame.
        n: float32 [M, 3] world normals; ``nl`` local normals.
        pid: int32 [M] primitive index (or raycast.GROUND).
        color, color2, params, half: per-pixel rows of the primitive tables
            ([M, 3], [M, 3], [M, 4], [M, 3]); ``tex`` [M].
    """

    p: np.ndarray
    pl: np.ndarray
    n: np.ndarray
    nl: np.ndarray
    pid: np.ndarray
    color: np.ndarray
    color2: np.ndarray
    params: np.ndarray
    half: np.ndarray
    tex: np.ndarray


@dataclass
class Shade:
    """Shader output for M pixels: albedo [M, 3], emission [M, 3], gloss [M]."""

    albedo: np.ndarray
    emission: np.ndarray
    gloss: np.ndarray


def _smoothstep(a: float, b: float, x: np.ndarray) -> np.ndarray:
    t = np.clip((x - a) / (b - a), 0.0, 1.0)
    return t * t * (3 - 2 * t)


# --------------------------------------------------------------------------------------
# materials on primitives


def _sidewalk(s: Surface, sel: np.ndarray, out: Shade) -> None:
    p = np.take(s.p, sel, axis=0)
    tile = s.params[sel, 0]
    tex = s.tex[sel]
    u = p[:, 0] / tile
    v = p[:, 2] / tile
    cell = hash01(np.floor(u), np.floor(v))
    grout = ((u % 1.0) < 0.07) | ((v % 1.0) < 0.07)
    top = s.nl[sel, 1] > 0.5
    shade = (0.88 + 0.16 * cell) * (0.8 + 0.35 * noise(FINE, p[:, 0] * 30 + tex, p[:, 2] * 30))
    shade *= 0.85 + 0.3 * noise(SMOOTH, p[:, 0] * 2 + tex, p[:, 2] * 2)
    shade = np.where(grout & top, shade * 0.72, shade)
    # The curb's vertical face is granite: lighter and less regular.
    shade = np.where(top, shade, 1.12 * (0.85 + 0.3 * noise(FINE, p[:, 2] * 40, p[:, 1] * 40)))
    put_rows(out.albedo, sel, np.take(s.color, sel, axis=0) * shade[:, None])


def _facade_uv(s: Surface, sel: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Horizontal coordinate along the face and height above the ground (meters)."""
    nl = np.take(s.nl, sel, axis=0)
    pl = np.take(s.pl, sel, axis=0)
    u = np.where(np.abs(nl[:, 0]) > 0.5, pl[:, 2], pl[:, 0])
    return u + s.half[sel, 0] + s.half[sel, 2], s.p[sel, 1]


def _building(s: Surface, sel: np.ndarray, out: Shade) -> None:
    floor_h, spacing, win_w, style = (s.params[sel, i] for i in range(4))
    tex = s.tex[sel]
    u, v = _facade_uv(s, sel)
    roof = s.nl[sel, 1] > 0.5
    base = np.take(s.color, sel, axis=0)
    weather = 0.8 + 0.35 * noise(SMOOTH, u * 1.5 + tex, v * 1.5)
    streak = 0.92 + 0.1 * noise(MEDIUM, u * 12 + tex * 3, v * 0.6)
    grain = 0.9 + 0.2 * noise(FINE, u * 20 + tex, v * 20)
    brick = style == 1
    grain = np.where(brick, 0.75 + 0.5 * noise(FINE, u * 35, v * 60), grain)
    shade = weather * streak * grain
    row = np.floor(v / floor_h)
    col = np.floor(u / spacing)
    fu = (u / spacing) % 1.0
    fv = (v / floor_h) % 1.0
    glassy = style == 3
    w = np.where(glassy, 0.88, win_w)
    hgt = np.where(glassy, 0.8, 0.45 + 0.2 * hash01(np.floor(tex)))
    ground = row < 1
    shop = ground & (hash01(col, np.floor(tex) + 7) < 0.6)
    w = np.where(shop, 0.8, w)
    lo = np.where(shop, 0.12, 0.32)
    hi = np.where(shop, 0.85, lo + hgt)
    in_x = np.abs(fu - 0.5) < w / 2
    in_y = (fv > lo) & (fv < hi)
    window = in_x & in_y & (v > 0.4) & ~(ground & ~shop & (hash01(col, tex) < 0.3))
    frame = (np.abs(fu - 0.5) < w / 2 + 0.05) & (fv > lo - 0.04) & (fv < hi + 0.04) & ~window
    panel_line = (style == 2) & ((fu < 0.03) | (fv < 0.03))
    cell = hash01(col, row, np.floor(tex))
    glass = np.take(s.color2, sel, axis=0) * (0.45 + 1.1 * cell)[:, None]
    lit = cell > 0.93
    glass = np.where(lit[:, None], glass + np.array([0.25, 0.18, 0.08], np.float32), glass)
    albedo = base * shade[:, None]
    albedo = np.where(frame[:, None], np.minimum(base * 1.3 + 0.05, 0.9), albedo)
    albedo = np.where(panel_line[:, None], albedo * 0.6, albedo)
    albedo = np.where((window & ~roof)[:, None], glass, albedo)
    plinth = (v < 0.6) & ~roof
    albedo = np.where(plinth[:, None], albedo * 0.65, albedo)
    roof_col = np.float32(0.08) * (0.7 + 0.6 * noise(MEDIUM, s.p[sel, 0] * 2, s.p[sel, 2] * 2))
    albedo = np.where(roof[:, None], roof_col[:, None] * np.ones(3, np.float32), albedo)
    put_rows(out.albedo, sel, albedo)
    out.gloss[sel] = np.where(window & ~roof, 0.35, 0.0)


def _roof(s: Surface, sel: np.ndarray, out: Shade) -> None:
    pl = np.take(s.pl, sel, axis=0)
    tiles = 0.8 + 0.25 * ((pl[:, 0] * 4 + pl[:, 1] * 4) % 1.0 < 0.8)
    shade = tiles * (0.8 + 0.4 * noise(MEDIUM, pl[:, 2] * 8 + s.tex[sel], pl[:, 1] * 8))
    put_rows(out.albedo, sel, np.take(s.color, sel, axis=0) * shade[:, None])


def _wall(s: Surface, sel: np.ndarray, out: Shade) -> None:
    block, style = s.params[sel, 0], s.params[sel, 1]
    u, v = _facade_uv(s, sel)
    tex = s.tex[sel]
    shade = (0.8 + 0.35 * noise(MEDIUM, u * 6 + tex, v * 6)) * (
        0.9 + 0.2 * noise(FINE, u * 30, v * 30)
    )
    row = np.floor(v / block)
    off = np.where(row % 2 == 0, 0.0, 0.5)
    bu = u / (2 * block) + off
    joint = ((bu % 1.0) < 0.05) | ((v / block) % 1.0 < 0.08)
    cell = hash01(np.floor(bu), row, np.floor(tex))
    stone = style == 1
    shade = np.where(stone, shade * (0.85 + 0.3 * cell) * np.where(joint, 0.7, 1.0), shade)
    top = s.nl[sel, 1] > 0.5
    shade = np.where(top, shade * 1.2, shade)
    put_rows(out.albedo, sel, np.take(s.color, sel, axis=0) * shade[:, None])


def _fence(s: Surface, sel: np.ndarray, out: Shade) -> None:
    u, v = _facade_uv(s, sel)
    plank = 0.85 + 0.3 * hash01(np.floor(u / 0.14), np.floor(s.tex[sel]))
    shade = plank * (0.85 + 0.3 * noise(FINE, u * 20, v * 5))
    put_rows(out.albedo, sel, np.take(s.color, sel, axis=0) * shade[:, None])


def _metal(s: Surface, sel: np.ndarray, out: Shade) -> None:
    p = np.take(s.p, sel, axis=0)
    shade = 0.85 + 0.3 * noise(FINE, (p[:, 0] + p[:, 2]) * 15, p[:, 1] * 4)
    put_rows(out.albedo, sel, np.take(s.color, sel, axis=0) * shade[:, None])
    out.gloss[sel] = 0.08


def _traffic_light(s: Surface, sel: np.ndarray, out: Shade) -> None:
    pl, nl = np.take(s.pl, sel, axis=0), np.take(s.nl, sel, axis=0)
    state = s.params[sel, 0].astype(np.int64)
    half = np.take(s.half, sel, axis=0)
    albedo = np.take(s.color, sel, axis=0).copy()
    emission = np.zeros_like(albedo)
    front = nl[:, 2] < -0.5
    for i, lamp in enumerate(pal.LAMP):
        cy = half[:, 1] * (0.62 - 0.62 * i)
        r = np.hypot(pl[:, 0] / half[:, 0], (pl[:, 1] - cy) / half[:, 0])
        disc = front & (r < 0.72)
        on = disc & (state == i)
        albedo[disc] = 0.02
        emission[on] = (lamp * 2.5).astype(np.float32)
        ring = front & (r >= 0.72) & (r < 0.95)
        albedo[ring] *= 0.5
    put_rows(out.albedo, sel, albedo)
    put_rows(out.emission, sel, emission)


def _sign(s: Surface, sel: np.ndarray, out: Shade) -> None:
    pl, nl = np.take(s.pl, sel, axis=0), np.take(s.nl, sel, axis=0)
    kind = s.params[sel, 0].astype(np.int64)
    half = np.take(s.half, sel, axis=0)
    qx, qy = pl[:, 0] / half[:, 0], pl[:, 1] / half[:, 1]
    rr = np.hypot(qx, qy)
    rb = np.maximum(np.abs(qx), np.abs(qy))
    ring = np.where(np.isin(kind, (0, 1, 6)), rr, rb)
    face = np.take(s.color, sel, axis=0)
    white = pal.srgb(235, 235, 235).astype(np.float32)
    dark = pal.srgb(25, 25, 25).astype(np.float32)
    albedo = face.copy()
    k0 = kind == 0
    albedo[k0 & (ring < 0.72)] = white
    albedo[k0 & (ring < 0.5) & (np.abs(qy) < 0.14)] = dark
    k1 = (kind == 1) & (np.abs(qx) < 0.14) & (np.abs(qy) < 0.6)
    albedo[k1] = white
    k2 = kind == 2
    albedo[k2 & (ring < 0.7)] = white
    albedo[k2 & (ring < 0.3)] = dark
    k3 = (kind == 3) & (ring < 0.45)
    albedo[k3] = white
    albedo[(kind == 4) & (ring > 0.8)] = white
    albedo[(kind == 5) & (ring > 0.88)] = white
    albedo[(kind == 6) & (np.abs(qy) < 0.16) & (np.abs(qx) < 0.65)] = white
    back = nl[:, 2] > -0.5
    albedo[back] = pal.srgb(120, 122, 125).astype(np.float32)
    put_rows(out.albedo, sel, albedo)
    out.gloss[sel] = np.where(back, 0.05, 0.12)


def _foliage(s: Surface, sel: np.ndarray, out: Shade) -> None:
    p = np.take(s.p, sel, axis=0)
    tex = s.tex[sel]
    clumps = noise(MEDIUM, (p[:, 0] + p[:, 2] * 0.8) * 5 + tex, p[:, 1] * 5 + tex)
    leaves = noise(FINE, (p[:, 0] - p[:, 2] * 0.7) * 25 + tex, p[:, 1] * 25)
    shade = (0.35 + 0.9 * clumps) * (0.7 + 0.55 * leaves)
    # Leaves under the crown's upper shell see less sky.
    shade *= 0.75 + 0.25 * s.nl[sel, 1]
    hue = np.stack([0.9 + 0.3 * leaves, np.ones_like(leaves), 0.9 + 0.2 * clumps], 1)
    put_rows(out.albedo, sel, np.take(s.color, sel, axis=0) * shade[:, None] * hue)


def _bark(s: Surface, sel: np.ndarray, out: Shade) -> None:
    p = np.take(s.p, sel, axis=0)
    shade = 0.65 + 0.55 * noise(FINE, (p[:, 0] + p[:, 2]) * 30 + s.tex[sel], p[:, 1] * 5)
    put_rows(out.albedo, sel, np.take(s.color, sel, axis=0) * shade[:, None])


def _grass(s: Surface, sel: np.ndarray, out: Shade) -> None:
    p = np.take(s.p, sel, axis=0)
    tex = s.tex[sel]
    shade = (0.7 + 0.5 * noise(MEDIUM, p[:, 0] * 3 + tex, p[:, 2] * 3)) * (
        0.8 + 0.4 * noise(FINE, p[:, 0] * 30, p[:, 2] * 30)
    )
    side = s.nl[sel, 1] < 0.5
    albedo = np.take(s.color, sel, axis=0) * shade[:, None]
    albedo[side] = albedo[side] * np.array([1.1, 0.8, 0.7], np.float32)
    put_rows(out.albedo, sel, albedo)


def _skin(s: Surface, sel: np.ndarray, out: Shade) -> None:
    put_rows(out.albedo, sel, np.take(s.color, sel, axis=0))


def _cloth(s: Surface, sel: np.ndarray, out: Shade) -> None:
    p = np.take(s.p, sel, axis=0)
    shade = 0.85 + 0.25 * noise(MEDIUM, (p[:, 0] + p[:, 2]) * 20, p[:, 1] * 20)
    put_rows(out.albedo, sel, np.take(s.color, sel, axis=0) * shade[:, None])


def _paint(s: Surface, sel: np.ndarray, out: Shade) -> None:
    pl, nl = np.take(s.pl, sel, axis=0), np.take(s.nl, sel, axis=0)
    half = np.take(s.half, sel, axis=0)
    wlo, whi, period, flags = (s.params[sel, i] for i in range(4))
    flags = flags.astype(np.int64)
    q = pl / half
    vertical = np.abs(nl[:, 1]) < 0.6
    side = vertical & (np.abs(nl[:, 0]) >= np.abs(nl[:, 2]))
    end = vertical & ~side
    band = (q[:, 1] > wlo) & (q[:, 1] < whi)
    glass = band & ((side & ((flags & ob.SIDE_GLASS) > 0)) | (end & ((flags & ob.END_GLASS) > 0)))
    pillar = (
        side
        & (period > 0)
        & ((flags & ob.BAND) == 0)
        & (((pl[:, 2] / np.maximum(period, 0.1)) % 1.0) < 0.12)
    )
    glass &= ~pillar & ~(end & (np.abs(q[:, 0]) > 0.88))
    albedo = (
        np.take(s.color, sel, axis=0)
        * (0.93 + 0.12 * noise(MEDIUM, pl[:, 0] * 8 + s.tex[sel], pl[:, 1] * 8))[:, None]
    )
    # Lights, bumper and plate have absolute sizes: a truck's tail lights are no bigger
    # than a car's.
    y_up = pl[:, 1] + half[:, 1]  # height above the solid's bottom
    has_lights = (flags & ob.LIGHTS) > 0
    bumper = vertical & has_lights & (y_up < np.minimum(0.22, 0.5 * half[:, 1]))
    albedo[bumper] *= 0.35
    albedo[glass] = np.take(s.color2, sel, axis=0)[glass]
    emission = np.zeros_like(albedo)
    low = np.minimum(0.35, half[:, 1])
    lights = end & has_lights & (np.abs(pl[:, 0]) > half[:, 0] - 0.32) & (y_up > low)
    lights &= y_up < low + 0.2
    front = nl[:, 2] > 0
    head = lights & front
    tail = lights & ~front
    albedo[head] = pal.srgb(220, 220, 210).astype(np.float32)
    albedo[tail] = pal.srgb(150, 20, 20).astype(np.float32)
    emission[tail] = np.array([0.25, 0.01, 0.01], np.float32)
    plate = end & has_lights & (np.abs(pl[:, 0]) < 0.26) & (y_up > 0.1) & (y_up < 0.3)
    albedo[plate] = pal.srgb(215, 215, 205).astype(np.float32)
    put_rows(out.albedo, sel, albedo)
    put_rows(out.emission, sel, emission)
    out.gloss[sel] = np.where(glass, 0.3, 0.07)


def _tyre(s: Surface, sel: np.ndarray, out: Shade) -> None:
    pl, nl = np.take(s.pl, sel, axis=0), np.take(s.nl, sel, axis=0)
    half = np.take(s.half, sel, axis=0)
    cap = np.abs(nl[:, 1]) > 0.5
    r = np.hypot(pl[:, 0] / half[:, 0], pl[:, 2] / half[:, 2])
    rim = cap & (r < 0.6)
    albedo = np.take(s.color, sel, axis=0).copy()
    albedo[rim] = np.take(s.color2, sel, axis=0)[rim]
    put_rows(out.albedo, sel, albedo)


SHADERS = {
    pal.M_SIDEWALK: _sidewalk,
    pal.M_BUILDING: _building,
    pal.M_ROOF: _roof,
    pal.M_WALL: _wall,
    pal.M_FENCE: _fence,
    pal.M_METAL: _metal,
    pal.M_TLIGHT: _traffic_light,
    pal.M_SIGN: _sign,
    pal.M_FOLIAGE: _foliage,
    pal.M_BARK: _bark,
    pal.M_GRASS: _grass,
    pal.M_SKIN: _skin,
    pal.M_CLOTH: _cloth,
    pal.M_PAINT: _paint,
    pal.M_TYRE: _tyre,
}


# --------------------------------------------------------------------------------------
# the ground plane


def ground_labels(g: Ground, p: np.ndarray) -> np.ndarray:
    """trainIds [M] of ground points ``p`` [M, 3]: road on the carriageway and the
    cross streets, terrain elsewhere."""
    x, z = p[:, 0], p[:, 2]
    road = (x >= g.road_l) & (x <= g.road_r)
    for a, b in g.crossings:
        road |= (z >= a) & (z <= b)
    return np.where(road, ob.ROAD, ob.TERRAIN).astype(np.uint8)


def shade_ground(g: Ground, p: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Albedo [M, 3] of ground points: asphalt with markings, or grass and dirt."""
    x, z = p[:, 0], p[:, 2]
    tex = g.tex
    blotch = noise(MEDIUM, x * 2.5 + tex, z * 2.5)
    grain = noise(FINE, x * 28 + tex, z * 28)
    patch = noise(SMOOTH, x * 0.5 + tex, z * 0.35)
    shade = (0.8 + 0.35 * blotch) * (0.82 + 0.36 * grain)
    shade = np.where(patch > 0.75, shade * 0.78, np.where(patch < 0.15, shade * 1.12, shade))
    albedo = g.asphalt.astype(np.float32)[None, :] * shade[:, None]
    on_main = (x >= g.road_l) & (x <= g.road_r)
    in_cross = np.zeros_like(on_main)
    for a, b in g.crossings:
        in_cross |= (z >= a) & (z <= b)
    paint = np.zeros(len(x), dtype=bool)
    yellow = np.zeros(len(x), dtype=bool)
    period, duty, phase = g.dash
    for xl, kind in g.lane_lines:
        d = np.abs(x - xl)
        if kind == 0:
            m = (d < 0.075) & (((z + phase) / period) % 1.0 < duty)
        elif kind == 1:
            m = d < 0.08
        else:
            m = np.abs(d - 0.12) < 0.055
            yellow |= m & ~in_cross
        paint |= m & ~in_cross
    for a, b in g.crosswalks:
        paint |= on_main & (z >= a) & (z <= b) & (((x - g.road_l) / 1.0) % 1.0 < 0.5)
    for zs in g.stop_lines:
        paint |= on_main & (z >= zs) & (z <= zs + 0.4) & (x > g.own_left)
    worn = 0.55 + 0.45 * noise(MEDIUM, x * 6 + 40, z * 6)
    white = np.float32(0.62) * worn
    albedo = np.where(paint[:, None], white[:, None] * np.ones(3, np.float32), albedo)
    albedo = np.where(
        yellow[:, None], (white[:, None] * np.array([1.0, 0.75, 0.15], np.float32)), albedo
    )
    for xr in g.rails:
        for off in (-0.75, 0.75):
            d = np.abs(x - xr - off)
            albedo = np.where((d < 0.045)[:, None], np.float32(0.32), albedo)
            albedo = np.where(((d >= 0.045) & (d < 0.09))[:, None], albedo * 0.45, albedo)
    terrain = labels == ob.TERRAIN
    if terrain.any():
        xt, zt = x[terrain], z[terrain]
        mix = _smoothstep(0.35, 0.65, noise(SMOOTH, xt * 0.4 + tex, zt * 0.4))
        col = (
            g.grass.astype(np.float32) * (1 - mix)[:, None]
            + g.dirt.astype(np.float32) * mix[:, None]
        )
        tshade = (0.7 + 0.5 * noise(MEDIUM, xt * 3, zt * 3)) * (
            0.8 + 0.4 * noise(FINE, xt * 30, zt * 30)
        )
        albedo[terrain] = col * tshade[:, None]
    return albedo.astype(np.float32, copy=False)


# --------------------------------------------------------------------------------------
# sky, light, camera


def sky(light: Light, dirs: np.ndarray, tex: float) -> np.ndarray:
    """Sky radiance [M, 3] for unit ray directions [M, 3]."""
    up = np.clip(dirs[:, 1], 0.0, 1.0)
    t = np.clip(up * 3.0, 0.0, 1.0) ** 0.7
    col = light.horizon_rgb[None, :] * (1 - t)[:, None] + light.zenith_rgb[None, :] * t[:, None]
    cosang = dirs @ light.sun
    col = (
        col
        + light.sun_rgb[None, :]
        * (0.04 * np.exp((cosang - 1) * 300) + 0.04 * np.exp((cosang - 1) * 6))[:, None]
    )
    if light.clouds > 0:
        h = np.maximum(up, 0.02)
        u, v = dirs[:, 0] / h * 30 + tex, dirs[:, 2] / h * 30
        n = noise(SMOOTH, u, v)
        cover = _smoothstep(1.0 - light.clouds - 0.15, 1.0 - light.clouds + 0.15, n)
        cover *= _smoothstep(0.0, 0.12, up)
        detail = 0.75 + 0.4 * noise(MEDIUM, u * 3, v * 3)
        col = (
            col * (1 - cover)[:, None]
            + (light.cloud_rgb[None, :] * detail[:, None]) * cover[:, None]
        )
    return col.astype(np.float32)


def illuminate(
    light: Light,
    shade: Shade,
    n: np.ndarray,
    shadow: np.ndarray,
    view: np.ndarray,
    occlusion: np.ndarray | None = None,
) -> np.ndarray:
    """Radiance [M, 3] of surface points: Lambert sun (times 1 - ``shadow`` [M]), hemispherical
    sky ambient (times ``occlusion`` [M], 1 = open sky), a little sky reflection on glossy
    surfaces, and emission."""
    # [M, 3] steps in place: the operations and operand order of
    # albedo * (sun * ndotl + ambient * occlusion + 0.12 * sun * (0.5 - 0.5 n_y) * 0.3)
    # + emission, without a new [M, 3] array per step
    sun_rgb = light.sun_rgb.astype(np.float32)[None, :]
    ndotl = np.clip(n @ light.sun.astype(np.float32), 0.0, None) * (1.0 - shadow)
    ambient = light.ambient_rgb.astype(np.float32)[None, :] * (0.55 + 0.45 * n[:, 1:2])
    if occlusion is not None:
        ambient *= occlusion[:, None]
    bounce = np.float32(0.12) * sun_rgb * (0.5 - 0.5 * n[:, 1:2])
    bounce *= 0.3
    out = sun_rgb * ndotl[:, None]
    out += ambient
    out += bounce
    out *= shade.albedo
    out += shade.emission
    g = np.flatnonzero(shade.gloss > 0)
    if len(g):
        # Mirror direction's sky colour, a Fresnel-ish boost at grazing angles.
        vg, ng = np.take(view, g, axis=0), np.take(n, g, axis=0)
        cos = sum3(vg * ng)[:, None]
        r = vg - 2 * cos * ng
        fres = shade.gloss[g] * (0.4 + 0.6 * (1 - np.abs(cos[:, 0])) ** 3)
        refl = sky(light, r / np.maximum(norm3(r)[:, None], 1e-6), 0.0)
        out[g] += refl * fres[:, None]
    return out.astype(np.float32, copy=False)


def contact_occlusion(p: np.ndarray, footprints: np.ndarray) -> np.ndarray:
    """Sky visibility [M] of ground points ``p`` [M, 3] near vehicles: the ground under
    and right beside a car sees little sky, which grounds it even without sun shadows.

    ``footprints``: [F, 4] rows (x, z, half_x, half_z) of axis-aligned ground footprints.
    """
    occ = np.ones(len(p), np.float32)
    x, z = p[:, 0], p[:, 2]
    for cx, cz, a, b in footprints.tolist():
        near = np.flatnonzero((np.abs(x - cx) < a + 1.2) & (np.abs(z - cz) < b + 1.2))
        if not len(near):
            continue
        # Distance outside the footprint's box, in meters (0 underneath).
        dx = np.maximum(np.abs(x[near] - cx) - a, 0.0)
        dz = np.maximum(np.abs(z[near] - cz) - b, 0.0)
        d = np.sqrt(dx * dx + dz * dz)
        occ[near] *= 1.0 - 0.7 * np.exp(-3.0 * d)
    return occ


def haze(light: Light, radiance: np.ndarray, dist: np.ndarray) -> np.ndarray:
    """Blend towards the horizon colour with distance (Beer-Lambert transmittance)."""
    trans = np.exp(-np.minimum(dist, 1e4) / light.visibility)[:, None]
    # radiance * trans + horizon * (1 - trans), the terms as before, in place
    out = radiance * trans
    out += light.horizon_rgb.astype(np.float32)[None, :] * (1 - trans)
    return out


def camera_response(post: Post, radiance: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Linear radiance [H, W, 3] -> uint8 sRGB [H, W, 3]: auto exposure on the log-mean
    luminance, white balance, a filmic shoulder, contrast, blur, vignette, noise."""
    lum = radiance @ np.array([0.2126, 0.7152, 0.0722], np.float32)
    gain = post.key / np.exp(np.mean(np.log(lum + 1e-3)))
    # The steps below work in place on one [H, W, 3] buffer: the same operations on the
    # same operands in the same order as the plain expressions they replace (noted in
    # the comments; + and * are commutative in IEEE arithmetic), without a new array
    # per step. The scalars are Python floats or float32, so every step stays float32.
    x = radiance * np.float32(gain)
    x *= post.white_balance.astype(np.float32)
    # filmic shoulder: x * (1 + x / 6) / (1 + x)
    shoulder = x / 6.0
    shoulder += 1
    shoulder *= x
    x += 1
    np.divide(shoulder, x, out=x)
    np.clip(x, 0.0, 1.0, out=x)
    np.power(x, 1 / 2.2, out=x)
    # contrast: (x - 0.5) * contrast + 0.5
    x -= 0.5
    x *= np.float32(post.contrast)
    x += 0.5
    if post.blur > 0:
        pad = np.pad(x, ((1, 1), (1, 1), (0, 0)), mode="edge")
        # (up + down + left + right + 4 x) / 8, summed left to right
        box = pad[:-2, 1:-1] + pad[2:, 1:-1]
        box += pad[1:-1, :-2]
        box += pad[1:-1, 2:]
        box += 4 * x
        box /= 8
        # x * (1 - blur) + box * blur
        x *= 1 - post.blur
        box *= post.blur
        x += box
    h, w = x.shape[:2]
    yy = (np.arange(h, dtype=np.float32)[:, None] - h / 2) / (h / 2)
    xx = (np.arange(w, dtype=np.float32)[None, :] - w / 2) / (w / 2)
    x *= (1 - post.vignette * 0.5 * (xx * xx + yy * yy))[..., None]
    sigma = np.float32(post.noise)
    x += rng.standard_normal((h, w, 1), dtype=np.float32) * sigma
    x += rng.standard_normal((h, w, 3), dtype=np.float32) * (sigma * 0.5)
    x *= 255
    np.rint(x, out=x)
    np.clip(x, 0, 255, out=x)
    return x.astype(np.uint8)
