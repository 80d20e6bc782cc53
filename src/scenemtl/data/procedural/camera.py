"""A pinhole camera riding in a road lane.

Camera frame: x right, y down, z forward (OpenCV); world frame: see :mod:`geometry`.
Depth is the z-depth along the optical axis, as a stereo rig measures it, not the
distance along the ray.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache

import numpy as np

from scenemtl.data.procedural.geometry import rot_x, rot_y, rot_z

# Cityscapes: fx ~ 2262 px at 2048 px width, i.e. a horizontal field of view ~ 48.7 deg.
CITYSCAPES_FX_PER_WIDTH = 2262.0 / 2048.0

# Camera axes expressed in world axes before any jitter: x -> x, y(down) -> -y, z -> z.
_BASE = np.array([[1.0, 0.0, 0.0], [0.0, -1.0, 0.0], [0.0, 0.0, 1.0]])

NEAR = 0.05
"""Hits closer than this to the camera centre are ignored (meters along the ray)."""


@dataclass(frozen=True)
class Camera:
    """Intrinsics for an ``height x width`` image plus the pose in the world.

    ``rotation`` maps camera-frame vectors to world vectors (its columns are the camera
    axes in world coordinates); ``position`` is the optical centre in world meters.
    """

    height: int
    width: int
    fx: float
    fy: float
    cx: float
    cy: float
    position: np.ndarray
    rotation: np.ndarray

    def rays(self) -> tuple[np.ndarray, np.ndarray]:
        """Unit world ray directions through the pixel centres.

        Returns:
            dirs: float32 [H, W, 3] unit vectors in world coordinates.
            zfac: float32 [H, W]; z-depth = ray distance * zfac.
        """
        u = (np.arange(self.width, dtype=np.float64) + 0.5 - self.cx) / self.fx
        v = (np.arange(self.height, dtype=np.float64) + 0.5 - self.cy) / self.fy
        d = np.empty((self.height, self.width, 3))
        d[..., 0] = u[None, :]
        d[..., 1] = v[:, None]
        d[..., 2] = 1.0
        # |(u, v, 1)| with the sum in the order of np.linalg.norm(d, axis=-1), (u^2 + v^2)
        # + 1, so the same bits, without its ~20x slower reduction over a length-3 axis
        norm = np.sqrt((u * u)[None, :] + (v * v)[:, None] + 1.0)
        d /= norm[..., None]
        world = d @ self.rotation.T
        return world.astype(np.float32), (1.0 / norm).astype(np.float32)

    def to_camera(self, points: np.ndarray) -> np.ndarray:
        """World points [N, 3] -> camera-frame points [N, 3]."""
        return (np.asarray(points) - self.position) @ self.rotation

    def project(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """World points [N, 3] -> (pixel coordinates [N, 2] as (u, v), z-depth [N]).

        Pixel (i, j) has its centre at u = j + 0.5, v = i + 0.5. Points behind the camera
        get meaningless pixel coordinates: check ``z`` first.
        """
        pc = self.to_camera(points)
        z = pc[:, 2]
        safe = np.where(np.abs(z) < 1e-9, 1e-9, z)
        uv = np.stack([self.fx * pc[:, 0] / safe + self.cx, self.fy * pc[:, 1] / safe + self.cy], 1)
        return uv, z

    def pixel_rects(self, points: np.ndarray) -> np.ndarray:
        """Pixel rectangles that can see the convex hulls of point sets.

        Args:
            points: [K, N, 3] world points; hull k is the convex hull of points[k].

        Returns:
            int64 [K, 4] rows (r0, r1, c0, c1), half-open; r0 >= r1 where no pixel can
            see the hull. A hull crossing the near plane is clipped by it: its visible
            part is spanned by the points in front and by the crossings of the segments
            between points in front and points behind.
        """
        k, npts = points.shape[:2]
        pc = self.to_camera(points.reshape(-1, 3)).reshape(k, npts, 3)
        z = pc[..., 2]
        front = z >= NEAR
        umin = np.zeros(k)
        umax = np.zeros(k)
        vmin = np.zeros(k)
        vmax = np.zeros(k)
        whole = front.all(axis=1)
        if whole.any():
            q = pc[whole]
            u = _points_first(self.fx * q[..., 0] / q[..., 2] + self.cx)
            v = _points_first(self.fy * q[..., 1] / q[..., 2] + self.cy)
            umin[whole], umax[whole] = u.min(0), u.max(0)
            vmin[whole], vmax[whole] = v.min(0), v.max(0)
        part = np.flatnonzero(front.any(axis=1) & ~whole)
        if len(part):
            q, zq, fq = pc[part], z[part], front[part]
            ia, ib = _pairs_of(npts)
            za, zb = zq[:, ia], zq[:, ib]
            cross = (za >= NEAR) != (zb >= NEAR)
            with np.errstate(divide="ignore", invalid="ignore"):
                f = np.where(cross, (NEAR - za) / (zb - za), 0.0)
            cp = q[:, ia] + f[..., None] * (q[:, ib] - q[:, ia])
            allp = np.concatenate([q, cp], axis=1)
            valid = np.concatenate([fq, cross], axis=1)
            zs = np.where(valid, np.maximum(allp[..., 2], NEAR), 1.0)
            u = self.fx * allp[..., 0] / zs + self.cx
            v = self.fy * allp[..., 1] / zs + self.cy
            umin[part] = _points_first(np.where(valid, u, np.inf)).min(0)
            umax[part] = _points_first(np.where(valid, u, -np.inf)).max(0)
            vmin[part] = _points_first(np.where(valid, v, np.inf)).min(0)
            vmax[part] = _points_first(np.where(valid, v, -np.inf)).max(0)
        big = 1e7
        c0 = np.clip(np.ceil(np.clip(umin, -big, big) - 0.5) - 1, 0, self.width)
        c1 = np.clip(np.floor(np.clip(umax, -big, big) - 0.5) + 2, 0, self.width)
        r0 = np.clip(np.ceil(np.clip(vmin, -big, big) - 0.5) - 1, 0, self.height)
        r1 = np.clip(np.floor(np.clip(vmax, -big, big) - 0.5) + 2, 0, self.height)
        rects = np.stack([r0, r1, c0, c1], 1).astype(np.int64)
        empty = ~front.any(axis=1) | (rects[:, 0] >= rects[:, 1]) | (rects[:, 2] >= rects[:, 3])
        rects[empty] = 0
        return rects


@cache
def _pairs_of(n: int) -> tuple[np.ndarray, np.ndarray]:
    """``np.triu_indices(n, 1)``: every pair (a, b) of n points with a < b, read-only;
    kept, as building it costs ~0.3 ms, more than the projection it serves."""
    ia, ib = np.triu_indices(n, 1)
    ia.flags.writeable = False
    ib.flags.writeable = False
    return ia, ib


def _points_first(a: np.ndarray) -> np.ndarray:
    """[K, N] -> contiguous [N, K]: a min or max over axis 0 of this is N elementwise
    passes over K values, ~15x cheaper than NumPy's per-row reduction over axis 1 (the
    same values: min and max do not depend on the order)."""
    return np.ascontiguousarray(a.T)


def make_camera(rng: np.random.Generator, size: tuple[int, int], x: float = 0.0) -> Camera:
    """A camera 1.2-1.7 m above the road at lateral position ``x``, looking along +z
    with Cityscapes-like field of view and small pitch, roll and yaw jitter."""
    height, width = size
    fx = width * CITYSCAPES_FX_PER_WIDTH * rng.uniform(0.93, 1.07)
    cx = width / 2 + rng.uniform(-0.01, 0.01) * width
    cy = height / 2 + rng.uniform(-0.02, 0.02) * height
    cam_h = rng.uniform(1.2, 1.7)
    pitch = math.radians(rng.uniform(-1.0, 3.5))  # positive: looking down
    roll = math.radians(rng.normal(0.0, 0.8))
    yaw = math.radians(rng.normal(0.0, 1.5))
    # rot_x(+a) turns +z towards -y, i.e. looks down by a.
    rotation = rot_y(yaw) @ rot_x(pitch) @ rot_z(roll) @ _BASE
    return Camera(
        height=height,
        width=width,
        fx=fx,
        fy=fx,
        cx=cx,
        cy=cy,
        position=np.array([x, cam_h, 0.0]),
        rotation=rotation,
    )
