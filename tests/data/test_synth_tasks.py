"""``data.synth_tasks``: the procedural dataset of ``root: null`` with optional layers."""

from __future__ import annotations

import pytest

from scenemtl.data.datamodule import SceneDataModule
from scenemtl.data.procedural import SynthParams, default_root
from scenemtl.errors import UserError


def test_synth_tasks_choose_the_cached_dataset_with_those_layers():
    plain = SceneDataModule(root=None, synth_size=(64, 128))
    four = SceneDataModule(root=None, synth_size=(64, 128), synth_tasks=["boundaries", "normals"])
    assert plain.data_root == default_root(SynthParams(size=(64, 128)))
    expected = SynthParams(size=(64, 128), tasks=("semseg", "depth", "normals", "boundaries"))
    assert four.data_root == default_root(expected) != plain.data_root


def test_an_unknown_synth_task_is_one_line():
    with pytest.raises(UserError, match="data.synth_tasks: .* not 'sky'"):
        SceneDataModule(root=None, synth_tasks=["sky"])
