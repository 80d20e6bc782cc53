"""Partial labels in the data pipeline: a declared-partial task's missing file, the collate
that fills and masks, and the metrics that count only labelled samples (against hand
computations in numpy, float64)."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from scenemtl.data.check import check_dataset
from scenemtl.data.dataset import SampleCollate, SceneDataset
from scenemtl.data.format import read_info, write_info
from scenemtl.errors import DataFormatError
from scenemtl.metrics import MultiTaskMetrics
from scenemtl.tasks import build_tasks, legacy_task_specs
from scenemtl.tasks.labels import LABELLED
from tests.helpers import write_random_dataset

THREE = build_tasks({**legacy_task_specs(), "normals": {"kind": "normals", "encoding": "rgb8"}})


def test_collate_fills_missing_targets_and_masks_them():
    gen = torch.Generator().manual_seed(0)
    rgb = torch.randint(0, 256, (3, 4, 5), dtype=torch.uint8, generator=gen)
    semseg = torch.randint(0, 19, (4, 5), generator=gen)
    normals = torch.nn.functional.normalize(torch.randn(3, 4, 5, generator=gen), dim=0)
    samples = [
        {"rgb": rgb, "index": torch.tensor(0), "semseg": semseg},
        {"rgb": rgb, "index": torch.tensor(1), "depth": torch.full((4, 5), 7.0)},
        {"rgb": rgb, "index": torch.tensor(2), "semseg": semseg, "normals": normals},
    ]
    batch = SampleCollate(THREE)(samples)
    assert batch[LABELLED]["semseg"].tolist() == [True, False, True]
    assert batch[LABELLED]["depth"].tolist() == [False, True, False]
    assert batch[LABELLED]["normals"].tolist() == [False, False, True]
    assert batch["semseg"].dtype == torch.int64 and bool((batch["semseg"][1] == 255).all())
    assert bool((batch["depth"][[0, 2]] == 0).all()) and bool((batch["depth"][1] == 7).all())
    assert batch["normals"].shape == (3, 3, 4, 5) and bool((batch["normals"][:2] == 0).all())
    assert torch.equal(batch["semseg"][0], semseg)  # an integer copy, not a float path


def test_collate_without_tasks_is_the_default():
    rgb = torch.zeros(3, 2, 2, dtype=torch.uint8)
    batch = SampleCollate(())([{"rgb": rgb, "index": torch.tensor(i)} for i in range(2)])
    assert set(batch) == {"rgb", "index"}


@pytest.fixture
def partial_root(tmp_path):
    write_random_dataset(tmp_path, sizes={"train": 3})
    (tmp_path / "train/semseg/1.png").unlink()
    return tmp_path


def test_a_missing_file_is_an_error_unless_the_task_is_declared_partial(partial_root):
    problems = check_dataset(partial_root)
    assert len(problems) == 1 and "train/semseg/1.png" in problems[0]
    with pytest.raises(DataFormatError):
        SceneDataset(partial_root, "train")[1]
    info = read_info(partial_root)
    write_info(partial_root, dataclasses.replace(info, partial_tasks=["semseg"]))
    assert read_info(partial_root).partial_tasks == ["semseg"]
    assert check_dataset(partial_root) == []
    ds = SceneDataset(partial_root, "train")
    assert "semseg" not in ds[1] and "semseg" in ds[0] and "depth" in ds[1]
    batch = SampleCollate(ds.tasks)([ds[i] for i in range(3)])
    assert batch[LABELLED]["semseg"].tolist() == [True, False, True]


def test_partial_tasks_must_name_tasks_of_the_dataset(partial_root):
    info = read_info(partial_root)
    write_info(partial_root, dataclasses.replace(info, partial_tasks=["parts"]))
    with pytest.raises(DataFormatError, match="partial_tasks"):
        read_info(partial_root)


# -- metrics ---------------------------------------------------------------------------


def miou(gt: np.ndarray, pred: np.ndarray, k: int) -> float:
    """Mean IoU over classes present in ground truth or prediction (255 ignored)."""
    keep = gt != 255
    gt, pred = gt[keep], pred[keep]
    ious = []
    for c in range(k):
        union = np.sum((gt == c) | (pred == c))
        if union:
            ious.append(100.0 * np.sum((gt == c) & (pred == c)) / union)
    return float(np.mean(ious))


def silog(pred: np.ndarray, gt: np.ndarray) -> float:
    """100 sqrt(mean d^2 - mean(d)^2) of one image's valid pixels."""
    valid = gt > 0
    d = np.log(pred[valid]) - np.log(gt[valid])
    return 100.0 * math.sqrt(max(np.mean(d**2) - np.mean(d) ** 2, 0.0))


def test_metrics_count_only_the_labelled_samples():
    """Two batches: semseg labelled on 1 of 3 then 2 of 2, depth on 2 of 3 then none.
    Unlabelled samples hold real-looking targets here (not the fill): the mask decides.

    Tolerance: float64 accumulation of the same per-pixel terms in numpy and torch;
    1e-9 relative."""
    rng = np.random.default_rng(0)
    shape = (6, 7)
    batches, labelled_semseg, labelled_depth = [], [[1, 0, 0], [1, 1]], [[1, 0, 1], [0, 0]]
    for n, ls, ld in zip((3, 2), labelled_semseg, labelled_depth, strict=True):
        gt_sem = rng.integers(0, 19, (n, *shape))
        gt_sem[rng.random((n, *shape)) < 0.1] = 255
        gt_depth = rng.uniform(5, 80, (n, *shape))
        gt_depth[:, 0] = 0
        pred_sem = np.where(
            rng.random((n, *shape)) < 0.6, gt_sem % 19, rng.integers(0, 19, (n, *shape))
        )
        pred_depth = gt_depth * rng.uniform(0.8, 1.25, (n, *shape)) + 1
        batches.append((gt_sem, gt_depth, pred_sem, pred_depth, ls, ld))
    metrics = MultiTaskMetrics(THREE[:2])
    for gt_sem, gt_depth, pred_sem, pred_depth, ls, ld in batches:
        batch = {
            "semseg": torch.from_numpy(gt_sem),
            "depth": torch.from_numpy(gt_depth).float(),
            LABELLED: {"semseg": torch.tensor(ls, dtype=torch.bool),
                       "depth": torch.tensor(ld, dtype=torch.bool)},
        }  # fmt: skip
        preds = {
            "semseg": torch.from_numpy(pred_sem),
            "depth": torch.from_numpy(pred_depth).float(),
        }
        metrics.update(preds, batch)
    got = metrics.compute()
    sem_gt = np.concatenate([b[0][np.array(b[4], bool)] for b in batches])
    sem_pred = np.concatenate([b[2][np.array(b[4], bool)] for b in batches])
    assert sem_gt.shape[0] == 3  # samples 0 of the first batch, both of the second
    assert float(got["semseg"]) == pytest.approx(miou(sem_gt, sem_pred, 19), rel=1e-9)
    images = [
        silog(
            b[3][i].astype(np.float32).astype(np.float64),
            b[1][i].astype(np.float32).astype(np.float64),
        )
        for b in batches
        for i in range(len(b[5]))
        if b[5][i]
    ]
    assert len(images) == 2
    assert float(got["depth"]) == pytest.approx(np.mean(images), rel=1e-9)


def test_the_grader_scores_a_partial_task_on_its_labelled_samples(tmp_path):
    """semseg's file of sample 1 is missing (declared partial): the grade is the training
    metric over samples 0 and 2; depth is scored on all three. Tolerance: the same
    integer confusion matrix and float64 depth sums, one summation order: 1e-12."""
    import io
    import zipfile

    from PIL import Image

    from scenemtl.codecs.classes import read_semseg
    from scenemtl.codecs.depth import read_depth
    from scenemtl.commands.grader import grade
    from scenemtl.data.format import label_path

    root = tmp_path / "gt"
    write_random_dataset(root, sizes={"test": 3}, image_size=(8, 10), seed=2)
    gt_sem = {i: read_semseg(label_path(root, "test", "semseg", i)) for i in (0, 2)}
    (root / "test/semseg/1.png").unlink()
    write_info(root, dataclasses.replace(read_info(root), partial_tasks=["semseg"]))
    rng = np.random.default_rng(1)
    reference = MultiTaskMetrics(THREE[:1])
    with zipfile.ZipFile(tmp_path / "s.zip", "w") as zf:
        for i in range(3):
            sem = rng.integers(0, 19, (8, 10)).astype(np.uint8)
            buffer = io.BytesIO()
            Image.fromarray(sem).save(buffer, format="PNG")
            zf.writestr(f"predictions/semseg/{i}.png", buffer.getvalue())
            zf.writestr(
                f"predictions/depth/{i}.png", label_path(root, "test", "depth", i).read_bytes()
            )
            if i in gt_sem:
                reference.update(
                    {"semseg": torch.from_numpy(sem.astype(np.int64))[None]},
                    {"semseg": torch.from_numpy(gt_sem[i].astype(np.int64))[None]},
                )
    got = grade(tmp_path / "s.zip", root)
    want = reference.compute()
    assert got["semseg"] == pytest.approx(float(want["semseg"]), rel=1e-12)
    assert got["semseg_pixacc"] == pytest.approx(float(want["semseg_pixacc"]), rel=1e-12)
    assert got["depth_mae"] == pytest.approx(0.0, abs=1e-9)  # its own files: exact on all
    assert read_depth(label_path(root, "test", "depth", 1)).shape == (8, 10)
