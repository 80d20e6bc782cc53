"""Composite street objects built from convex primitives.

Each builder draws its own sizes and colours from ``rng`` and returns world-space
primitives. Objects are modelled in an object frame (x right, y up, z forward, origin on
the ground under the object's centre) and then turned by ``yaw`` about the vertical and
moved to ``(x, base_y, z)``.
"""

from __future__ import annotations

import math

import numpy as np

from scenemtl.codecs.classes import train_id
from scenemtl.data.procedural import palette as pal
from scenemtl.data.procedural import parts as pt
from scenemtl.data.procedural.draws import Weighted
from scenemtl.data.procedural.geometry import (
    BOX,
    CUT_FOLIAGE,
    CYLINDER,
    ELLIPSOID,
    ROUNDED_BOX,
    Prim,
    make,
    rot_x,
    rot_y,
    rot_z,
)

ROAD, SIDEWALK, BUILDING, WALL, FENCE, POLE, TRAFFIC_LIGHT, TRAFFIC_SIGN = range(8)
VEGETATION, TERRAIN, SKY, PERSON, RIDER, CAR, TRUCK, BUS, TRAIN = range(8, 17)
MOTORCYCLE, BICYCLE = 17, 18

# Wheels: a cylinder whose axis (local y) lies along the object's x axis.
_AXLE = rot_z(math.pi / 2)

# Paint flags (params[3] of M_PAINT): glass on the side faces, glass on the end faces,
# head/tail lights on the end faces, one continuous glass band without pillars.
SIDE_GLASS, END_GLASS, LIGHTS, BAND = 1, 2, 4, 8


def _check_ids() -> None:
    # The constants above mirror the Cityscapes table; fail loudly if it ever changes.
    names = {ROAD: "road", TRAFFIC_SIGN: "traffic sign", SKY: "sky", BICYCLE: "bicycle"}
    for value, name in names.items():
        if train_id(name) != value:
            raise RuntimeError(f"trainId of {name!r} is not {value}")


_check_ids()


class Placer:
    """Moves parts from an object frame to the world: turn by ``yaw``, then translate."""

    def __init__(self, x: float, base_y: float, z: float, yaw: float = 0.0) -> None:
        self.origin = np.array([x, base_y, z])
        self.yaw = yaw
        self.turn = None if yaw == 0.0 else rot_y(yaw)
        self.prims: list[Prim] = []

    def add(
        self,
        shape: int,
        center: tuple[float, float, float],
        half: tuple[float, float, float],
        label: int,
        material: int,
        color: np.ndarray,
        rotation: np.ndarray | None = None,
        **kw: object,
    ) -> Prim:
        c = np.asarray(center, dtype=float)
        if self.turn is None:
            world_c = self.origin + c
            rot = rotation
        else:
            world_c = self.origin + self.turn @ c
            rot = self.turn if rotation is None else self.turn @ rotation
        prim = make(shape, world_c, half, label, material, color, rotation=rot, **kw)
        self.prims.append(prim)
        return prim


def _wheel(pl: Placer, x: float, y: float, z: float, r: float, w: float, label: int) -> None:
    rim = pal.srgb(150, 150, 150) * 0.8
    pl.add(
        CYLINDER,
        (x, y, z),
        (r, w, r),
        label,
        pal.M_TYRE,
        pal.srgb(28, 28, 30),
        rotation=_AXLE,
        color2=rim,
        shadow=False,
    )


# --------------------------------------------------------------------------------------
# vehicles


def car(rng: np.random.Generator, x: float, z: float, yaw: float) -> list[Prim]:
    """A passenger car or van, ~4.3 m long, label car."""
    pl = Placer(x, 0.0, z, yaw)
    van = rng.random() < 0.12
    length = rng.uniform(4.4, 5.2) if van else rng.uniform(3.7, 4.9)
    width = rng.uniform(1.7, 1.98)
    height = rng.uniform(1.9, 2.25) if van else rng.uniform(1.38, 1.72)
    paint = pal.pick(rng, pal.CAR, 0.06)
    glass = pal.pick(rng, pal.GLASS, 0.1) * 0.6
    belt = rng.uniform(0.82, 1.0)
    tex = float(rng.uniform(0, 256))
    pl.add(
        ROUNDED_BOX,
        (0, (0.22 + belt) / 2, 0),
        (width / 2, (belt - 0.22) / 2, length / 2),
        CAR,
        pal.M_PAINT,
        paint,
        color2=glass,
        params=(3.0, 3.0, 0.0, LIGHTS),
        tex=tex,
        round_scale=(1.3, 2.5, 1.1),
    )
    if van:
        cab_len, shift = length * 0.42, -length * 0.06
    else:
        cab_len, shift = length * rng.uniform(0.24, 0.32), -length * rng.uniform(0.02, 0.1)
    pl.add(
        ROUNDED_BOX,
        (0, (belt + height) / 2 - 0.02, shift),
        (width / 2 - 0.08, (height - belt) / 2 + 0.02, cab_len),
        CAR,
        pal.M_PAINT,
        paint,
        color2=glass,
        params=(-0.75, 0.9, rng.uniform(0.9, 1.3), SIDE_GLASS | END_GLASS),
        tex=tex,
        round_scale=(1.35, 1.45, 1.12),
    )
    r = rng.uniform(0.3, 0.36)
    for sx in (-1, 1):
        for sz in (-1, 1):
            _wheel(pl, sx * (width / 2 - 0.14), r, sz * (length / 2 - 0.82), r, 0.11, CAR)
    return pl.prims


def truck(rng: np.random.Generator, x: float, z: float, yaw: float) -> tuple[list[Prim], float]:
    """A box truck (cab + cargo body); returns the prims and the length."""
    pl = Placer(x, 0.0, z, yaw)
    cargo_len = rng.uniform(4.5, 8.0)
    cab_len = 2.1
    length = cargo_len + cab_len + 0.2
    width = rng.uniform(2.3, 2.5)
    cab_h = rng.uniform(2.6, 3.1)
    cargo_h = rng.uniform(3.0, 3.8)
    cab_col = pal.pick(rng, pal.TRUCK, 0.06)
    cargo_col = cab_col if rng.random() < 0.3 else pal.pick(rng, pal.TRUCK, 0.05)
    glass = pal.pick(rng, pal.GLASS, 0.1) * 0.6
    tex = float(rng.uniform(0, 256))
    front = length / 2 - cab_len / 2
    pl.add(
        ROUNDED_BOX,
        (0, (0.5 + cab_h) / 2, front),
        (width / 2 - 0.05, (cab_h - 0.5) / 2, cab_len / 2),
        TRUCK,
        pal.M_PAINT,
        cab_col,
        color2=glass,
        params=(0.05, 0.85, 0.0, END_GLASS | SIDE_GLASS | BAND),
        tex=tex,
        round_scale=(1.3, 2.0, 1.6),
    )
    back = -length / 2 + cargo_len / 2
    pl.add(
        BOX,
        (0, (0.9 + cargo_h) / 2, back),
        (width / 2, (cargo_h - 0.9) / 2, cargo_len / 2),
        TRUCK,
        pal.M_PAINT,
        cargo_col,
        color2=glass,
        params=(3.0, 3.0, 0.0, LIGHTS),
        tex=tex + 40,
    )
    pl.add(
        BOX,
        (0, 0.7, 0.0),
        (width / 2 - 0.2, 0.25, length / 2 - 0.3),
        TRUCK,
        pal.M_METAL,
        pal.srgb(40, 40, 42),
        shadow=False,
    )
    r = 0.5
    for sx in (-1, 1):
        for zz in (front, back - cargo_len / 4, back + cargo_len / 4 - 0.9):
            _wheel(pl, sx * (width / 2 - 0.2), r, zz, r, 0.16, TRUCK)
    return pl.prims, length


def bus(rng: np.random.Generator, x: float, z: float, yaw: float) -> tuple[list[Prim], float]:
    """A city bus with a window band; returns the prims and the length."""
    pl = Placer(x, 0.0, z, yaw)
    length = rng.uniform(10.5, 12.5)
    width = 2.55
    height = rng.uniform(2.9, 3.2)
    col = pal.pick(rng, pal.BUS, 0.05)
    glass = pal.pick(rng, pal.GLASS, 0.1) * 0.5
    pl.add(
        ROUNDED_BOX,
        (0, (0.3 + height) / 2, 0),
        (width / 2, (height - 0.3) / 2, length / 2),
        BUS,
        pal.M_PAINT,
        col,
        color2=glass,
        params=(-0.1, 0.78, rng.uniform(1.2, 1.8), SIDE_GLASS | END_GLASS | LIGHTS),
        tex=float(rng.uniform(0, 256)),
        round_scale=(1.15, 1.8, 30.0),
    )
    for sx in (-1, 1):
        for zz in (length / 2 - 2.6, -length / 2 + 3.0):
            _wheel(pl, sx * (width / 2 - 0.18), 0.5, zz, 0.5, 0.15, BUS)
    return pl.prims, length


def tram(rng: np.random.Generator, x: float, z: float, yaw: float) -> tuple[list[Prim], float]:
    """A multi-car tram (Cityscapes 'train'); returns the prims and the length."""
    pl = Placer(x, 0.0, z, yaw)
    n = int(rng.integers(2, 4))
    seg = rng.uniform(8.5, 10.5)
    gap = 0.35
    length = n * seg + (n - 1) * gap
    width = rng.uniform(2.3, 2.65)
    height = rng.uniform(3.3, 3.6)
    col = pal.pick(rng, pal.TRAM, 0.05)
    glass = pal.pick(rng, pal.GLASS, 0.1) * 0.5
    period = rng.uniform(1.3, 2.0)
    for i in range(n):
        zc = -length / 2 + seg / 2 + i * (seg + gap)
        flags = SIDE_GLASS | (END_GLASS | LIGHTS if i in (0, n - 1) else 0)
        pl.add(
            ROUNDED_BOX,
            (0, (0.35 + height) / 2, zc),
            (width / 2, (height - 0.35) / 2, seg / 2),
            TRAIN,
            pal.M_PAINT,
            col,
            color2=glass,
            params=(-0.15, 0.7, period, flags),
            tex=float(rng.uniform(0, 256)),
            round_scale=(1.12, 1.6, 30.0),
        )
        pl.add(
            BOX,
            (0, height + 0.15, zc),
            (0.5, 0.15, 1.2),
            TRAIN,
            pal.M_METAL,
            pal.srgb(60, 60, 62),
            shadow=False,
        )
    return pl.prims, length


def _rider_body(
    pl: Placer,
    rng: np.random.Generator,
    hip: tuple[float, float, float],
    lean: float,
    hand_z: float,
    hand_y: float,
    helmet: bool,
) -> None:
    """A seated person with hips at ``hip`` leaning forward by ``lean`` radians."""
    top = pal.pick(rng, pal.CLOTH, 0.1)
    pants = pal.pick(rng, pal.CLOTH, 0.1)
    skin = pal.pick(rng, pal.SKIN, 0.05)
    hx, hy, hz = hip
    torso_len = rng.uniform(0.55, 0.65)
    tilt = rot_x(lean)
    up = tilt @ np.array([0.0, 1.0, 0.0])
    c = np.array(hip) + up * torso_len / 2
    pl.add(
        ROUNDED_BOX,
        tuple(c),
        (0.19, torso_len / 2, 0.12),
        RIDER,
        pal.M_CLOTH,
        top,
        rotation=tilt,
        round_scale=1.25,
        part=pt.TORSO,
    )
    head_c = np.array(hip) + up * (torso_len + 0.14)
    pl.add(ELLIPSOID, tuple(head_c), (0.1, 0.12, 0.11), RIDER, pal.M_SKIN, skin, part=pt.HEAD)
    if helmet:
        pl.add(
            ELLIPSOID,
            tuple(head_c + np.array([0.0, 0.04, 0.0])),
            (0.13, 0.12, 0.15),
            RIDER,
            pal.M_PAINT,
            pal.pick(rng, pal.CAR, 0.05),
            params=(3.0, 3.0, 0.0, 0),
            part=pt.HEAD,
        )
    # Thighs forward, shins down to the pedals/pegs.
    for sx in (-1, 1):
        knee = np.array([hx + sx * 0.13, hy + 0.02, hz + 0.4])
        mid = (np.array([hx + sx * 0.12, hy, hz]) + knee) / 2
        pl.add(
            CYLINDER,
            tuple(mid),
            (0.08, 0.22, 0.08),
            RIDER,
            pal.M_CLOTH,
            pants,
            rotation=rot_x(math.pi / 2 - 0.05),
            part=pt.UPPER_LEG,
        )
        foot = knee + np.array([0.0, -0.45, -0.05])
        pl.add(
            CYLINDER,
            tuple((knee + foot) / 2),
            (0.065, 0.23, 0.065),
            RIDER,
            pal.M_CLOTH,
            pants,
            part=pt.LOWER_LEG,
        )
    shoulder = np.array(hip) + up * (torso_len - 0.08)
    for sx in (-1, 1):
        s = shoulder + np.array([sx * 0.22, 0.0, 0.0])
        hand = np.array([hx + sx * 0.25, hand_y, hand_z])
        v = hand - s
        length = float(np.linalg.norm(v))
        ang = math.atan2(v[2], v[1])
        pl.add(
            CYLINDER,
            tuple((s + hand) / 2),
            (0.05, length / 2, 0.05),
            RIDER,
            pal.M_CLOTH,
            top,
            rotation=rot_x(ang),
            # local +y points from the shoulder to the hand
            part=pt.LOWER_ARM,
            part_below=pt.UPPER_ARM,
        )


def bicycle(
    rng: np.random.Generator,
    x: float,
    z: float,
    yaw: float,
    base_y: float = 0.0,
    rider: bool = True,
) -> list[Prim]:
    """A bicycle (label bicycle), optionally ridden (label rider)."""
    pl = Placer(x, base_y, z, yaw)
    frame = pal.pick(rng, pal.CLOTH, 0.1)
    r = rng.uniform(0.32, 0.35)
    wb = 0.52
    for zz in (-wb, wb):
        _wheel(pl, 0.0, r, zz, r, 0.022, BICYCLE)
    pl.add(
        BOX, (0, 0.78, 0.02), (0.025, 0.025, 0.3), BICYCLE, pal.M_METAL, frame, params=(0, 0, 0, 0)
    )
    pl.add(
        BOX, (0, 0.55, 0.12), (0.025, 0.03, 0.36), BICYCLE, pal.M_METAL, frame, rotation=rot_x(0.75)
    )
    pl.add(
        BOX, (0, 0.62, -0.3), (0.025, 0.3, 0.025), BICYCLE, pal.M_METAL, frame, rotation=rot_x(-0.3)
    )
    pl.add(
        BOX, (0, 0.98, wb - 0.12), (0.28, 0.018, 0.018), BICYCLE, pal.M_METAL, pal.srgb(40, 40, 40)
    )
    pl.add(BOX, (0, 0.93, -0.36), (0.07, 0.03, 0.12), BICYCLE, pal.M_METAL, pal.srgb(30, 30, 30))
    if rider:
        _rider_body(
            pl,
            rng,
            (0.0, 0.97, -0.36),
            lean=rng.uniform(0.2, 0.5),
            hand_z=wb - 0.12,
            hand_y=1.0,
            helmet=rng.random() < 0.4,
        )
    return pl.prims


def motorcycle(
    rng: np.random.Generator,
    x: float,
    z: float,
    yaw: float,
    rider: bool = True,
    base_y: float = 0.0,
) -> list[Prim]:
    """A motorcycle or scooter (label motorcycle), optionally ridden (label rider)."""
    pl = Placer(x, base_y, z, yaw)
    col = pal.pick(rng, pal.CAR, 0.06)
    r = rng.uniform(0.28, 0.33)
    wb = rng.uniform(0.65, 0.75)
    for zz in (-wb, wb):
        _wheel(pl, 0.0, r, zz, r, 0.065, MOTORCYCLE)
    pl.add(
        ROUNDED_BOX,
        (0, 0.62, 0.0),
        (0.17, 0.22, 0.62),
        MOTORCYCLE,
        pal.M_PAINT,
        col,
        params=(3.0, 3.0, 0.0, 0),
        round_scale=1.2,
    )
    pl.add(
        ROUNDED_BOX,
        (0, 0.87, -0.25),
        (0.15, 0.06, 0.35),
        MOTORCYCLE,
        pal.M_CLOTH,
        pal.srgb(30, 30, 30),
    )
    pl.add(
        BOX, (0, 1.05, wb - 0.15), (0.33, 0.02, 0.02), MOTORCYCLE, pal.M_METAL, pal.srgb(50, 50, 50)
    )
    pl.add(
        BOX,
        (0, 0.8, wb - 0.1),
        (0.03, 0.25, 0.03),
        MOTORCYCLE,
        pal.M_METAL,
        pal.srgb(80, 80, 80),
        rotation=rot_x(-0.35),
    )
    if rider:
        _rider_body(
            pl,
            rng,
            (0.0, 0.93, -0.25),
            lean=rng.uniform(0.1, 0.4),
            hand_z=wb - 0.15,
            hand_y=1.05,
            helmet=True,
        )
    return pl.prims


# --------------------------------------------------------------------------------------
# people


def person(
    rng: np.random.Generator, x: float, z: float, yaw: float, base_y: float, walking: bool = True
) -> list[Prim]:
    """A pedestrian (label person), standing or mid-stride."""
    pl = Placer(x, base_y, z, yaw)
    child = rng.random() < 0.08
    h = rng.uniform(1.1, 1.4) if child else rng.uniform(1.55, 1.95)
    s = h / 1.75
    top = pal.pick(rng, pal.CLOTH, 0.1)
    pants = pal.pick(rng, pal.CLOTH, 0.1)
    skin = pal.pick(rng, pal.SKIN, 0.05)
    hair = pal.pick(rng, pal.HAIR, 0.1)
    leg = 0.48 * h
    hip_y = leg
    stride = rng.uniform(0.15, 0.4) if walking else rng.uniform(0.0, 0.06)
    dress = rng.random() < 0.15
    for side, a in ((-1, stride), (1, -stride)):
        rot = rot_x(a)
        c = np.array([side * 0.095 * s, hip_y, 0.0]) + rot @ np.array([0.0, -leg / 2, 0.0])
        pl.add(
            CYLINDER,
            tuple(c),
            (0.075 * s, leg / 2, 0.085 * s),
            PERSON,
            pal.M_CLOTH,
            pants,
            rotation=rot,
            # local +y points from the foot to the hip
            part=pt.UPPER_LEG,
            part_below=pt.LOWER_LEG,
        )
    torso_h = 0.3 * h
    if dress:
        pl.add(
            ROUNDED_BOX,
            (0, hip_y - 0.05, 0),
            (0.2 * s, 0.2 * s, 0.15 * s),
            PERSON,
            pal.M_CLOTH,
            top,
            round_scale=1.2,
            part=pt.UPPER_LEG,  # a skirt: annotators label the body under it
        )
    pl.add(
        ROUNDED_BOX,
        (0, hip_y + torso_h / 2, 0),
        (0.2 * s, torso_h / 2 + 0.02, 0.12 * s),
        PERSON,
        pal.M_CLOTH,
        top,
        round_scale=1.22,
        part=pt.TORSO,
    )
    sleeve = top if rng.random() < 0.7 else skin
    arm = 0.34 * h
    shoulder_y = hip_y + torso_h - 0.04
    for side, a in ((-1, -stride * 0.8), (1, stride * 0.8)):
        rot = rot_x(a)
        c = np.array([side * 0.25 * s, shoulder_y, 0.0]) + rot @ np.array([0.0, -arm / 2, 0.0])
        pl.add(
            CYLINDER,
            tuple(c),
            (0.05 * s, arm / 2, 0.05 * s),
            PERSON,
            pal.M_CLOTH,
            sleeve,
            rotation=rot,
            # local +y points from the hand to the shoulder
            part=pt.UPPER_ARM,
            part_below=pt.LOWER_ARM,
        )
    head_r = 0.115 * s
    pl.add(
        ELLIPSOID,
        (0, h - head_r, 0),
        (0.085 * s, head_r, 0.1 * s),
        PERSON,
        pal.M_SKIN,
        skin,
        part=pt.HEAD,
    )
    pl.add(
        ELLIPSOID,
        (0, h - head_r * 0.55, -0.015),
        (0.095 * s, head_r * 0.7, 0.108 * s),
        PERSON,
        pal.M_CLOTH,
        hair,
        part=pt.HEAD,
    )
    if rng.random() < 0.25:
        pl.add(
            ROUNDED_BOX,
            (0, hip_y + torso_h * 0.55, -0.17 * s),
            (0.15 * s, 0.2 * s, 0.07),
            PERSON,
            pal.M_CLOTH,
            pal.pick(rng, pal.CLOTH, 0.1),
            round_scale=1.2,
        )
    return pl.prims


# --------------------------------------------------------------------------------------
# vegetation


_TREE_KIND = Weighted(range(4), [0.62, 0.12, 0.14, 0.12])


def tree(
    rng: np.random.Generator, x: float, z: float, base_y: float, scale: float = 1.0
) -> list[Prim]:
    """A tree: bark trunk and a crown of leaf clumps with gaps (label vegetation)."""
    pl = Placer(x, base_y, z)
    trunk_h = rng.uniform(1.8, 4.0) * scale
    trunk_r = rng.uniform(0.1, 0.25) * scale
    pl.add(
        CYLINDER,
        (0, trunk_h / 2 + 0.3, 0),
        (trunk_r, trunk_h / 2 + 0.3, trunk_r),
        VEGETATION,
        pal.M_BARK,
        pal.pick(rng, pal.BARK, 0.08),
        tex=float(rng.uniform(0, 256)),
    )
    kind = _TREE_KIND.draw(rng)  # round, conifer, columnar, broad
    radius = rng.uniform(1.6, 3.6) * scale
    leaf = pal.pick(rng, pal.FOLIAGE, 0.08)
    if kind == 1:
        c = (0, trunk_h + radius * 1.3, 0)
        pl.add(
            ELLIPSOID,
            c,
            (radius * 0.7, radius * 1.6, radius * 0.7),
            VEGETATION,
            pal.M_FOLIAGE,
            leaf * 0.7,
            tex=float(rng.uniform(0, 256)),
            cutout=CUT_FOLIAGE,
        )
        return pl.prims
    if kind == 2:
        r = radius * rng.uniform(0.35, 0.5)
        tall = rng.uniform(2.5, 4.0) * r
        for i in range(2):
            pl.add(
                ELLIPSOID,
                (rng.normal(0, 0.1), trunk_h + tall * (0.9 + 0.8 * i), 0),
                (r, tall, r),
                VEGETATION,
                pal.M_FOLIAGE,
                leaf * np.exp(rng.normal(0, 0.08, 3)),
                tex=float(rng.uniform(0, 256)),
                cutout=CUT_FOLIAGE,
            )
        return pl.prims
    if kind == 3:
        radius *= 1.3
    # Far trees are a few pixels wide: fewer leaf clumps cost less and look the same.
    far = math.hypot(x, z) > 70.0
    n = int(rng.integers(1, 3)) if far else int(rng.integers(3, 6))
    centre_y = trunk_h + radius * 0.75
    for _ in range(n):
        off = rng.uniform(-0.55, 0.55, 3) * radius * np.array([1.0, 0.6, 1.0])
        r = radius * (rng.uniform(0.75, 0.95) if far else rng.uniform(0.55, 0.8))
        pl.add(
            ELLIPSOID,
            (off[0], centre_y + off[1], off[2]),
            (r, r * rng.uniform(0.7, 1.0), r),
            VEGETATION,
            pal.M_FOLIAGE,
            leaf * np.exp(rng.normal(0, 0.08, 3)),
            tex=float(rng.uniform(0, 256)),
            cutout=CUT_FOLIAGE,
        )
    return pl.prims


def bush(rng: np.random.Generator, x: float, z: float, base_y: float) -> list[Prim]:
    r = rng.uniform(0.5, 1.3)
    pl = Placer(x, base_y, z)
    pl.add(
        ELLIPSOID,
        (0, r * 0.7, 0),
        (r * rng.uniform(0.9, 1.5), r * 0.8, r),
        VEGETATION,
        pal.M_FOLIAGE,
        pal.pick(rng, pal.FOLIAGE, 0.1),
        tex=float(rng.uniform(0, 256)),
    )
    return pl.prims


def hedge(
    rng: np.random.Generator,
    x0: float,
    x1: float,
    z0: float,
    z1: float,
    base_y: float,
    height: float,
) -> Prim:
    return make(
        ROUNDED_BOX,
        ((x0 + x1) / 2, base_y + height / 2, (z0 + z1) / 2),
        (abs(x1 - x0) / 2, height / 2, abs(z1 - z0) / 2),
        VEGETATION,
        pal.M_FOLIAGE,
        pal.pick(rng, pal.FOLIAGE, 0.08),
        tex=float(rng.uniform(0, 256)),
        round_scale=1.6,
    )


# --------------------------------------------------------------------------------------
# street furniture


def streetlamp(
    rng: np.random.Generator, x: float, z: float, base_y: float, toward: float
) -> list[Prim]:
    """A lamp post with an arm reaching over the road (``toward`` = +-1 along x)."""
    pl = Placer(x, base_y, z)
    col = pal.pick(rng, pal.METAL, 0.05)
    h = rng.uniform(6.0, 9.0)
    r = rng.uniform(0.07, 0.11)
    pl.add(CYLINDER, (0, h / 2, 0), (r, h / 2, r), POLE, pal.M_METAL, col)
    arm = rng.uniform(0.8, 2.4)
    pl.add(BOX, (toward * arm / 2, h - 0.05, 0), (arm / 2, 0.04, 0.04), POLE, pal.M_METAL, col)
    pl.add(
        ROUNDED_BOX,
        (toward * arm, h - 0.12, 0),
        (0.32, 0.08, 0.16),
        POLE,
        pal.M_METAL,
        col * 0.8,
        round_scale=1.3,
    )
    return pl.prims


def sign_post(
    rng: np.random.Generator, x: float, z: float, base_y: float, facing: float
) -> list[Prim]:
    """A thin post with one or two traffic signs whose faces look along ``facing`` yaw
    (0: towards the camera)."""
    pl = Placer(x, base_y, z)
    h = rng.uniform(2.3, 3.3)
    col = pal.pick(rng, pal.METAL, 0.05)
    pl.add(CYLINDER, (0, h / 2, 0), (0.035, h / 2, 0.035), POLE, pal.M_METAL, col)
    turn = rot_y(facing)
    y = h - 0.05
    for _ in range(1 + int(rng.random() < 0.35)):
        kind = int(rng.integers(0, 7))
        size = rng.uniform(0.3, 0.45)
        c = (0.0, y - size, 0.0) + turn @ np.array([0.0, 0.0, -0.05])
        face = pal.SIGN_FACE[[0, 1, 0, 1, 3, 4, 0][kind]]
        params = (float(kind), 0.0, 0.0, 0.0)
        if kind in (0, 1, 6):  # round
            pl.add(
                ELLIPSOID,
                tuple(c),
                (size, size, 0.02),
                TRAFFIC_SIGN,
                pal.M_SIGN,
                face,
                rotation=turn,
                params=params,
            )
        elif kind in (2, 4):  # diamond / triangle-ish
            pl.add(
                BOX,
                tuple(c),
                (size * 0.72, size * 0.72, 0.015),
                TRAFFIC_SIGN,
                pal.M_SIGN,
                face,
                rotation=turn @ rot_z(math.pi / 4),
                params=params,
            )
        else:  # rectangular plate
            w = size * rng.uniform(0.8, 1.8)
            pl.add(
                BOX,
                tuple(c),
                (w, size * 0.75, 0.015),
                TRAFFIC_SIGN,
                pal.M_SIGN,
                face,
                rotation=turn,
                params=params,
            )
        y -= 2 * size + 0.08
    return pl.prims


def _light_housing(
    pl: Placer, rng: np.random.Generator, c: tuple[float, float, float], facing: float, state: int
) -> None:
    col = pal.pick(rng, pal.METAL, 0.05) * 0.5
    if rng.random() < 0.2:
        col = pal.srgb(200, 170, 40)
    pl.add(
        BOX,
        c,
        (0.17, 0.46, 0.13),
        TRAFFIC_LIGHT,
        pal.M_TLIGHT,
        col,
        rotation=rot_y(facing),
        params=(float(state), 0.0, 0.0, 0.0),
    )


def traffic_light(
    rng: np.random.Generator,
    x: float,
    z: float,
    base_y: float,
    facing: float,
    mast_to: float | None = None,
) -> list[Prim]:
    """A traffic-light post (label pole) with a signal head (label traffic light); with
    ``mast_to`` an arm spans the road to that x and carries one or two more heads."""
    pl = Placer(x, base_y, z)
    col = pal.pick(rng, pal.METAL, 0.05)
    state = int(rng.integers(0, 3))
    h = rng.uniform(2.6, 3.4)
    if mast_to is None:
        pl.add(CYLINDER, (0, h / 2, 0), (0.07, h / 2, 0.07), POLE, pal.M_METAL, col)
        _light_housing(pl, rng, (0, h + 0.35, 0), facing, state)
        return pl.prims
    mh = rng.uniform(5.5, 6.8)
    pl.add(CYLINDER, (0, mh / 2, 0), (0.12, mh / 2, 0.12), POLE, pal.M_METAL, col)
    _light_housing(pl, rng, (0, h, -0.2), facing, state)
    span = mast_to - x
    pl.add(BOX, (span / 2, mh - 0.2, 0), (abs(span) / 2, 0.07, 0.07), POLE, pal.M_METAL, col)
    for frac in (0.55, 0.9)[: 1 + int(rng.random() < 0.6)]:
        _light_housing(pl, rng, (span * frac, mh - 0.75, 0), facing, state)
    return pl.prims


def bollard(rng: np.random.Generator, x: float, z: float, base_y: float, col: np.ndarray) -> Prim:
    h = rng.uniform(0.7, 1.0)
    return make(CYLINDER, (x, base_y + h / 2, z), (0.07, h / 2, 0.07), POLE, pal.M_METAL, col)
