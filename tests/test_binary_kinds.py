"""The binary-map task kinds (boundaries, saliency): loss against the papers' formula,
files, metrics with unlabelled pixels, TTA merging, and a second segmentation task."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from PIL import Image

from scenemtl.codecs.binary import (
    decode_probability_png,
    encode_probability_png,
    read_binary_map,
)
from scenemtl.data.check import check_dataset
from scenemtl.data.format import read_info, write_info
from scenemtl.data.stats import compute_stats, format_stats
from scenemtl.errors import DataFormatError, UserError
from scenemtl.tasks import TASK_KINDS, build_task, build_tasks, dataset_task_specs
from scenemtl.tasks.binary import balanced_bce_loss
from scenemtl.tasks.boundaries import BoundariesTask
from scenemtl.tasks.saliency import SaliencyTask
from tests.helpers import write_random_dataset


def _reference_loss(x: np.ndarray, y: np.ndarray, w: float | None) -> float:
    """The papers' balanced BCE in float64, written out: ``w * y * -log(sigmoid(x)) +
    (1 - w) * (1 - y) * -log(1 - sigmoid(x))`` averaged over pixels with y != 255; w =
    #negatives / #labelled when None (HED)."""
    x = x.astype(np.float64)[:, 0]
    labelled = y != 255
    pos = (y == 1) & labelled
    if w is None:
        w = float((labelled & ~pos).sum()) / max(int(labelled.sum()), 1)
    sig = 1.0 / (1.0 + np.exp(-x))
    per = np.where(pos, -w * np.log(sig), -(1 - w) * np.log(1.0 - sig))
    return float(per[labelled].sum() / max(int(labelled.sum()), 1))


@pytest.mark.parametrize("w", [0.95, 0.5, None])
def test_balanced_bce_is_the_papers_formula(w):
    rng = np.random.default_rng(0)
    x = rng.normal(0, 3, (2, 1, 9, 11))
    y = (rng.random((2, 9, 11)) < 0.2).astype(np.int64)
    y[rng.random((2, 9, 11)) < 0.1] = 255
    got = float(balanced_bce_loss(torch.tensor(x, dtype=torch.float32), torch.tensor(y), w))
    # float32 softplus of |x| <= ~12: relative error a few ulps per pixel (~1e-6), the
    # mean of ~200 terms keeps it; the input itself is rounded to float32 (rel 6e-8 on x,
    # slope <= 1): 1e-5 relative is a generous bound
    assert got == pytest.approx(_reference_loss(x, y, w), rel=1e-5)


def test_balanced_bce_matches_atrcs_pos_weight_form():
    """ATRC/InvPT: BCE-with-logits with pos_weight w/(1-w) over labelled pixels, divided
    by 1/(1-w); float64 both, the same sum in two orders (error ~1e-15)."""
    rng = np.random.default_rng(1)
    x = torch.tensor(rng.normal(0, 2, (1, 1, 8, 8)))
    y = torch.tensor((rng.random((1, 8, 8)) < 0.3).astype(np.int64))
    y[0, 0, :3] = 255
    w = 0.95
    mask = y != 255
    factor = 1.0 / (1.0 - w)
    theirs = (
        torch.nn.functional.binary_cross_entropy_with_logits(
            x[:, 0][mask],
            y[mask].double(),
            pos_weight=torch.tensor(w * factor, dtype=torch.float64),
        )
        / factor
    )
    mine = balanced_bce_loss(x.float(), y, w)
    assert float(mine) == pytest.approx(float(theirs), rel=1e-5)  # mine runs in float32


def test_loss_without_a_labelled_pixel_is_zero_with_a_graph():
    x = torch.randn(1, 1, 4, 4, requires_grad=True)
    for task in (BoundariesTask("b"), SaliencyTask("s")):
        loss = task.loss(x, torch.full((1, 4, 4), 255))
        assert float(loss.detach()) == 0.0 and loss.requires_grad
        loss.backward()
        assert torch.isfinite(x.grad).all()


def test_probability_png_round_trips_every_level():
    levels = np.arange(256, dtype=np.uint8).reshape(16, 16)
    probs = decode_probability_png(Image.fromarray(levels, mode="L"))
    back = np.asarray(encode_probability_png(probs))
    assert (back == levels).all()
    # floor(255 p), as the papers' uint8(255 * sigmoid) truncates; clipped outside [0, 1]
    assert np.asarray(encode_probability_png(np.array([[0.999, -1.0, 2.0, np.nan]]))).tolist() == [
        [254, 0, 255, 0]
    ]
    with pytest.raises(DataFormatError, match="mode RGB"):
        decode_probability_png(Image.new("RGB", (2, 2)))


def test_binary_maps_hold_0_1_and_255_only(tmp_path):
    good = np.array([[0, 1, 255]], np.uint8)
    Image.fromarray(good).save(tmp_path / "g.png")
    assert read_binary_map(tmp_path / "g.png").tolist() == good.tolist()
    Image.fromarray(np.array([[0, 2, 254]], np.uint8)).save(tmp_path / "b.png")
    with pytest.raises(DataFormatError, match=r"b.png: binary map values \[2, 254\]"):
        read_binary_map(tmp_path / "b.png")
    Image.new("RGB", (2, 2)).save(tmp_path / "c.png")
    with pytest.raises(DataFormatError, match="mode RGB"):
        read_binary_map(tmp_path / "c.png")


def _boundary_scene() -> tuple[torch.Tensor, torch.Tensor]:
    """20x20: ground-truth edge on column 5 (rows 5..14); the prediction has it and a
    second line on column 15 (far beyond maxDist, 0.21 px here)."""
    target = torch.zeros(1, 20, 20, dtype=torch.long)
    target[0, 5:15, 5] = 1
    prob = torch.zeros(1, 20, 20)
    prob[0, 5:15, 5] = 1.0
    prob[0, 5:15, 15] = 0.9
    return prob, target


def test_boundary_odsf_counts_a_false_edge_unless_it_is_unlabelled():
    task = BoundariesTask("boundaries")
    prob, target = _boundary_scene()
    metric = task.make_metric()
    metric.update(prob, target)
    # at t <= 0.9: P = 10/20, R = 1 -> F = 2/3; at t in (0.9, 1]: P = R = 1 -> F = 1
    assert float(metric.compute()["boundaries"]) == pytest.approx(100.0, abs=1e-12)
    low = task.make_metric()
    low.update(prob.clamp(max=0.9), target)  # both lines at 0.9: F = 2/3 at every t <= 0.9
    assert float(low.compute()["boundaries"]) == pytest.approx(200.0 / 3.0, abs=1e-12)
    ignored = target.clone()
    ignored[0, :, 12:] = 255
    masked = task.make_metric()
    masked.update(prob.clamp(max=0.9), ignored)
    assert float(masked.compute()["boundaries"]) == pytest.approx(100.0, abs=1e-12)


def test_a_graded_edge_png_scores_as_the_live_prediction():
    """The grader reads floor(255 p) / 255; the metric quantizes p the same way, so the
    integer counts agree exactly."""
    task = BoundariesTask("boundaries")
    rng = np.random.default_rng(3)
    prob = torch.tensor(rng.random((1, 16, 24)), dtype=torch.float32)
    target = torch.tensor((rng.random((1, 16, 24)) < 0.1).astype(np.int64))
    live, graded = task.make_metric(), task.make_grader_metric()
    live.update(prob, target)
    png = task.encode_png(prob[0].numpy())
    assert png.mode in task.prediction_modes
    graded.update(torch.from_numpy(task.read_prediction(png, target[0].numpy()))[None], target)
    assert torch.equal(live.counts[0], graded.counts[0])  # int64 counts


def test_saliency_metric_keys_and_a_perfect_prediction():
    task = SaliencyTask("saliency")
    target = torch.zeros(2, 6, 6, dtype=torch.long)
    target[:, 1:4, 2:5] = 1
    target[1, 0, 0] = 255
    metric = task.make_metric()
    metric.update(target.clamp(max=1).float(), target)
    scores = metric.compute()
    assert set(scores) == {
        "saliency",
        "saliency_IoU",
        "saliency_maxF_threshold",
        "saliency_IoU_threshold",
    }
    assert float(scores["saliency"]) == pytest.approx(100.0, abs=1e-12)
    assert float(scores["saliency_IoU"]) == pytest.approx(100.0, abs=1e-12)


def test_tta_merge_space_round_trips_logits():
    task = SaliencyTask("s")
    x = torch.linspace(-8, 8, 33).reshape(1, 1, 3, 11)
    back = task.from_merge_space(task.to_merge_space(x))
    # sigmoid in float32 has relative error ~6e-8 of p and 1 - p; the logit divides it by
    # p (1 - p) >= 3.4e-4 at |x| = 8: error <= ~2e-4 logits
    assert torch.allclose(back, x, atol=5e-4)
    assert torch.isfinite(task.from_merge_space(torch.tensor([0.0, 1.0]))).all()


def test_specs_options_and_bad_values_are_one_line():
    task = build_task("b", {"kind": "boundaries", "max_dist": 0.011}, {"pos_weight": 0.9})
    assert task.spec() == {"kind": "boundaries", "max_dist": 0.011} and task.pos_weight == 0.9
    assert build_task("b", task.spec()).max_dist == 0.011
    assert build_task("s", {"kind": "saliency"}).pos_weight is None
    for spec, options, message in [
        ({"kind": "boundaries", "max_dist": 0}, None, "max_dist"),
        ({"kind": "boundaries"}, {"pos_weight": 1.0}, "pos_weight"),
        ({"kind": "saliency"}, {"pos_weight": "high"}, "pos_weight"),
        ({"kind": "boundaries"}, {"metric_workers": -1}, "metric_workers"),
        ({"kind": "saliency"}, {"max_dist": 0.01}, "unknown option 'max_dist'"),
    ]:
        with pytest.raises(UserError, match=message):
            build_task("t", spec, options)
    assert TASK_KINDS["boundaries"] is BoundariesTask and TASK_KINDS["saliency"] is SaliencyTask


def test_colorize_key_and_example_targets():
    task = BoundariesTask("b")
    colors = task.colorize(np.array([[0, 1, 255]]))
    assert colors.tolist() == [[[0, 0, 0], [255, 255, 255], [72, 0, 96]]]
    key = {name: color for name, color in task.picture_key().entries}
    # the key's colours are colorize's own
    assert key["edge (target, p = 1)"] == tuple(colors[0, 1].tolist())
    assert key["not labelled (target)"] == tuple(colors[0, 2].tolist())
    assert "probability" in task.card_output()
    assert task.colorize(np.array([[0.0, 0.5, 1.0]], np.float32))[0, :, 0].tolist() == [0, 127, 255]
    target = task.example_target(2, 5, 7, torch.Generator().manual_seed(0))
    assert target.shape == (2, 5, 7) and target.dtype == task.target_dtype
    assert set(target.unique().tolist()) <= {0, 1}
    assert math.isfinite(float(task.loss(torch.zeros(2, 1, 5, 7), target)))


def _write_masks(root, name, count, values_of, seed):
    rng = np.random.default_rng(seed)
    (root / "train" / name).mkdir()
    for i in range(count):
        Image.fromarray(values_of(rng).astype(np.uint8)).save(root / "train" / name / f"{i}.png")


def test_a_second_segmentation_task_and_binary_maps_are_checked_and_counted(tmp_path):
    """human parts = a segmentation task with its own table, beside semseg's; both
    tables' frequencies land in the stats, with the binary maps' shares."""
    write_random_dataset(tmp_path, sizes={"train": 3})
    parts_table = [
        {"name": n, "color": [i * 60, 0, 0]} for i, n in enumerate(["bg", "head", "arm", "leg"])
    ]
    _write_masks(tmp_path, "parts", 3, lambda r: r.integers(0, 4, (24, 40)), 1)
    _write_masks(tmp_path, "boundaries", 3, lambda r: r.random((24, 40)) < 0.25, 2)
    _write_masks(tmp_path, "saliency", 3, lambda r: np.where(r.random((24, 40)) < 0.5, 1, 255), 3)
    info = read_info(tmp_path)
    extra = {
        "parts": {"kind": "segmentation", "classes": parts_table},
        "boundaries": {"kind": "boundaries", "max_dist": 0.011},
        "saliency": {"kind": "saliency"},
    }
    write_info(tmp_path, dataclasses.replace(info, extra_tasks=extra))
    assert check_dataset(tmp_path) == []
    tasks = build_tasks(dataset_task_specs(read_info(tmp_path)))
    assert [(t.name, t.kind, t.channels) for t in tasks][2:] == [
        ("parts", "segmentation", 4),
        ("boundaries", "boundaries", 1),
        ("saliency", "saliency", 1),
    ]
    stats, _ = compute_stats(tmp_path, info=read_info(tmp_path))
    printed = format_stats(dataclasses.replace(read_info(tmp_path), stats=stats))
    assert "parts class pixel frequency:" in printed and "    leg " in printed
    assert "boundaries: " in printed and "% of labelled pixels on" in printed
    assert (
        len(stats["class_pixel_frequency"]) == 19 and len(stats["parts_class_pixel_frequency"]) == 4
    )
    edges = np.stack([read_binary_map(tmp_path / f"train/boundaries/{i}.png") for i in range(3)])
    assert stats["boundaries_positive_fraction"] == pytest.approx(float(edges.mean()), abs=1e-12)
    assert stats["saliency_ignored_pixel_fraction"] > 0.3

    Image.fromarray(np.full((24, 40), 4, np.uint8)).save(tmp_path / "train/parts/1.png")
    Image.fromarray(np.full((24, 40), 3, np.uint8)).save(tmp_path / "train/boundaries/2.png")
    problems = check_dataset(tmp_path)
    assert any("parts/1.png" in p and "4-class table" in p for p in problems), problems
    assert any("boundaries/2.png" in p and "values [3]" in p for p in problems), problems


def test_a_module_learns_parts_boundaries_and_saliency_beside_semseg():
    """Heads, losses with gradients, metrics and flip TTA for a second segmentation task
    and both binary kinds (no fit: one forward and backward on random targets)."""
    from scenemtl.engine.module import MultiTaskModule
    from scenemtl.metrics import MultiTaskMetrics

    parts = [{"name": f"p{i}", "color": [i, i, i]} for i in range(7)]
    specs = {
        "semseg": {"kind": "segmentation", "classes": [{"name": "a"}, {"name": "b"}]},
        "parts": {"kind": "segmentation", "classes": parts},
        "boundaries": {"kind": "boundaries", "max_dist": 0.011},
        "saliency": {"kind": "saliency"},
    }
    net = {"architecture": "joint", "encoder": "resnet18", "encoder_width": 16}
    module = MultiTaskModule(net={**net, "channels": 16, "skip_channels": 8}, task_specs=specs)
    gen = torch.Generator().manual_seed(0)
    batch = {"image": torch.randn(2, 3, 32, 32, generator=gen)}
    batch.update({t.name: t.example_target(2, 32, 32, gen) for t in module.task_list})
    outputs = module(batch["image"])
    assert {n: o[-1].shape[1] for n, o in outputs.items()} == {
        "semseg": 2,
        "parts": 7,
        "boundaries": 1,
        "saliency": 1,
    }
    losses = module.criterion(outputs, batch)
    losses.total.backward()
    assert all(bool(torch.isfinite(v)) for v in losses.tasks.values())
    metrics = MultiTaskMetrics(module.task_list)
    module.eval()
    module.hparams["tta_flip"] = True
    with torch.no_grad():
        metrics.update(module.decode(module.eval_outputs(batch["image"])), batch)
    scores = metrics.compute()
    assert {"parts", "parts_iou/p6", "boundaries", "boundaries_oisF", "saliency"} <= set(scores)
    assert all(0.0 <= float(scores[k]) <= 100.0 for k in ("boundaries", "saliency", "parts"))


def test_a_padded_image_is_scored_at_its_labelled_extent():
    """maxDist scales with the diagonal: on a 20x20 image at max_dist 0.1 a prediction 2 px
    off its edge matches (2 <= 0.1 * 28.3), padded to a 60x60 canvas of unlabelled pixels it
    would match at 8.5 px too. A prediction 5 px off must stay a miss after padding."""
    task = BoundariesTask("boundaries", max_dist=0.1)
    target = torch.zeros(1, 20, 20, dtype=torch.uint8)
    target[0, 10, 2:18] = 1
    for offset, expected in ((2, 100.0), (5, 0.0)):
        prob = torch.zeros(1, 20, 20)
        prob[0, 10 + offset, 2:18] = 1.0
        plain = task.make_metric()
        plain.update(prob, target)
        padded_target = torch.full((1, 60, 60), 255, dtype=torch.uint8)
        padded_target[:, :20, :20] = target
        padded_prob = torch.zeros(1, 60, 60)
        padded_prob[:, :20, :20] = prob
        padded = task.make_metric()
        padded.update(padded_prob, padded_target)
        assert float(plain.compute()["boundaries"]) == pytest.approx(expected, abs=1e-9)
        assert float(padded.compute()["boundaries"]) == pytest.approx(expected, abs=1e-9)
