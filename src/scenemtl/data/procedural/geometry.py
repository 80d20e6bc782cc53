"""Convex primitives of the procedural street scenes.

World frame: x to the right of the street, y up, z along the street (away from the
camera); the ground is the plane ``y = 0`` and lengths are meters.

Every primitive is a convex solid given in its own local frame, centred on ``center``
and turned by ``rotation`` (3x3, local -> world columns). Its shape is the intersection
of simple convex pieces, which keeps ray casting a matter of intersecting intervals:

* ``BOX``: ``|x| <= hx, |y| <= hy, |z| <= hz`` (``half = (hx, hy, hz)``);
* ``CYLINDER``: axis along local y, elliptic cross-section with radii ``hx, hz``,
  capped at ``|y| <= hy``;
* ``ELLIPSOID``: semi-axes ``half``;
* ``ROUNDED_BOX``: the box intersected with an ellipsoid of semi-axes
  ``half * round_scale``, which softens edges and corners (car bodies, buses).

The box of half-extents ``half`` always bounds the solid, which is what screen-space
culling projects.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

BOX = 0
CYLINDER = 1
ELLIPSOID = 2
ROUNDED_BOX = 3

# Cut-out patterns: a hit where the pattern is "open" is ignored, so the ray goes on
# to whatever is behind (fence lattices, gaps in foliage).
CUT_NONE = 0
CUT_LATTICE = 1
CUT_FOLIAGE = 2

IDENTITY = np.eye(3)


def rot_x(angle: float) -> np.ndarray:
    """Rotation about the x axis (positive: y towards z)."""
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])


def rot_y(angle: float) -> np.ndarray:
    """Rotation about the vertical axis (positive: z towards x, i.e. a right turn)."""
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def rot_z(angle: float) -> np.ndarray:
    """Rotation about the z axis (positive: x towards y)."""
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


@dataclass
class Prim:
    """One convex solid with its label and appearance.

    Attributes:
        shape: BOX, CYLINDER, ELLIPSOID or ROUNDED_BOX.
        center: (3,) world position of the local origin.
        half: (3,) half-extents of the local bounding box.
        rotation: (3, 3) local -> world rotation.
        label: Cityscapes trainId of every pixel the solid covers.
        material: key of the shader in :mod:`shading`.
        color: (3,) linear RGB albedo in [0, 1].
        color2: (3,) secondary albedo (window glass, stripes, ...).
        params: four material-specific numbers.
        tex: offset into the noise tiles, so instances do not share a texture.
        cutout: CUT_NONE, CUT_LATTICE or CUT_FOLIAGE.
        round_scale: ellipsoid semi-axes of a ROUNDED_BOX relative to ``half`` (one
            number or one per axis; a large value leaves that axis's edges square).
        shadow: whether the solid casts a sun shadow.
        part: human part of the solid's pixels (:mod:`.parts`; 0 = none), for the
            optional ``human_parts`` layer; nothing else reads it.
        part_below: the part of its half with local y < 0, or -1 (the same as ``part``).
    """

    shape: int
    center: np.ndarray
    half: np.ndarray
    label: int
    material: int
    color: np.ndarray
    rotation: np.ndarray = field(default_factory=lambda: IDENTITY)
    color2: np.ndarray = field(default_factory=lambda: np.zeros(3))
    params: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)
    tex: float = 0.0
    cutout: int = CUT_NONE
    round_scale: float | tuple[float, float, float] = 1.3
    shadow: bool = True
    part: int = 0
    part_below: int = -1

    @property
    def axis_aligned(self) -> bool:
        return self.rotation is IDENTITY

    def corners(self) -> np.ndarray:
        """(8, 3) world corners of the local bounding box."""
        return self.center + (_SIGNS * self.half) @ self.rotation.T


_SIGNS = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)], dtype=float)


def make(
    shape: int,
    center: tuple[float, float, float] | np.ndarray,
    half: tuple[float, float, float] | np.ndarray,
    label: int,
    material: int,
    color: np.ndarray | tuple[float, float, float],
    rotation: np.ndarray | None = None,
    **kw: object,
) -> Prim:
    """A :class:`Prim` from plain tuples (the layout code reads better with this)."""
    return Prim(
        shape=shape,
        center=np.asarray(center, dtype=float),
        half=np.asarray(half, dtype=float),
        label=label,
        material=material,
        color=np.asarray(color, dtype=float),
        rotation=IDENTITY if rotation is None else rotation,
        **kw,  # type: ignore[arg-type]
    )
