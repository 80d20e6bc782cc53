"""Several datasets in one run (``data.datasets``): the union of their tasks is learned,
each batch mixes them in the given ratio, validation reports each one's metrics."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from scenemtl.cli import main
from scenemtl.data.datamodule import SceneDataModule, parse_sources
from scenemtl.data.format import read_info, write_info, write_normals
from scenemtl.data.stats import write_stats
from scenemtl.errors import UserError
from tests.helpers import read_metrics, tiny_config, write_random_dataset


def write_with_normals(root, sizes, image_size, seed=0):
    """A random dataset with semseg, depth and normals."""
    write_random_dataset(root, sizes=sizes, image_size=image_size, seed=seed)
    rng = np.random.default_rng(seed)
    for split, n in sizes.items():
        (root / split / "normals").mkdir(exist_ok=True)
        for i in range(n):
            v = rng.normal(size=(3, *image_size))
            write_normals(root / split / "normals" / f"{i}.png", v / np.linalg.norm(v, axis=0))
    info = read_info(root)
    write_info(
        root,
        dataclasses.replace(info, extra_tasks={"normals": {"kind": "normals", "encoding": "rgb8"}}),
    )


@pytest.fixture(scope="module")
def two_roots(tmp_path_factory):
    base = tmp_path_factory.mktemp("two")
    streets, city = base / "streets", base / "city"
    write_with_normals(streets, {"train": 4, "val": 2}, (32, 48))
    write_random_dataset(city, sizes={"train": 3, "val": 2}, image_size=(40, 40), seed=1)
    write_stats(streets)
    write_stats(city)
    return streets, city


def entries(streets, city, ratio=(3, 1)):
    return [
        {"name": "streets", "root": str(streets), "ratio": ratio[0]},
        {"name": "city", "root": str(city), "ratio": ratio[1]},
    ]


def test_the_union_of_tasks_and_the_batch_shares(two_roots):
    streets, city = two_roots
    dm = SceneDataModule(
        datasets=entries(streets, city), batch_size=4, crop_size=(32, 32), num_workers=0
    )
    assert [t.name for t in dm.tasks] == ["semseg", "depth", "normals"]
    assert dm.dataset_tasks() == {
        "streets": ["semseg", "depth", "normals"],
        "city": ["semseg", "depth"],
    }
    assert [s.batch_share for s in dm.sources] == [3, 1]
    dm.setup("fit")
    parts = next(iter(dm.train_dataloader()))[0]
    assert parts["streets"]["labelled"]["normals"].tolist() == [True] * 3
    assert parts["city"]["labelled"]["normals"].tolist() == [False]
    assert parts["city"]["normals"].shape == (1, 3, 40, 40)  # filled at its own size


@pytest.mark.parametrize(
    "batch, ratios, shares",
    [(4, (3, 1), [3, 1]), (5, (1, 1), [3, 2]), (3, (10, 1), [2, 1]), (8, (1, 3), [2, 6])],
)
def test_batch_shares_follow_the_ratio_with_one_sample_at_least(two_roots, batch, ratios, shares):
    """Largest remainders of batch * ratio / sum, each at least 1 (worked by hand)."""
    streets, city = two_roots
    got = [s.batch_share for s in parse_sources(entries(streets, city, ratios), None, batch)]
    assert got == shares and sum(got) == batch


@pytest.mark.parametrize(
    "change, message",
    [
        ({"ratio": 0}, "ratio must be a number > 0"),
        ({"name": "a/b"}, "name must be letters"),
        ({"colour": 1}, "unknown key 'colour'"),
        ({"name": "streets"}, "names a dataset twice"),
    ],
)
def test_bad_entries_are_refused_in_one_line(two_roots, change, message):
    streets, city = two_roots
    bad = entries(streets, city)
    bad[1] = {**bad[1], **change}
    with pytest.raises(UserError, match=message):
        parse_sources(bad, None, 4)


def test_different_image_sizes_need_a_crop(two_roots):
    streets, city = two_roots
    with pytest.raises(UserError, match="crop_size"):
        SceneDataModule(datasets=entries(streets, city), crop_size=None)
    with pytest.raises(UserError, match="either data.root or data.datasets"):
        SceneDataModule(root=str(streets), datasets=entries(streets, city))


@pytest.mark.slow
def test_one_fit_step_and_validation_report_each_dataset(tmp_path, two_roots):
    """One training step on the joined batch, then validation: each dataset's metrics
    under its name, on its own tasks only, and the combined ones."""
    streets, city = two_roots
    cfg = tiny_config(
        tmp_path,
        streets,
        **{
            "data.root": None,
            "data.datasets": entries(streets, city),
            "data.batch_size": 4,
            "data.scale_min": 1.0,
            "data.scale_max": 1.0,
            "trainer.max_epochs": 1,
            "trainer.limit_train_batches": 1,
            "visualize.every_n_epochs": 0,
        },
    )
    with pytest.raises(SystemExit) as exc:
        main(["fit", "--config", str(cfg)])
    assert exc.value.code == 0
    run = tmp_path / "runs" / "tiny" / "version_0"
    columns = set().union(*(row.keys() for row in read_metrics(run)))
    for key in ("semseg", "depth", "normals", "grader"):
        assert f"val/{key}" in columns and f"val/streets/{key}" in columns
    for key in ("semseg", "depth", "grader", "loss"):
        assert f"val/city/{key}" in columns
    assert "val/city/normals" not in columns
    assert "train/loss_normals" in columns
