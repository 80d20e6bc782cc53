"""Boundaries of the procedural generator: label changes, thinned; an optional layer that
leaves every other file of a dataset byte for byte as it was."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from scenemtl.codecs.binary import read_binary_map
from scenemtl.codecs.classes import HUMAN_PART_CLASSES as PART_CLASSES
from scenemtl.data import format as fmt
from scenemtl.data.check import check_dataset
from scenemtl.data.procedural import SynthParams, synthesize
from scenemtl.data.procedural.boundaries import label_boundaries
from scenemtl.data.procedural.objects import PERSON, RIDER
from scenemtl.tasks import build_tasks, dataset_task_specs

TINY = SynthParams(train=3, val=1, test=1, size=(24, 48), seed=3)


def _changes(labels: np.ndarray) -> np.ndarray:
    """Pixels with a 4-neighbour of another label, by a loop (the definition)."""
    h, w = labels.shape
    out = np.zeros((h, w), dtype=bool)
    for y in range(h):
        for x in range(w):
            for dy, dx in ((0, 1), (1, 0), (0, -1), (-1, 0)):
                yy, xx = y + dy, x + dx
                if 0 <= yy < h and 0 <= xx < w and labels[yy, xx] != labels[y, x]:
                    out[y, x] = True
    return out


def test_a_straight_change_gives_one_line_one_pixel_wide():
    labels = np.zeros((8, 12), dtype=np.uint8)
    labels[:, 6:] = 3
    edges = label_boundaries(labels)
    assert edges.dtype == np.uint8 and set(np.unique(edges)) <= {0, 1}
    # the Laplacian marks columns 5 and 6; thinning keeps one pixel per row there, but
    # may shorten the line by its end pixel at the frame (outside counts as background)
    per_row = edges[:, [5, 6]].sum(axis=1)
    assert (per_row[1:-1] == 1).all() and per_row.max() == 1
    assert edges.sum() == per_row.sum() >= 7
    assert not label_boundaries(np.full((5, 5), 7)).any()  # the frame is no boundary


def test_rendered_boundaries_lie_on_label_changes_and_keep_every_band():
    from scipy import ndimage

    from scenemtl.data.procedural.generate import sample_layers

    for index in range(3):
        semseg = sample_layers(TINY, "train", index, normals=False)["semseg"]
        edges = label_boundaries(semseg).astype(bool)
        changed = _changes(semseg)
        assert edges.any() and (edges <= changed).all()
        # thinning keeps topology: no 8-connected band of changes loses all its pixels
        bands, count = ndimage.label(changed, structure=np.ones((3, 3)))
        assert set(np.unique(bands[edges]).tolist()) == set(range(1, count + 1))


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != "dataset.json"
    }


def test_boundaries_are_an_extra_layer_the_other_files_do_not_notice(tmp_path):
    plain = synthesize(tmp_path / "plain", TINY, workers=1, progress=False)
    four = SynthParams(
        **{
            **TINY.to_json(),
            "size": TINY.size,
            "tasks": ("semseg", "depth", "boundaries", "human_parts"),
        }
    )
    assert TINY.to_json() == SynthParams(**{**TINY.to_json(), "size": TINY.size}).to_json()
    assert "tasks" not in TINY.to_json()  # the default dataset keeps its cache key
    info = synthesize(tmp_path / "edges", four, workers=1, progress=False)
    assert info.extra_tasks == {
        "boundaries": {"kind": "boundaries", "max_dist": 0.0075},
        "human_parts": {"kind": "segmentation", "classes": list(PART_CLASSES)},
    }
    a, b = _files(tmp_path / "plain"), _files(tmp_path / "edges")
    extra = {k for k in b if "/boundaries/" in k or "/human_parts/" in k}
    assert len(extra) == 10 and set(b) - extra == set(a)
    assert all(a[k] == b[k] for k in a)  # encoded files: bytes, not floats
    assert plain.extra_tasks == {}

    root = tmp_path / "edges"
    assert check_dataset(root) == []
    for split, n in four.splits.items():
        for i in range(n):
            sem = fmt.read_semseg(fmt.label_path(root, split, "semseg", i))
            got = read_binary_map(fmt.label_path(root, split, "boundaries", i))
            assert (got == label_boundaries(sem)).all()
    tasks = build_tasks(dataset_task_specs(fmt.read_info(root)))
    assert [t.kind for t in tasks] == ["segmentation", "depth", "boundaries", "segmentation"]
    stats = fmt.read_info(root).stats
    assert "boundaries_positive_fraction" in stats
    assert len(stats["human_parts_class_pixel_frequency"]) == len(PART_CLASSES)


def test_the_montage_shows_the_boundaries_as_a_fourth_panel():
    from scenemtl.data.procedural.generate import sample_layers
    from scenemtl.data.procedural.montage import montage

    grid = montage(TINY, "val", [0], columns=1, boundaries=True)
    h, w = TINY.size
    assert grid.shape == (h, 4 * w, 3)
    edges = label_boundaries(sample_layers(TINY, "val", 0, normals=False)["semseg"])
    assert (grid[:, 3 * w :, 0] == edges * 255).all()


def test_parts_lie_on_people_head_above_torso_above_legs():
    """Image 38 of the default size has nine pedestrians and a cyclist in view (found by
    rendering the first 40): parts only on person/rider pixels, every part present, and
    in image rows head < torso < upper legs < lower legs, upper arms < lower arms."""
    from scenemtl.data.procedural.generate import sample_layers

    params = SynthParams(train=40, val=0, test=0)
    layers = sample_layers(params, "train", 38, normals=False, parts=True)
    parts, semseg = layers["human_parts"], layers["semseg"]
    people = np.isin(semseg, [PERSON, RIDER])
    assert parts.dtype == np.uint8 and not parts[~people].any()
    rows = {k: np.nonzero(parts == k)[0] for k in range(1, len(PART_CLASSES))}
    assert all(r.size > 20 for r in rows.values())
    mean = {k: float(r.mean()) for k, r in rows.items()}
    head, torso, upper_arm, lower_arm, upper_leg, lower_leg = (mean[k] for k in range(1, 7))
    assert head < torso < upper_leg < lower_leg and upper_arm < lower_arm
    # the other layers do not notice
    plain = sample_layers(params, "train", 38, normals=False)
    assert (
        all((plain[k] == layers[k]).all() for k in ("rgb", "semseg")) and "human_parts" not in plain
    )
