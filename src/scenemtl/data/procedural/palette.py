"""Materials and colour palettes.

Palettes are sRGB anchors; instances jitter around them, and the palettes of different
classes deliberately overlap (grey cars on grey asphalt, white vans against white
facades, green-brown terrain beside green-brown foliage) so that colour alone cannot
label a pixel.
"""

from __future__ import annotations

from functools import cache

import numpy as np

# Shader keys (see shading.py).
M_SIDEWALK = 1
M_BUILDING = 2
M_WALL = 3
M_FENCE = 4
M_METAL = 5
M_TLIGHT = 6
M_SIGN = 7
M_FOLIAGE = 8
M_BARK = 9
M_GRASS = 10
M_SKIN = 11
M_CLOTH = 12
M_PAINT = 13
M_TYRE = 14
M_ROOF = 15


def srgb(r: float, g: float, b: float) -> np.ndarray:
    """sRGB 0-255 -> linear albedo (a new array: callers may change it)."""
    return _srgb(r, g, b).copy()


@cache
def _srgb(r: float, g: float, b: float) -> np.ndarray:
    # the layout asks for the same few constant colours ~150 times per image
    return (np.array([r, g, b], dtype=float) / 255.0) ** 2.2


def _p(*rows: tuple[int, int, int]) -> np.ndarray:
    return np.stack([srgb(*r) for r in rows])


CAR = _p(
    (235, 235, 235),
    (30, 30, 32),
    (120, 122, 125),
    (175, 178, 182),
    (150, 25, 25),
    (20, 45, 110),
    (60, 70, 80),
    (90, 100, 110),
    (200, 200, 195),
    (110, 20, 30),
    (30, 70, 45),
    (190, 160, 60),
    (140, 140, 140),
    (70, 60, 55),
)
TRUCK = _p(
    (240, 240, 238),
    (200, 200, 200),
    (180, 30, 25),
    (40, 60, 120),
    (230, 200, 40),
    (110, 110, 110),
    (60, 90, 60),
    (160, 160, 150),
)
BUS = _p(
    (230, 230, 225), (200, 40, 35), (240, 200, 40), (30, 80, 160), (60, 140, 90), (120, 120, 125)
)
TRAM = _p(
    (235, 235, 230), (210, 50, 45), (30, 70, 150), (240, 200, 50), (80, 150, 90), (150, 150, 155)
)
BUILDING = _p(
    (205, 190, 165),
    (222, 218, 208),
    (150, 150, 148),
    (105, 105, 110),
    (155, 85, 65),
    (212, 182, 115),
    (200, 155, 140),
    (160, 178, 188),
    (125, 98, 78),
    (150, 160, 130),
    (180, 175, 170),
    (90, 85, 80),
)
ROOF = _p((130, 60, 45), (90, 55, 45), (70, 70, 75), (110, 110, 115), (150, 85, 60))
GLASS = _p((40, 55, 70), (60, 75, 80), (35, 40, 45), (70, 80, 95), (55, 60, 50), (90, 105, 120))
WALL = _p(
    (170, 165, 155),
    (140, 135, 125),
    (190, 185, 170),
    (150, 90, 70),
    (110, 110, 105),
    (205, 200, 190),
    (120, 125, 115),
)
FENCE = _p(
    (40, 60, 45),
    (60, 60, 62),
    (25, 25, 25),
    (130, 95, 60),
    (160, 160, 160),
    (200, 200, 200),
    (95, 70, 50),
)
METAL = _p((110, 112, 115), (70, 72, 75), (40, 55, 45), (30, 30, 32), (150, 150, 150), (90, 95, 85))
FOLIAGE = _p(
    (60, 95, 40),
    (45, 75, 35),
    (85, 115, 50),
    (100, 120, 55),
    (50, 80, 60),
    (120, 120, 60),
    (75, 90, 45),
    (140, 110, 60),
    (35, 60, 35),
)
BARK = _p((80, 65, 55), (95, 90, 80), (60, 50, 45), (110, 100, 85))
GRASS = _p(
    (90, 120, 50),
    (110, 130, 60),
    (70, 100, 45),
    (130, 125, 75),
    (120, 100, 70),
    (100, 95, 80),
    (140, 140, 90),
)
SIDEWALK = _p(
    (150, 148, 145),
    (170, 165, 155),
    (130, 128, 130),
    (175, 150, 140),
    (120, 120, 115),
    (185, 180, 170),
    (160, 140, 120),
)
ASPHALT = _p((90, 90, 92), (75, 76, 80), (105, 104, 102), (65, 66, 68), (115, 112, 110))
SKIN = _p((235, 195, 165), (200, 150, 115), (150, 100, 70), (95, 65, 45), (225, 180, 150))
HAIR = _p((30, 25, 20), (80, 55, 35), (150, 120, 80), (190, 170, 130), (100, 100, 100))
CLOTH = _p(
    (25, 25, 30),
    (45, 55, 90),
    (120, 120, 125),
    (200, 200, 200),
    (150, 30, 35),
    (60, 90, 60),
    (170, 140, 100),
    (90, 60, 45),
    (230, 200, 60),
    (80, 40, 90),
    (40, 40, 40),
    (100, 130, 170),
    (210, 120, 60),
)
SIGN_FACE = _p((200, 30, 35), (30, 70, 170), (235, 235, 235), (240, 200, 40), (30, 120, 60))
LAMP = _p((255, 40, 30), (255, 190, 30), (60, 255, 120))


def pick(rng: np.random.Generator, palette: np.ndarray, jitter: float = 0.08) -> np.ndarray:
    """One palette colour with per-channel and brightness jitter (linear albedo)."""
    base = palette[rng.integers(len(palette))]
    g = rng.normal(0.0, jitter, 4)
    gain = np.exp(g[:3] + 1.5 * g[3])
    return np.minimum(np.maximum(base * gain, 0.003), 0.95)
