"""The modules built as their authors built them: MTAN's refinement blocks, MTI-Net's
feature propagation, and the trunks of cross-stitch / NDDR started from single-task runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from scenemtl.cli import main
from scenemtl.errors import UserError
from scenemtl.models import build_model
from scenemtl.models.encoders.resnet import stage_channels
from scenemtl.models.mtan import refinement_block
from scenemtl.models.mtinet import FeaturePropagation
from scenemtl.tasks import legacy_heads
from tests.helpers import tiny_config
from tests.models.nets import HEADS, small


def count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def bottleneck_parameters(cin: int, cout: int) -> int:
    """The authors' refinement block by formula: 1x1 cin->p, 3x3 p->p, 1x1 p->cout (no
    bias), 1x1 cin->cout projection, a BatchNorm (2 per channel) after each; p = cout/4."""
    p = cout // 4
    convs = cin * p + 9 * p * p + p * cout + cin * cout
    norms = 2 * (p + p + cout + cout)
    return convs + norms


@pytest.mark.parametrize("encoder", ["resnet18", "resnet50"])
def test_mtan_refinement_blocks_have_the_authors_parameter_count(encoder: str) -> None:
    widths = stage_channels(encoder)
    expected = [bottleneck_parameters(widths[j], widths[j + 1]) for j in range(3)]
    for j, n in enumerate(expected):
        assert count(refinement_block(widths[j], widths[j + 1])) == n
    shared = build_model(small("mtan", encoder=encoder), HEADS)
    per_task = build_model(small("mtan", encoder=encoder, mtan_refinement="per_task"), HEADS)
    assert count(shared.refine) == sum(expected)
    assert count(per_task.refine) == len(HEADS) * sum(expected)
    assert count(per_task) - count(shared) == (len(HEADS) - 1) * sum(expected)


def _perturb(module: nn.Module) -> None:
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.5 * torch.randn_like(p))


@pytest.mark.parametrize("refinement", ["shared", "per_task"])
def test_mtan_refinement_is_shared_or_per_task(refinement: str) -> None:
    torch.manual_seed(0)
    model = build_model(small("mtan", mtan_refinement=refinement), HEADS).eval()
    assert model.has_shared_representation == (refinement == "per_task")
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        features = model.stage_features(x)
        before = {t: model.attended_pyramid(t, features) for t in HEADS}
        _perturb(model.refinement("depth", 0))  # f_1, read by stage 2's masks
        after = {t: model.attended_pyramid(t, features) for t in HEADS}
    assert not torch.allclose(after["depth"][8], before["depth"][8])
    # same computation twice when the semseg branch does not read the perturbed block
    assert torch.equal(after["semseg"][8], before["semseg"][8]) == (refinement == "per_task")


def test_mtan_bad_refinement_is_one_line() -> None:
    with pytest.raises(UserError, match="model.net.mtan_refinement") as err:
        build_model(small("mtan", mtan_refinement="both"), legacy_heads())
    assert "\n" not in str(err.value)


def test_fpm_task_weights_sum_to_one_over_the_tasks() -> None:
    torch.manual_seed(0)
    fpm = FeaturePropagation(["a", "b", "c"], channels=8, se_reduction=4).double().eval()
    stacked = torch.randn(2, 3, 8, 5, 6, dtype=torch.float64)
    with torch.no_grad():
        weights = fpm.task_weights(stacked)
    assert weights.shape == stacked.shape and (weights > 0).all()
    # a softmax over 3 terms in float64: the sum is 1 up to a few ulp
    torch.testing.assert_close(weights.sum(dim=1), torch.ones(2, 8, 5, 6, dtype=torch.float64))
    # not a uniform 1/3: the weights depend on the features
    assert (weights - 1 / 3).abs().max() > 1e-3


def test_fpm_matches_a_hand_computed_case() -> None:
    """Scores = the features themselves, reduction = sum over the tasks, no SE: then
    P_t = sum_u w_u x_u + x_t with w_u = exp(x_u) / (exp(x_a) + exp(x_b)) per channel."""
    torch.manual_seed(0)
    fpm = FeaturePropagation(["a", "b"], channels=2).double()
    fpm.score = nn.Identity()
    fpm.reduce = nn.Conv2d(4, 2, 1, bias=False).double()
    with torch.no_grad():  # stacked channel t*C + c -> output channel c
        fpm.reduce.weight.copy_(torch.tensor([[1.0, 0, 1, 0], [0, 1, 0, 1]])[:, :, None, None])
    fpm.se = nn.ModuleDict({"a": nn.Identity(), "b": nn.Identity()})
    a = torch.randn(1, 2, 3, 4, dtype=torch.float64)
    b = torch.randn(1, 2, 3, 4, dtype=torch.float64)
    with torch.no_grad():
        out = fpm({"a": a, "b": b})
    mixed = (a * a.exp() + b * b.exp()) / (a.exp() + b.exp())
    # two float64 paths (softmax vs the closed form), values O(1): within 1e-12
    torch.testing.assert_close(out["a"], mixed + a, rtol=0, atol=1e-12)
    torch.testing.assert_close(out["b"], mixed + b, rtol=0, atol=1e-12)


def _single_task_checkpoint(path: Path, architecture: str, task: str, **kw: object) -> dict:
    """A scenemtl-like checkpoint of a single-task run; returns its encoder's state."""
    torch.manual_seed(len(task))
    net = build_model(small(architecture, **kw), {task: HEADS[task]})
    _perturb(net)  # weights that no fresh encoder has
    state = {f"net.{k}": v for k, v in net.state_dict().items()}
    torch.save({"state_dict": state, "hyper_parameters": {"net": {}}}, path)
    encoder = net.encoder if hasattr(net, "encoder") else net.encoders[task]
    return encoder.state_dict()


@pytest.mark.parametrize("architecture", ["cross_stitch", "nddr", "task_specific"])
def test_trunks_start_from_single_task_runs(tmp_path: Path, architecture: str) -> None:
    semseg = _single_task_checkpoint(tmp_path / "semseg.ckpt", "branched", "semseg")
    depth = _single_task_checkpoint(tmp_path / "depth.ckpt", "task_specific", "depth")
    weights = {"semseg": str(tmp_path / "semseg.ckpt"), "depth": str(tmp_path / "depth.ckpt")}
    model = build_model(small(architecture, weights=weights), HEADS)
    for task, expected in (("semseg", semseg), ("depth", depth)):
        loaded = model.encoders[task].state_dict()
        assert loaded.keys() == expected.keys()
        for key, value in expected.items():  # a copy, not a computation
            torch.testing.assert_close(loaded[key], value, rtol=0, atol=0)


def test_bad_trunk_initialization_is_one_line(tmp_path: Path) -> None:
    good = tmp_path / "semseg.ckpt"
    _single_task_checkpoint(good, "branched", "semseg")
    wide = tmp_path / "wide.ckpt"
    _single_task_checkpoint(wide, "branched", "depth", encoder="resnet50")
    cases = {
        "missing": ({"semseg": str(good), "depth": str(tmp_path / "nope.ckpt")}, "not found"),
        "shapes": ({"semseg": str(good), "depth": str(wide)}, "does not fit resnet18"),
        "no entry": ({"semseg": str(good)}, "no entry for task 'depth'"),
    }
    for weights, message in cases.values():
        with pytest.raises(UserError, match=message) as err:
            build_model(small("cross_stitch", weights=weights), HEADS)
        assert "\n" not in str(err.value)
    with pytest.raises(UserError, match="one encoder for all tasks") as err:
        build_model(small("branched", weights={"semseg": str(good), "depth": str(good)}), HEADS)
    assert "\n" not in str(err.value)
    with pytest.raises(UserError, match="model.net.weights"):
        small("cross_stitch", weights={"semseg": 3})


def test_mixing_multiplier_is_for_mixing_units_only() -> None:
    assert build_model(small("nddr"), HEADS).mixing_lr_multiplier == 100.0
    assert build_model(small("nddr", mixing_lr_multiplier=2), HEADS).mixing_lr_multiplier == 2.0
    for bad, message in (
        (("branched", 10), "branched has no such option"),
        (("nddr", 0), "positive"),
    ):
        with pytest.raises(UserError, match=message) as err:
            build_model(small(bad[0], mixing_lr_multiplier=bad[1]), legacy_heads())
        assert "\n" not in str(err.value)


ONE_STEP = {
    "trainer.max_epochs": 1,
    "trainer.limit_train_batches": 0.25,  # one step (see test_fit_every_architecture)
    "trainer.limit_val_batches": 0.5,
    "visualize.ids": [],
}


@pytest.mark.slow
def test_cross_stitch_fit_starts_from_single_task_runs(tmp_path: Path, tiny_root: Path) -> None:
    """A real single-task run's checkpoint initializes both trunks, in and through the CLI."""
    single = tiny_config(
        tmp_path / "single",
        tiny_root,
        **ONE_STEP,
        **{"data.tasks": ["semseg"], "model.net.architecture": "branched"},
    )
    with pytest.raises(SystemExit) as exc:
        main(["fit", "--config", str(single)])
    assert exc.value.code == 0
    ckpt = tmp_path / "single" / "runs" / "tiny" / "version_0" / "checkpoints" / "last.ckpt"
    state = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    weights = {"semseg": str(ckpt), "depth": str(ckpt)}
    # the tiny runs' encoders are 16 wide (tests/helpers.py)
    model = build_model(small("cross_stitch", weights=weights, encoder_width=16), HEADS)
    for task in HEADS:
        for key, value in model.encoders[task].state_dict().items():
            torch.testing.assert_close(value, state[f"net.encoder.{key}"], rtol=0, atol=0)
    mixed = tiny_config(tmp_path / "mixed", tiny_root, **ONE_STEP)
    with pytest.raises(SystemExit) as exc:
        main(["fit", "--config", str(mixed), "--model.net.architecture", "cross_stitch",
              "--model.net.weights", json.dumps(weights)])  # fmt: skip
    assert exc.value.code == 0
