"""Human parts of the procedural pedestrians and riders: the six-part table of
Multi-Task-Learning-PyTorch's PASCAL-Context loader (``num_human_parts=6``).

Its mapping of the PASCAL-Part names, which the generator follows body part by body part:
head (hair, ears, eyes, nose, mouth, head) 1, torso (and neck) 2, upper arms 3, lower arms
and hands 4, upper legs 5, lower legs and feet 6; 0 is every other pixel (background, and
what a person carries). Each primitive of a body says its part (:attr:`Prim.part
<scenemtl.data.procedural.geometry.Prim.part>`); a limb drawn as one cylinder from joint
to joint names a second part for its half on the other side of its centre
(``part_below``: local y < 0), so a pedestrian's straight arm is upper arm above the elbow
and lower arm below.
"""

from __future__ import annotations

from typing import Any

BACKGROUND, HEAD, TORSO, UPPER_ARM, LOWER_ARM, UPPER_LEG, LOWER_LEG = range(7)
SAME_PART = -1
"""``Prim.part_below`` of a primitive that is one part throughout."""

PART_CLASSES: list[dict[str, Any]] = [
    {"name": "background", "color": [0, 0, 0]},
    {"name": "head", "color": [220, 20, 60]},
    {"name": "torso", "color": [255, 160, 0]},
    {"name": "upper arm", "color": [70, 190, 70]},
    {"name": "lower arm", "color": [0, 120, 255]},
    {"name": "upper leg", "color": [190, 80, 255]},
    {"name": "lower leg", "color": [0, 220, 220]},
]
"""The class table of the ``parts`` task (dataset.json ``extra_tasks``)."""

PARTS_TASK_SPEC: dict[str, Any] = {"kind": "segmentation", "classes": PART_CLASSES}
