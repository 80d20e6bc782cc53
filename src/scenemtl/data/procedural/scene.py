"""Random street layouts.

A scene is a straight street along +z seen from a camera in one of its lanes: lanes
with markings, raised sidewalks with curbs, cross streets, and frontage blocks of
buildings, gardens, walls, fences and hedges; then street furniture, parked and moving
vehicles, pedestrians, riders and trees, plus the light, sky and camera settings that
shading uses. Everything is drawn from one ``numpy.random.Generator``, so a scene is a
pure function of its seed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from scenemtl.data.procedural import draws
from scenemtl.data.procedural import objects as ob
from scenemtl.data.procedural import palette as pal
from scenemtl.data.procedural.camera import Camera, make_camera
from scenemtl.data.procedural.draws import Weighted
from scenemtl.data.procedural.geometry import BOX, CUT_LATTICE, Prim, make, rot_z

FAR_Z = 420.0
"""Streets end here at the latest (beyond the 300 m depth range)."""

# Discrete draws of the layout with their probabilities (draws.py: as rng.choice).
_LANES = Weighted((1, 2, 3, 4), [0.08, 0.45, 0.3, 0.17])
_CENTRE_LINE = Weighted((0, 1, 2), [0.3, 0.35, 0.35])  # dashed, solid, double yellow
_CROSSINGS = Weighted((0, 1, 2), [0.3, 0.45, 0.25])
_BUILDING_STYLE = Weighted((0, 1, 2, 3), [0.45, 0.2, 0.2, 0.15])
_LANE_VEHICLE = Weighted(range(5), [0.85, 0.025, 0.04, 0.06, 0.025])


@dataclass
class Ground:
    """The ground plane's markings and materials (world x, z in meters)."""

    road_l: float
    road_r: float
    crossings: list[tuple[float, float]]
    lane_lines: list[tuple[float, int]]  # (x, kind): 0 dashed, 1 solid white, 2 double yellow
    dash: tuple[float, float, float]  # period, painted fraction, phase
    crosswalks: list[tuple[float, float]]
    stop_lines: list[float]
    own_left: float  # left edge of the lanes in the camera's direction
    rails: list[float]
    asphalt: np.ndarray
    grass: np.ndarray
    dirt: np.ndarray
    wear: float
    tex: float


@dataclass
class Light:
    """Sun, sky and atmosphere (linear RGB)."""

    sun: np.ndarray  # unit vector towards the sun
    sun_rgb: np.ndarray
    ambient_rgb: np.ndarray
    zenith_rgb: np.ndarray
    horizon_rgb: np.ndarray
    visibility: float  # meters for the haze to reach 1/e
    clouds: float  # cloud cover in [0, 1]
    cloud_rgb: np.ndarray


@dataclass
class Post:
    """Camera response: auto-exposure key, white balance, noise and softness."""

    key: float
    white_balance: np.ndarray
    noise: float
    blur: float
    vignette: float
    contrast: float


@dataclass
class Scene:
    camera: Camera
    prims: list[Prim]
    ground: Ground
    light: Light
    post: Post
    meta: dict[str, float] = field(default_factory=dict)


class _Occupancy:
    """Footprint circles on the ground, to keep objects from overlapping."""

    def __init__(self) -> None:
        self._xzr = np.zeros((256, 3))
        self._n = 0

    def free(self, x: float, z: float, r: float) -> bool:
        a = self._xzr[: self._n]
        # the method, not np.all: its Python wrapper costs more than the test itself
        return bool(((a[:, 0] - x) ** 2 + (a[:, 1] - z) ** 2 > (a[:, 2] + r) ** 2).all())

    def put(self, x: float, z: float, r: float) -> None:
        if self._n == len(self._xzr):
            self._xzr = np.concatenate([self._xzr, np.zeros_like(self._xzr)])
        self._xzr[self._n] = (x, z, r)
        self._n += 1

    def take(self, x: float, z: float, r: float) -> bool:
        if not self.free(x, z, r):
            return False
        self.put(x, z, r)
        return True


def _in_any(z0: float, z1: float, spans: list[tuple[float, float]], margin: float = 0.0) -> bool:
    return any(z0 < b + margin and z1 > a - margin for a, b in spans)


class _Street:
    """Builds one scene; a class only to share the many layout numbers."""

    def __init__(self, rng: np.random.Generator, size: tuple[int, int]) -> None:
        self.rng = rng
        self.prims: list[Prim] = []
        self.occ = _Occupancy()
        self.urban = float(rng.beta(2.0, 1.6))
        self._road()
        self.camera = make_camera(rng, size, 0.0)

    # ----------------------------------------------------------------------------------
    # road, sidewalks, blocks

    def _road(self) -> None:
        rng = self.rng
        n = _LANES.draw(rng)
        lane = rng.uniform(2.9, 3.6)
        two_way = n >= 2 and rng.random() < 0.75
        n_on = n // 2 if two_way else 0
        cam = int(rng.integers(n_on, n))
        self.lane_w = lane
        self.lanes = [(i - cam) * lane for i in range(n)]
        self.oncoming = [i < n_on for i in range(n)]
        left = (-cam - 0.5) * lane
        right = (n - cam - 0.5) * lane
        self.park = [rng.random() < 0.45, rng.random() < 0.45]
        self.road_l = left - 2.3 * self.park[0]
        self.road_r = right + 2.3 * self.park[1]
        lines: list[tuple[float, int]] = []
        for i in range(n - 1):
            x = (i + 0.5 - cam) * lane
            if i + 1 == n_on:
                lines.append((x, _CENTRE_LINE.draw(rng)))
            else:
                lines.append((x, 0))
        if self.park[0]:
            lines.append((left, 1))
        if self.park[1]:
            lines.append((right, 1))
        # Cross streets and where the street ends.
        crossings: list[tuple[float, float]] = []
        z = rng.uniform(10.0, 70.0)
        for _ in range(_CROSSINGS.draw(rng)):
            w = rng.uniform(9.0, 18.0)
            crossings.append((z, z + w))
            z += w + rng.uniform(35.0, 110.0)
        self.end_z = FAR_Z
        self.t_junction = rng.random() < 0.4
        if self.t_junction:
            zend = max(z, rng.uniform(70.0, 230.0))
            w = rng.uniform(10.0, 16.0)
            crossings = [c for c in crossings if c[1] < zend - 20]
            crossings.append((zend, zend + w))
            self.end_z = zend + w
        self.crossings = crossings
        self.crosswalks: list[tuple[float, float]] = []
        stop_lines = []
        for a, _b in crossings:
            if rng.random() < 0.65:
                self.crosswalks.append((a - 4.5, a - 1.0))
                stop_lines.append(a - 5.5)
        if rng.random() < 0.15:
            zc = rng.uniform(15.0, 60.0)
            if not _in_any(zc - 5, zc + 5, crossings):
                self.crosswalks.append((zc, zc + 3.5))
        self.rails: list[float] = []
        self.tram_lane: int | None = None
        if rng.random() < 0.16:
            self.tram_lane = int(rng.integers(0, n))
            xt = self.lanes[self.tram_lane]
            self.rails = [xt - 0.75, xt + 0.75]
        self.ground = Ground(
            road_l=self.road_l,
            road_r=self.road_r,
            crossings=crossings,
            lane_lines=lines,
            dash=(rng.uniform(6.0, 12.0), rng.uniform(0.3, 0.55), rng.uniform(0.0, 12.0)),
            crosswalks=self.crosswalks,
            stop_lines=stop_lines,
            own_left=(n_on - cam - 0.5) * lane,
            rails=self.rails,
            asphalt=pal.pick(rng, pal.ASPHALT, 0.06),
            grass=pal.pick(rng, pal.GRASS, 0.08),
            dirt=pal.pick(rng, pal.GRASS[3:], 0.08),
            wear=rng.uniform(0.0, 1.0),
            tex=float(rng.uniform(0, 256)),
        )

    def blocks(self) -> list[tuple[float, float]]:
        """z-intervals between cross streets where sidewalks and frontage run."""
        out = []
        z = -40.0
        for a, b in self.crossings:
            out.append((z, a))
            z = b
        if not self.t_junction:
            out.append((z, FAR_Z))
        return out

    def add(self, prims: Prim | list[Prim]) -> None:
        if isinstance(prims, Prim):
            self.prims.append(prims)
        else:
            self.prims.extend(prims)

    def sidewalks(self) -> None:
        rng = self.rng
        self.side: dict[int, dict[str, float]] = {}
        paving = pal.pick(rng, pal.SIDEWALK, 0.06)
        tile = rng.uniform(0.3, 0.8)
        for s in (-1, 1):
            curb = self.road_r if s > 0 else self.road_l
            width = rng.uniform(2.0, 6.0)
            curb_h = rng.uniform(0.1, 0.2)
            strip = rng.uniform(1.0, 2.5) if rng.random() < 0.3 else 0.0
            outer = curb + s * (width + strip)
            self.side[s] = {
                "curb": curb,
                "outer": outer,
                "h": curb_h,
                "strip": strip,
                "width": width,
            }
            col = paving * np.exp(rng.normal(0, 0.05, 3))
            for z0, z1 in self.blocks():
                cross = rng.uniform(2.5, 4.5)
                self._walk_box(curb + s * strip, outer, z0, z1, curb_h, col, tile)
                if strip:
                    self.add(
                        make(
                            BOX,
                            ((2 * curb + s * strip) / 2, (curb_h - 0.5) / 2, (z0 + z1) / 2),
                            (strip / 2, (curb_h + 0.5) / 2, (z1 - z0) / 2),
                            ob.TERRAIN,
                            pal.M_GRASS,
                            self.ground.grass,
                            tex=float(rng.uniform(0, 256)),
                        )
                    )
                # Sidewalks running along the cross streets at the block's ends.
                far = curb + s * 140.0
                if z1 < self.end_z - 1 and any(abs(z1 - a) < 1e-6 for a, _ in self.crossings):
                    self._walk_box(curb, far, z1 - cross, z1, curb_h, col, tile)
                if z0 > -39 and any(abs(z0 - b) < 1e-6 for _, b in self.crossings):
                    self._walk_box(curb, far, z0, z0 + cross, curb_h, col, tile)
        if self.t_junction:
            z0 = self.end_z
            self._walk_box(
                -160.0, 160.0, z0, z0 + rng.uniform(3.0, 6.0), self.side[1]["h"], paving, tile
            )

    def _walk_box(
        self, xa: float, xb: float, z0: float, z1: float, h: float, col: np.ndarray, tile: float
    ) -> None:
        x0, x1 = min(xa, xb), max(xa, xb)
        self.add(
            make(
                BOX,
                ((x0 + x1) / 2, (h - 0.5) / 2, (z0 + z1) / 2),
                ((x1 - x0) / 2, (h + 0.5) / 2, (z1 - z0) / 2),
                ob.SIDEWALK,
                pal.M_SIDEWALK,
                col,
                params=(tile, 0.0, 0.0, 0.0),
                tex=float(self.rng.uniform(0, 256)),
                shadow=False,
            )
        )

    # ----------------------------------------------------------------------------------
    # frontage

    def building(
        self,
        s: int,
        x_face: float,
        depth: float,
        z0: float,
        z1: float,
        height: float,
        house: bool = False,
    ) -> None:
        rng = self.rng
        x0, x1 = sorted((x_face, x_face + s * depth))
        style = _BUILDING_STYLE.draw(rng)
        if house:
            style = draws.uniform(rng, (0, 1))
        col = pal.pick(rng, pal.BUILDING, 0.07)
        glass = pal.pick(rng, pal.GLASS, 0.12)
        floor_h = rng.uniform(2.8, 3.8)
        spacing = rng.uniform(2.0, 4.2)
        self.add(
            make(
                BOX,
                ((x0 + x1) / 2, height / 2 - 0.5, (z0 + z1) / 2),
                ((x1 - x0) / 2, height / 2 + 0.5, (z1 - z0) / 2),
                ob.BUILDING,
                pal.M_BUILDING,
                col,
                color2=glass,
                params=(floor_h, spacing, rng.uniform(0.3, 0.7), float(style)),
                tex=float(rng.uniform(0, 256)),
            )
        )
        if not house and rng.random() < 0.5:
            # A cornice: a slab sticking out along the top of the facade.
            t, over = rng.uniform(0.3, 0.8), rng.uniform(0.15, 0.45)
            self.add(
                make(
                    BOX,
                    ((x0 + x1) / 2, height - t / 2 + 0.05, (z0 + z1) / 2),
                    ((x1 - x0) / 2 + over, t / 2 + 0.05, (z1 - z0) / 2 + over * 0.5),
                    ob.BUILDING,
                    pal.M_WALL,
                    np.minimum(col * rng.uniform(0.7, 1.3), 0.9),
                    params=(0.5, 0.0, 0.0, 0.0),
                    tex=float(rng.uniform(0, 256)),
                )
            )
        if not house and height > 9 and style in (0, 1) and rng.random() < 0.25:
            # Balconies: a solid balustrade band in front of each upper floor.
            depth_b = rng.uniform(0.9, 1.5)
            rail = pal.pick(rng, pal.WALL, 0.07) if rng.random() < 0.5 else col * 1.1
            floors = int(min((height - 1.0) // floor_h, 7))
            for f in range(1, floors):
                y0 = f * floor_h
                self.add(
                    make(
                        BOX,
                        (x_face - s * depth_b / 2, y0 + 0.5, (z0 + z1) / 2),
                        (depth_b / 2, 0.55, (z1 - z0) / 2 - 0.6),
                        ob.BUILDING,
                        pal.M_WALL,
                        np.minimum(rail, 0.9),
                        params=(0.5, 0.0, 0.0, 0.0),
                        tex=float(rng.uniform(0, 256)),
                    )
                )
        if not house and height > 12 and rng.random() < 0.3:
            # Set-back top storeys.
            inset = rng.uniform(2.0, 5.0)
            top = rng.uniform(3.0, 9.0)
            xa, xb = sorted((x_face + s * inset, x_face + s * depth))
            self.add(
                make(
                    BOX,
                    ((xa + xb) / 2, height + top / 2, (z0 + z1) / 2),
                    ((xb - xa) / 2, top / 2, (z1 - z0) / 2 - rng.uniform(0.0, 2.0)),
                    ob.BUILDING,
                    pal.M_BUILDING,
                    col,
                    color2=glass,
                    params=(floor_h, spacing, rng.uniform(0.3, 0.7), float(style)),
                    tex=float(rng.uniform(0, 256)),
                )
            )
        if house and rng.random() < 0.7:
            # A gable roof: a box turned 45 deg about the ridge, half buried in the house.
            a = (x1 - x0) / 2 / math.sqrt(2) * 1.02
            self.add(
                make(
                    BOX,
                    ((x0 + x1) / 2, height - 0.5, (z0 + z1) / 2),
                    (a, a, (z1 - z0) / 2 + 0.3),
                    ob.BUILDING,
                    pal.M_ROOF,
                    pal.pick(rng, pal.ROOF, 0.08),
                    rotation=rot_z(math.pi / 4),
                    tex=float(rng.uniform(0, 256)),
                )
            )

    def frontage(self) -> None:
        rng = self.rng
        u = self.urban
        weights = np.array(
            [0.3 + 0.55 * u, 0.3 * (1 - u) + 0.04, 0.12, 0.11, 0.07, 0.12 * (1 - u) + 0.02]
        )
        weights /= weights.sum()
        segment_kind = Weighted(range(6), weights)
        for s in (-1, 1):
            side = self.side[s]
            outer = side["outer"]
            for b0, b1 in self.blocks():
                z = b0 + (4.5 if b0 > -39 else 0.0)
                end = b1 - (4.5 if b1 < FAR_Z - 1 else 0.0)
                while z < end - 3.0:
                    kind = segment_kind.draw(rng)
                    length = min(rng.uniform(8.0, 32.0), end - z)
                    if end - z - length < 6.0:
                        length = end - z
                    self._segment(kind, s, outer, z, z + length, side["h"])
                    z += length
                if b1 < FAR_Z - 1:
                    self._cross_row(s, outer, b1, b0)
        if self.t_junction:
            z0 = self.end_z + rng.uniform(4.0, 8.0)
            x = -160.0
            while x < 160.0:
                w = rng.uniform(10.0, 35.0)
                h = rng.uniform(6.0, 30.0 if u > 0.4 else 14.0)
                if rng.random() < 0.2:
                    self.add(ob.tree(rng, x + w / 2, z0 + 3, 0.0, scale=1.3))
                else:
                    self._facing_building(x, x + w, z0, h)
                x += w

    def _facing_building(self, x0: float, x1: float, z0: float, h: float) -> None:
        rng = self.rng
        depth = rng.uniform(10, 20)
        self.add(
            _plain_building(
                rng,
                ((x0 + x1) / 2, h / 2 - 0.5, z0 + depth / 2),
                ((x1 - x0) / 2, h / 2 + 0.5, depth / 2),
            )
        )

    def _cross_row(self, s: int, outer: float, zb: float, za: float) -> None:
        """Buildings lining a cross street, seen down its length."""
        rng = self.rng
        crossing = next((c for c in self.crossings if abs(c[0] - zb) < 1e-6), None)
        if crossing is None:
            return
        a, b = crossing
        x = outer + s * rng.uniform(20.0, 30.0)
        while abs(x) < 140:
            w = rng.uniform(10.0, 30.0)
            h = rng.uniform(6.0, 25.0 if self.urban > 0.4 else 12.0)
            for z_face, dz in ((a - 4.0, -1), (b + 4.0, 1)):
                depth = rng.uniform(8, 16)
                if rng.random() < 0.2:
                    self.add(ob.tree(rng, x + s * w / 2, z_face + dz * 3, 0.0))
                    continue
                zz0, zz1 = sorted((z_face, z_face + dz * depth))
                xx0, xx1 = sorted((x, x + s * w))
                self.add(
                    _plain_building(
                        rng,
                        ((xx0 + xx1) / 2, h / 2 - 0.5, (zz0 + zz1) / 2),
                        ((xx1 - xx0) / 2, h / 2 + 0.5, (zz1 - zz0) / 2),
                    )
                )
            x += s * w

    def _segment(
        self, kind: int, s: int, outer: float, z0: float, z1: float, curb_h: float
    ) -> None:
        rng = self.rng
        u = self.urban
        tall = rng.uniform(8.0, 30.0) if rng.random() < u else rng.uniform(5.0, 13.0)
        if kind == 0:  # building at or near the sidewalk
            setback = 0.0 if rng.random() < 0.6 + 0.3 * u else rng.uniform(0.5, 4.0)
            self.building(s, outer + s * setback, rng.uniform(10, 22), z0, z1, tall)
            if setback > 1.5 and rng.random() < 0.5:
                self.add(
                    ob.hedge(
                        rng,
                        outer + s * 0.2,
                        outer + s * 1.0,
                        z0 + 0.5,
                        z1 - 0.5,
                        0.0,
                        rng.uniform(0.6, 1.4),
                    )
                )
            return
        if kind == 1:  # garden: grass, trees and bushes, a house further back
            back = rng.uniform(6.0, 18.0)
            if rng.random() < 0.8:
                self.building(
                    s,
                    outer + s * back,
                    rng.uniform(8, 14),
                    z0 + 1,
                    z1 - 1,
                    rng.uniform(4.0, 9.0),
                    house=True,
                )
            for _ in range(int(rng.integers(0, 4))):
                self.add(ob.tree(rng, outer + s * rng.uniform(2.0, back), rng.uniform(z0, z1), 0.0))
            for _ in range(int(rng.integers(0, 4))):
                self.add(ob.bush(rng, outer + s * rng.uniform(1.0, back), rng.uniform(z0, z1), 0.0))
            if rng.random() < 0.4:
                self._fence(s, outer, z0, z1, rng.uniform(0.8, 1.6))
            return
        if kind == 2:  # wall with something behind it
            h = rng.uniform(0.8, 3.2)
            col = pal.pick(rng, pal.WALL, 0.07)
            x = outer + s * 0.2
            self.add(
                make(
                    BOX,
                    (x, h / 2 - 0.2, (z0 + z1) / 2),
                    (0.2, h / 2 + 0.2, (z1 - z0) / 2),
                    ob.WALL,
                    pal.M_WALL,
                    col,
                    params=(rng.uniform(0.2, 0.6), float(rng.integers(0, 3)), 0, 0),
                    tex=float(rng.uniform(0, 256)),
                )
            )
            if rng.random() < 0.5:
                self.building(
                    s, outer + s * rng.uniform(3.0, 10.0), rng.uniform(10, 18), z0, z1, tall
                )
            for _ in range(int(rng.integers(1, 4))):
                self.add(ob.tree(rng, outer + s * rng.uniform(2.0, 6.0), rng.uniform(z0, z1), 0.0))
            return
        if kind == 3:  # fence with a yard behind it
            self._fence(s, outer, z0, z1, rng.uniform(1.0, 2.4))
            if rng.random() < 0.6:
                self.building(
                    s,
                    outer + s * rng.uniform(5.0, 15.0),
                    rng.uniform(10, 18),
                    z0,
                    z1,
                    rng.uniform(4.0, 15.0),
                )
            for _ in range(int(rng.integers(0, 3))):
                self.add(ob.tree(rng, outer + s * rng.uniform(2.0, 8.0), rng.uniform(z0, z1), 0.0))
            return
        if kind == 4:  # hedge in front of a building
            h = rng.uniform(0.8, 2.4)
            self.add(
                ob.hedge(
                    rng,
                    outer + s * 0.1,
                    outer + s * rng.uniform(0.8, 1.6),
                    z0 + 0.3,
                    z1 - 0.3,
                    0.0,
                    h,
                )
            )
            self.building(s, outer + s * rng.uniform(2.5, 8.0), rng.uniform(10, 18), z0, z1, tall)
            return
        # park: a stand of trees on grass
        for _ in range(int(rng.integers(3, 8))):
            self.add(
                ob.tree(
                    rng,
                    outer + s * rng.uniform(1.5, 20.0),
                    rng.uniform(z0, z1),
                    0.0,
                    scale=rng.uniform(0.9, 1.4),
                )
            )
        if rng.random() < 0.5:
            self.building(s, outer + s * rng.uniform(20.0, 35.0), 15.0, z0, z1, tall)

    def _fence(self, s: int, outer: float, z0: float, z1: float, h: float) -> None:
        rng = self.rng
        solid = rng.random() < 0.3
        self.add(
            make(
                BOX,
                (outer + s * 0.1, h / 2, (z0 + z1) / 2),
                (0.03, h / 2, (z1 - z0) / 2),
                ob.FENCE,
                pal.M_FENCE,
                pal.pick(rng, pal.FENCE, 0.07),
                params=(
                    rng.uniform(0.08, 0.3),
                    rng.uniform(0.12, 0.35),
                    rng.uniform(1.8, 3.0),
                    0.0,
                ),
                cutout=0 if solid else CUT_LATTICE,
                tex=float(rng.uniform(0, 256)),
            )
        )

    # ----------------------------------------------------------------------------------
    # furniture and traffic

    def furniture(self) -> None:
        rng = self.rng
        for s in (-1, 1):
            side = self.side[s]
            curb, h = side["curb"], side["h"]
            near = curb + s * (0.5 if not side["strip"] else side["strip"] / 2)
            # Street trees in pits or in the grass strip.
            if rng.random() < 0.35 + 0.4 * (1 - self.urban) or side["strip"]:
                z = rng.uniform(-10, 5)
                step = rng.uniform(8.0, 16.0)
                while z < 130:
                    if not _in_any(z - 2, z + 2, self.crossings, 3.0) and self.occ.take(
                        near, z, 0.5
                    ):
                        self.add(ob.tree(rng, near + s * (0.5 if not side["strip"] else 0), z, h))
                    z += step * rng.uniform(0.8, 1.2)
            if rng.random() < 0.8:
                z = rng.uniform(-10, 10)
                step = rng.uniform(18.0, 36.0)
                while z < 250:
                    if not _in_any(z - 1, z + 1, self.crossings) and self.occ.take(
                        curb + s * 0.4, z, 0.4
                    ):
                        self.add(ob.streetlamp(rng, curb + s * 0.4, z, h, -float(s)))
                    z += step
            for _ in range(int(rng.poisson(2.4))):
                z = rng.uniform(3.0, 70.0)
                x = curb + s * rng.uniform(0.3, 0.8)
                if _in_any(z - 1, z + 1, self.crossings) or not self.occ.take(x, z, 0.5):
                    continue
                facing = (
                    0.0 if rng.random() < 0.75 else draws.uniform(rng, (math.pi, s * math.pi / 2))
                )
                self.add(ob.sign_post(rng, x, z, h, facing))
            if rng.random() < 0.12:
                z = rng.uniform(4.0, 40.0)
                col = pal.pick(rng, pal.METAL, 0.05)
                for i in range(int(rng.integers(4, 12))):
                    zz = z + i * 1.5
                    if not _in_any(zz - 1, zz + 1, self.crossings) and self.occ.take(
                        curb + s * 0.3, zz, 0.1
                    ):
                        self.add(ob.bollard(rng, curb + s * 0.3, zz, h, col))
        # Traffic lights at crossings and crosswalks.
        for zc in [a for a, _ in self.crossings] + [a for a, _ in self.crosswalks]:
            if rng.random() > 0.85:
                continue
            for s in (-1, 1):
                side = self.side[s]
                if rng.random() < 0.75:
                    x = side["curb"] + s * 0.6
                    z = zc - rng.uniform(0.5, 2.5)
                    mast = None
                    if s > 0 and rng.random() < 0.45:
                        mast = self.lanes[0] if len(self.lanes) > 1 else side["curb"] - 3.0
                        mast = max(mast, x - 9.0)
                    if self.occ.take(x, z, 0.4):
                        self.add(ob.traffic_light(rng, x, z, side["h"], 0.0, mast))
            if rng.random() < 0.5:
                s = draws.uniform(rng, (-1, 1))
                x = self.side[s]["curb"] + s * 0.6
                z = zc + rng.uniform(10.0, 16.0)
                if self.occ.take(x, z, 0.4):
                    self.add(ob.traffic_light(rng, x, z, self.side[s]["h"], math.pi))

    def pedestrians(self) -> None:
        rng = self.rng
        for s in (-1, 1):
            side = self.side[s]
            lo = side["curb"] + s * (side["strip"] + 0.8)
            hi = side["outer"] - s * 0.4
            lam = rng.uniform(0.0, 11.0) * (0.4 + self.urban)
            for _ in range(int(rng.poisson(lam))):
                z = 2.0 + rng.exponential(25.0)
                if z > 110 or _in_any(z - 0.5, z + 0.5, self.crossings, 1.0):
                    continue
                x = lo + (hi - lo) * rng.random()
                walking = rng.random() < 0.7
                yaw = (
                    draws.uniform(rng, (0.0, math.pi)) + rng.normal(0, 0.15)
                    if walking
                    else rng.uniform(0, 2 * math.pi)
                )
                if self.occ.take(x, z, 0.4):
                    self.add(ob.person(rng, x, z, yaw, side["h"], walking))
            if rng.random() < 0.3:
                z = rng.uniform(4.0, 50.0)
                x = side["curb"] + s * rng.uniform(0.6, 1.2)
                for i in range(int(rng.integers(1, 5))):
                    zz = z + i * 0.8
                    if self.occ.take(x, zz, 0.35):
                        self.add(
                            ob.bicycle(
                                rng,
                                x,
                                zz,
                                s * math.pi / 2 + rng.normal(0, 0.1),
                                side["h"],
                                rider=False,
                            )
                        )
            if rng.random() < 0.15:
                z = rng.uniform(4.0, 40.0)
                x = side["curb"] + s * 0.9
                if self.occ.take(x, z, 0.8):
                    self.add(
                        ob.motorcycle(
                            rng, x, z, rng.uniform(0, 2 * math.pi), rider=False, base_y=side["h"]
                        )
                    )
        # People on crosswalks.
        for a, b in self.crosswalks:
            if rng.random() < 0.45:
                for _ in range(int(rng.integers(1, 5))):
                    x = rng.uniform(self.road_l + 0.5, self.road_r - 0.5)
                    z = rng.uniform(a + 0.3, b - 0.3)
                    if abs(x) < 1.5 and z < 8:
                        continue
                    if self.occ.take(x, z, 0.4):
                        yaw = draws.uniform(rng, (math.pi / 2, -math.pi / 2)) + rng.normal(0, 0.2)
                        self.add(ob.person(rng, x, z, yaw, 0.0, True))

    def traffic(self) -> None:
        rng = self.rng
        # The tram goes first: it owns its track for its length.
        if self.tram_lane is not None and rng.random() < 0.85:
            x = self.lanes[self.tram_lane]
            yaw = math.pi if self.oncoming[self.tram_lane] else 0.0
            prims, length = ob.tram(rng, x, 0.0, yaw + rng.normal(0, 0.01))
            z = rng.uniform(10.0, 70.0) + length / 2  # its near end at least 10 m ahead
            for p in prims:
                p.center = p.center + np.array([0.0, 0.0, z])
            self.add(prims)
            for dz in np.arange(-length / 2, length / 2, 1.5):
                self.occ.put(x, z + dz, 1.3)
        for i, x in enumerate(self.lanes):
            oncoming = self.oncoming[i]
            own = abs(x) < 0.1
            if own:
                z = rng.uniform(7.0, 30.0) if rng.random() < 0.7 else rng.uniform(30.0, 90.0)
            else:
                z = rng.uniform(-6.0, 25.0)
            density = rng.uniform(0.3, 1.0)
            while z < 160:
                gap = rng.uniform(2.0, 25.0) / density
                if rng.random() > density:
                    z += gap + 5
                    continue
                yaw = (math.pi if oncoming else 0.0) + rng.normal(0, 0.02)
                xx = x + rng.normal(0, 0.25)
                kind = _LANE_VEHICLE.draw(rng)
                if kind == 0:
                    prims, length = ob.car(rng, xx, z, yaw), 4.8
                elif kind == 1:
                    prims, length = ob.truck(rng, xx, z, yaw)
                elif kind == 2:
                    prims, length = ob.bus(rng, xx, z, yaw)
                elif kind == 3:
                    prims, length = ob.motorcycle(rng, xx, z, yaw), 2.0
                else:
                    prims, length = ob.bicycle(rng, xx + 0.8, z, yaw), 1.8
                zc = z + length / 2
                if all(
                    self.occ.free(xx, zc + dz, 1.0)
                    for dz in np.linspace(-length / 2, length / 2, 4)
                ):
                    for dz in np.linspace(-length / 2, length / 2, 4):
                        self.occ.put(xx, zc + dz, 1.0)
                    # Builders place the object's centre; move it to zc.
                    for p in prims:
                        p.center = p.center + np.array([0.0, 0.0, zc - z])
                    self.add(prims)
                z += length + gap
        # Parked cars along the curbs.
        for s, parked in ((-1, self.park[0]), (1, self.park[1])):
            if not parked:
                continue
            x = (self.road_l + 1.15) if s < 0 else (self.road_r - 1.15)
            z = rng.uniform(-8.0, 3.0)
            while z < 110:
                if rng.random() < 0.25 or _in_any(
                    z - 3, z + 3, self.crossings + self.crosswalks, 4.0
                ):
                    z += rng.uniform(4.0, 10.0)
                    continue
                if self.occ.free(x, z, 1.6):
                    yaw = rng.normal(0, 0.03) + (math.pi if rng.random() < 0.3 else 0.0)
                    if rng.random() < 0.03:
                        prims, length = ob.truck(rng, x, z + 3.0, yaw)
                    else:
                        prims, length = ob.car(rng, x, z + 2.4, yaw), 4.8
                    self.add(prims)
                    for dz in np.linspace(0, length, 4):
                        self.occ.put(x, z + dz, 1.0)
                    z += length + rng.uniform(0.4, 2.5)
                else:
                    z += 2.0
        # Cyclists along the right edge.
        if rng.random() < 0.35:
            x = self.road_r - (2.3 if self.park[1] else 0.0) - 0.7
            z = rng.uniform(5.0, 45.0)
            if self.occ.take(x, z, 1.0):
                self.add(ob.bicycle(rng, x, z, rng.normal(0, 0.05)))
        # Traffic in the cross streets.
        for a, b in self.crossings:
            for _ in range(int(rng.integers(0, 4))):
                side = draws.uniform(rng, (-1.0, 1.0))
                x = rng.uniform(8.0, 60.0) * side + (self.road_r if side > 0 else self.road_l)
                zc = a + (b - a) * (0.3 if rng.random() < 0.5 else 0.7)
                yaw = math.pi / 2 * draws.uniform(rng, (-1.0, 1.0)) + rng.normal(0, 0.03)
                if self.occ.take(x, zc, 2.5):
                    self.add(
                        ob.car(rng, x, zc, yaw)
                        if rng.random() < 0.85
                        else ob.bus(rng, x, zc, yaw)[0]
                    )
            if rng.random() < 0.3:
                x = (self.road_l + self.road_r) / 2 + rng.uniform(-1, 1) * max(
                    0.0, (self.road_r - self.road_l) / 2 - 2
                )
                zc = (a + b) / 2
                if zc > 12 and self.occ.take(x, zc, 2.5):
                    self.add(ob.car(rng, x, zc, math.pi / 2 * draws.uniform(rng, (-1.0, 1.0))))

    # ----------------------------------------------------------------------------------
    # light and camera response

    def light(self) -> Light:
        rng = self.rng
        overcast = rng.random() < 0.3
        elev = math.radians(rng.uniform(12.0, 62.0))
        az = rng.uniform(0.0, 2 * math.pi)
        sun = np.array(
            [math.cos(elev) * math.sin(az), math.sin(elev), math.cos(elev) * math.cos(az)]
        )
        warm = 1.0 - min(1.0, elev / math.radians(45))
        sun_rgb = np.array([1.0, 0.93 - 0.1 * warm, 0.85 - 0.25 * warm]) * rng.uniform(2.4, 3.4)
        if overcast:
            sun_rgb *= rng.uniform(0.0, 0.25)
            grey = rng.uniform(0.45, 0.8)
            zenith = np.array([grey, grey * 1.02, grey * 1.08]) * rng.uniform(0.8, 1.0)
            horizon = np.array([grey, grey, grey * 1.02]) * 1.1
            ambient = np.array([1.0, 1.0, 1.04]) * rng.uniform(1.0, 1.5)
            clouds = 1.0
        else:
            zenith = np.array([0.1, 0.25, 0.75]) * rng.uniform(0.6, 1.1)
            horizon = np.array([0.55, 0.65, 0.8]) * rng.uniform(0.8, 1.2)
            ambient = np.array([0.55, 0.62, 0.78]) * rng.uniform(0.5, 0.8)
            clouds = rng.uniform(0.0, 0.7)
        return Light(
            sun=sun,
            sun_rgb=sun_rgb,
            ambient_rgb=ambient,
            zenith_rgb=zenith,
            horizon_rgb=horizon,
            visibility=float(np.exp(rng.uniform(np.log(150.0), np.log(1500.0)))),
            clouds=float(clouds),
            cloud_rgb=np.array([0.85, 0.85, 0.87]) * rng.uniform(0.7, 1.1),
        )

    def post(self) -> Post:
        rng = self.rng
        return Post(
            key=rng.uniform(0.16, 0.3),
            white_balance=np.exp(rng.normal(0.0, 0.05, 3)),
            noise=rng.uniform(0.6, 3.5) / 255.0,
            blur=rng.uniform(0.0, 0.6),
            vignette=rng.uniform(0.0, 0.35),
            contrast=rng.uniform(0.85, 1.15),
        )


def make_scene(rng: np.random.Generator, size: tuple[int, int]) -> Scene:
    """A random street scene for an image of ``size`` = (H, W)."""
    st = _Street(rng, size)
    st.sidewalks()
    st.traffic()
    st.furniture()
    st.pedestrians()
    st.frontage()
    return Scene(
        camera=st.camera,
        prims=st.prims,
        ground=st.ground,
        light=st.light(),
        post=st.post(),
        meta={"urban": st.urban, "sky_tex": float(rng.uniform(0.0, 256.0))},
    )


__all__ = ["Ground", "Light", "Post", "Scene", "make_scene"]


def _plain_building(
    rng: np.random.Generator,
    center: tuple[float, float, float],
    half: tuple[float, float, float],
) -> Prim:
    """A windowed building box with random facade colour, glass and window grid.

    The random draws happen in a fixed order (facade, glass, storey height, window
    spacing, window fraction, style, texture offset), so scenes stay reproducible.
    """
    return make(
        BOX,
        center,
        half,
        ob.BUILDING,
        pal.M_BUILDING,
        pal.pick(rng, pal.BUILDING, 0.07),
        color2=pal.pick(rng, pal.GLASS, 0.12),
        params=(
            rng.uniform(2.8, 3.8),
            rng.uniform(2.0, 4.2),
            rng.uniform(0.3, 0.7),
            float(rng.integers(0, 4)),
        ),
        tex=float(rng.uniform(0, 256)),
    )
