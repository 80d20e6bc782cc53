"""Tileable noise and the cut-out patterns shared by ray casting and shading.

The noise tiles are made once per process by spectral synthesis (filtered white noise
from a fixed seed, so every worker builds the same tiles); sampling is a nearest-texel
lookup with wrap-around, which is all a 128x256 render needs and costs one gather.
"""

from __future__ import annotations

from functools import cache

import numpy as np

from scenemtl.data.procedural.geometry import CUT_FOLIAGE, CUT_LATTICE
from scenemtl.data.procedural.vec3 import sum3

_TILE_BITS = 8
TILE = 1 << _TILE_BITS  # 256
SMOOTH = 0  # 1/f^2.4 spectrum: blotches, patches, clouds
MEDIUM = 1  # 1/f^1.6: weathering, foliage clumps
FINE = 2  # 1/f^0.8: grain (asphalt, bark, gravel)

_NOISE_SEED = 0x5CE7E


@cache
def noise_tiles() -> np.ndarray:
    """float32 [3, TILE, TILE] tileable noise in [0, 1], one tile per roughness."""
    rng = np.random.default_rng(_NOISE_SEED)
    f = np.fft.fftfreq(TILE)
    radius = np.sqrt(f[:, None] ** 2 + f[None, :] ** 2)
    radius[0, 0] = 1.0
    tiles = []
    for beta in (2.4, 1.6, 0.8):
        white = rng.standard_normal((TILE, TILE))
        spec = np.fft.fft2(white) / radius**beta
        spec[0, 0] = 0.0
        tile = np.real(np.fft.ifft2(spec))
        lo, hi = np.percentile(tile, [1, 99])
        tiles.append(np.clip((tile - lo) / (hi - lo), 0.0, 1.0))
    return np.stack(tiles).astype(np.float32)


def noise(kind: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Noise of tile ``kind`` at texel coordinates ``(u, v)`` (any equal shapes, float)."""
    # One flat gather at iv * TILE + iu: the same texels as ``tile[iv, iu]``, whose 2-D
    # fancy indexing costs ~1.8x more in NumPy 2.4 (~35 against ~20 us per 8000 points).
    iu = np.floor(u).astype(np.int64)
    iu &= TILE - 1
    idx = np.floor(v).astype(np.int64)
    idx &= TILE - 1
    idx <<= _TILE_BITS
    idx |= iu
    return noise_tiles()[kind].reshape(-1).take(idx)


def hash01(*keys: np.ndarray) -> np.ndarray:
    """Deterministic pseudo-random numbers in [0, 1) from integer arrays (window cells,
    tiles): a cheap integer hash, so per-cell variation needs no RNG state."""
    h = np.zeros(np.broadcast(*keys).shape, dtype=np.uint32)
    for i, k in enumerate(keys):
        h ^= (np.asarray(k).astype(np.int64) & 0xFFFFFFFF).astype(np.uint32) * np.uint32(
            (0x9E3779B1 + 0x85EBCA77 * i) & 0xFFFFFFFF
        )
        h = (h ^ (h >> np.uint32(15))) * np.uint32(0x2C1B3C6D)
        h ^= h >> np.uint32(12)
    return (h >> np.uint32(8)).astype(np.float32) / np.float32(1 << 24)


def cutout_open(
    kind: np.ndarray | int,
    p_local: np.ndarray,
    half: np.ndarray,
    params: np.ndarray,
    tex: np.ndarray | float,
) -> np.ndarray:
    """Where cut-out solids are open (the ray passes on) at local points.

    Args:
        kind: [N] or scalar CUT_* pattern per point.
        p_local: [N, 3] local hit points; ``half`` [N, 3] or [3] the solids' half sizes;
            ``params`` [N, 4] or [4] their material parameters; ``tex`` [N] or scalar.

    Returns:
        bool [N].
    """
    n = len(p_local)

    half = np.asarray(half, dtype=np.float32)
    params = np.asarray(params, dtype=np.float32)
    tex = np.asarray(tex, dtype=np.float32)

    def rows(a: np.ndarray, sel: np.ndarray, ndim: int) -> np.ndarray:
        # Rows ``sel`` of a per-point array, or one row (``ndim`` dimensions) repeated:
        # the same numbers as ``np.broadcast_to(a, (n, ...))[sel]``, without NumPy's slow
        # fancy indexing of broadcast and 2-D arrays (~20 us per 8000 rows against ~3-5).
        if a.ndim == ndim:
            return np.broadcast_to(a, (len(sel), *a.shape))
        return a if len(sel) == n else np.take(a, sel, axis=0)

    kind = np.asarray(kind)
    out = np.zeros(n, dtype=bool)

    def where_kind(value: int) -> np.ndarray:
        if kind.ndim == 0:
            return np.arange(n) if kind == value else np.zeros(0, np.intp)
        return np.flatnonzero(kind == value)

    lat = where_kind(CUT_LATTICE)
    if len(lat):
        # A mesh or bar fence in the local x-y plane: bars every `spacing` meters of
        # fractional width `bar`, solid posts every `post` meters, top and bottom rails.
        prm, h, p = rows(params, lat, 1), rows(half, lat, 1), rows(p_local, lat, 1)
        spacing, bar, post = prm[:, 0], prm[:, 1], prm[:, 2]
        x = p[:, 0] + h[:, 0]
        y = p[:, 1] + h[:, 1]
        hole = ((x / spacing) % 1.0 > bar) & ((y / (spacing * 1.5)) % 1.0 > bar * 0.6)
        rail = (y < 0.12) | (y > 2 * h[:, 1] - 0.08)
        posts = (x % post) < 0.1
        out[lat] = hole & ~rail & ~posts
    fol = where_kind(CUT_FOLIAGE)
    if len(fol):
        # Gaps between leaf clumps, denser towards the silhouette.
        h, t = rows(half, fol, 1), rows(tex, fol, 0)
        q = rows(p_local, fol, 1) / h
        u = (q[:, 0] * 1.3 + q[:, 2] * 0.9) * h[:, 0] * 9.0 + t
        v = q[:, 1] * h[:, 1] * 9.0 + t * 0.7
        rim = sum3(q * q)
        out[fol] = noise(MEDIUM, u, v) > (0.78 - 0.25 * rim)
    return out
