"""The model card and classes.json ask each task what to write (tags, what a prediction
is, its class table): a kind they have never heard of gets a card without edits there."""

from __future__ import annotations

from types import SimpleNamespace

import yaml

from scenemtl.model_folder import class_tables
from scenemtl.modelcard import model_card
from scenemtl.tasks.base import Task
from scenemtl.tasks.depth import DepthTask
from scenemtl.tasks.normals import NormalsTask
from scenemtl.tasks.segmentation import SegmentationTask

TABLE = [{"name": "road", "color": [128, 64, 128]}, {"name": "sky", "color": [70, 130, 180]}]


class _Toy(Task):
    kind = "toy"
    target_channels = 2


def _card(tasks: list[Task]) -> tuple[dict, str]:
    model = SimpleNamespace(source=None, extras={}, module=SimpleNamespace(task_list=tasks))
    config = {"net": {"architecture": "joint", "encoder": "resnet18"}}
    card = model_card(model, config, has_training_config=False)
    _, front, body = card.split("---\n", 2)
    return yaml.safe_load(front), body


def test_the_card_lists_each_tasks_tags_outputs_and_classes():
    seg = SegmentationTask("semseg", TABLE)
    depth = DepthTask("depth", encoding="meters16", range_m=(0.5, 10.0))
    meta, body = _card([seg, depth, NormalsTask("normals")])
    assert meta["tags"] == [
        "scenemtl",
        "multi-task-learning",
        "semantic-segmentation",
        "depth-estimation",
    ]
    assert "predicting semseg, depth, normals from one RGB image" in body
    assert "| semseg | segmentation | class ids int64 [H,W], 0..1 (table below) |" in body
    assert "| depth | depth | meters float32 [H,W] (trained on `meters16` depth PNGs) |" in body
    assert "| normals | normals | unit vectors float32 [3,H,W] (camera frame) |" in body
    assert "## Classes of semseg" in body and "| 1 | sky | (70, 130, 180) |" in body
    assert body.count("## Classes of") == 1


def test_a_new_kind_gets_a_card_by_the_defaults():
    meta, body = _card([_Toy("blobs", 2)])
    assert meta["tags"] == ["scenemtl", "multi-task-learning"]
    assert "| blobs | toy | toy values [2,H,W] (see the task kind's docs) |" in body
    assert "## Classes of" not in body


def test_class_tables_hold_the_tasks_with_classes():
    tasks = [DepthTask("depth"), SegmentationTask("parts", TABLE), _Toy("blobs", 2)]
    assert class_tables(tasks) == {"parts": TABLE}
