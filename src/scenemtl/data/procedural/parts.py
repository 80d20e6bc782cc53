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

from scenemtl.codecs.classes import HUMAN_PART_CLASSES

BACKGROUND, HEAD, TORSO, UPPER_ARM, LOWER_ARM, UPPER_LEG, LOWER_LEG = range(7)
SAME_PART = -1
"""``Prim.part_below`` of a primitive that is one part throughout."""

PARTS_TASK_SPEC: dict[str, Any] = {
    "kind": "segmentation",
    "classes": [dict(c) for c in HUMAN_PART_CLASSES],
}
"""The spec of the ``human_parts`` task (dataset.json ``extra_tasks``)."""
