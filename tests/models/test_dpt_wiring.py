"""DPT as a per-task decoder (``model.net.decoder``, ``model.net.decoder_options``): the
architectures that take it, what it replaces, its options and their one-line errors, a
checkpoint round trip; one slow CLI run (fit, test, predict, ONNX export)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from scenemtl.cli import main
from scenemtl.errors import UserError
from scenemtl.models import ModelConfig, build_model
from scenemtl.models.blocks import DeepLabV3PlusDecoder
from scenemtl.models.dpt import DPTHead, DPTOptions, ResidualConvUnit
from scenemtl.models.registry import check_config, net_fields
from tests.models.nets import HEADS, small

DPT = {"features": 8}
CASES = {
    "joint": ("joint", "dpt", DPT),
    "branched": ("branched", "dpt", {**DPT, "head": {"semseg": "segmentation"}}),
    "branched-depth-only": ("branched", {"depth": "dpt"}, DPT),
    "distillation-semseg-only": (
        "distillation",
        {"semseg": "dpt"},
        {**DPT, "head": {"semseg": "segmentation"}},
    ),
    "task_specific": ("task_specific", "dpt", DPT),
}


def dpt_config(case: str, **kw: object) -> ModelConfig:
    architecture, decoder, options = CASES[case]
    return small(architecture, decoder=decoder, decoder_options=options, **kw)


@pytest.mark.parametrize("case", CASES)
def test_outputs_at_an_odd_size_and_every_parameter_learns(case: str) -> None:
    torch.manual_seed(0)
    model = build_model(dpt_config(case), HEADS).train()
    out = model(torch.randn(2, 3, 37, 51))
    for task, channels in HEADS.items():
        assert len(out[task]) == len(model.output_stages)
        assert all(o.shape == (2, channels, 37, 51) for o in out[task])
    sum(o.square().mean() for outs in out.values() for o in outs).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, missing[:5]
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("case", [c for c in CASES if c != "joint"])
def test_a_dpt_task_has_a_dpt_head_and_no_context_module(case: str) -> None:
    cfg = dpt_config(case)
    model = build_model(cfg, HEADS)
    for task in HEADS:
        uses_dpt = cfg.decoder_for(task) == "dpt"
        decoder = model.decoder[task]
        assert isinstance(decoder, DPTHead if uses_dpt else DeepLabV3PlusDecoder)
        assert (task in model.aspp) != uses_dpt
        assert (task in model.always_resized) == uses_dpt
        if uses_dpt:
            assert decoder.head_kind == cfg.decoder_config().head_for(task)


def test_joint_dpt_splits_the_head_s_last_conv_in_task_order() -> None:
    """The depth output is the last channel of the shared DPT head's last conv: shifting
    that conv's last bias by 1 shifts depth by exactly 1 (a bilinear resize preserves
    constants) and leaves semseg as it was."""
    model = build_model(dpt_config("joint"), HEADS).eval()
    assert model.aspp is None and isinstance(model.decoder, DPTHead)
    last = model.decoder.head.last_conv
    assert last.out_channels == sum(HEADS.values())
    x = torch.randn(1, 3, 33, 47)
    with torch.no_grad():
        out = model(x)
        last.bias[-1] += 1.0
        shifted = model(x)
    # float32: the shift adds 1 to values of order 1, error a few ulp
    torch.testing.assert_close(shifted["depth"][0], out["depth"][0] + 1.0, atol=1e-5, rtol=0)
    torch.testing.assert_close(shifted["semseg"][0], out["semseg"][0], atol=0, rtol=0)


def test_joint_dpt_shares_everything_but_the_last_conv() -> None:
    model = build_model(dpt_config("joint"), HEADS)
    last = model.decoder.head.last_conv
    own = {id(p) for p in model.task_parameters()}
    assert own == {id(last.weight), id(last.bias)}
    shared = model.shared_forward(torch.randn(1, 3, 32, 48))
    assert shared["features"].shape == (1, 32, 32, 48)  # the depth head's hidden width


def test_head_kind_and_batch_norm_follow_the_options() -> None:
    def rcu_bn(head: DPTHead) -> bool:
        rcu = next(m for m in head.modules() if isinstance(m, ResidualConvUnit))
        return isinstance(rcu.bn1, nn.BatchNorm2d)

    cfg = dpt_config("branched")  # semseg: segmentation head, depth: depth head
    model = build_model(cfg, HEADS)
    seg, depth = model.decoder["semseg"], model.decoder["depth"]
    assert seg.head_kind == "segmentation" and rcu_bn(seg)  # the authors' segmentation model
    assert depth.head_kind == "regression" and not rcu_bn(depth)  # the authors' depth model
    assert seg.feature_channels == 8 and depth.feature_channels == 32
    forced = small("branched", decoder="dpt", decoder_options={**DPT, "use_bn": True})
    assert rcu_bn(build_model(forced, HEADS).decoder["depth"])


def test_options_default_to_the_authors_and_complete_the_comparable_fields() -> None:
    assert DPTOptions().head_kwargs("depth") == {
        "features": 256,
        "head": "regression",
        "use_bn": False,
    }
    fields = net_fields({"architecture": "branched", "decoder": "dpt"})
    assert fields["decoder"] == "dpt"
    assert fields["decoder_options.features"] == 256
    assert fields["decoder_options.head"] == "regression"
    # the head's name before it was `regression`: configs and checkpoints written then
    # still read, and compare equal to today's default
    old = {"architecture": "branched", "decoder": "dpt", "decoder_options": {"head": "depth"}}
    assert net_fields(old) == fields
    mapped = DPTOptions(head={"semseg": "segmentation", "depth": "depth"})
    assert mapped.head_for("depth") == "regression" == mapped.head_for("normals")
    assert fields["decoder_options.use_bn"] is None
    plain = net_fields({"architecture": "branched"})  # a config from before the option
    assert plain["decoder"] == "deeplabv3plus"
    assert not any(k.startswith("decoder_options.") for k in plain)


BAD = [
    (
        {"architecture": "mtan", "decoder": "dpt"},
        "model.net.decoder: mtan has no per-task decoder the DPT head can replace",
    ),
    (
        {"architecture": "joint", "decoder": {"depth": "dpt"}},
        "model.net.decoder: joint has one decoder for all tasks",
    ),
    (
        {"architecture": "joint", "decoder": "dpt", "decoder_options": {"head": {"x": "depth"}}},
        "model.net.decoder_options.head: one DPT head serves every task here",
    ),
    ({"decoder": "dtp"}, "model.net.decoder: expected one of deeplabv3plus, dpt"),
    ({"decoder": ["dpt"]}, "model.net.decoder: expected one of deeplabv3plus, dpt"),
    ({"decoder": {"depth": "aspp"}}, "model.net.decoder: expected one of"),
    (
        {"decoder_options": {"features": 64}},
        "model.net.decoder_options.features: the deeplabv3plus decoder has no such option",
    ),
    (
        {"decoder": "dpt", "decoder_options": {"width": 64}},
        "model.net.decoder_options.width: the dpt decoder has no such option",
    ),
    (
        {"decoder": "dpt", "decoder_options": {"features": 7}},
        "model.net.decoder_options.features: expected an even number, got 7",
    ),
    (
        {"decoder": "dpt", "decoder_options": {"features": True}},
        "model.net.decoder_options.features: expected an integer",
    ),
    (
        {"decoder": "dpt", "decoder_options": {"head": "segment"}},
        "model.net.decoder_options.head: expected regression or segmentation",
    ),
    (
        {"decoder": "dpt", "decoder_options": {"use_bn": "yes"}},
        "model.net.decoder_options.use_bn: expected true or false",
    ),
    ({"decoder": "dpt", "decoder_options": []}, "model.net.decoder_options: expected a mapping"),
    (
        {"architecture": "branched", "decoder": "dpt", "depth_bins": {"depth": 8}},
        "model.net.depth_bins: task 'depth' uses the dpt decoder",
    ),
]


@pytest.mark.parametrize(("fields", "message"), BAD)
def test_bad_decoder_options_stop_in_one_line(fields: dict, message: str) -> None:
    with pytest.raises(UserError) as error:
        cfg = ModelConfig(**{"architecture": "branched", "encoder": "resnet18", **fields})
        check_config(cfg)
        build_model(cfg, HEADS)
    assert str(error.value).startswith(message) and "\n" not in str(error.value)


def test_a_decoder_entry_for_a_task_the_run_does_not_learn_is_a_warning() -> None:
    cfg = small("branched", decoder={"depth": "dpt", "normals": "dpt"}, decoder_options=DPT)
    with pytest.warns(UserWarning, match="model.net.decoder: this run has no task 'normals'"):
        build_model(cfg, HEADS)


def test_a_checkpoint_round_trip_keeps_the_dpt_heads(tmp_path: Path) -> None:
    from scenemtl.engine.module import MultiTaskModule

    net = {
        "architecture": "branched",
        "encoder": "resnet18",
        "encoder_width": 16,
        "channels": 8,
        "skip_channels": 4,
        "decoder": {"depth": "dpt"},
        "decoder_options": {"features": 8},
    }
    module = MultiTaskModule(net=net).eval()
    path = tmp_path / "dpt.ckpt"
    # what a trained run's checkpoint holds: plain dicts
    hparams = {**dict(module.hparams), "net": dict(vars(module.hparams["net"]))}
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": hparams}, path)
    loaded = MultiTaskModule.from_checkpoint(path)
    assert isinstance(loaded.net.decoder["depth"], DPTHead)
    assert loaded.net.cfg.decoder_options == {"features": 8}
    image = torch.randn(1, 3, 36, 52)
    with torch.no_grad():
        want, got = module.predict_step({"image": image}), loaded.predict_step({"image": image})
    # same weights, same kernels: any difference is thread-order rounding (~1e-6 of O(1))
    for task in want:
        torch.testing.assert_close(got[task].float(), want[task].float(), atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_dpt_reads_every_level_of_every_family() -> None:
    """On each encoder family's smallest member, the DPT head trains and reads the whole
    pyramid: unlike the DeepLabV3+ decoder it leaves no ViT adapter level unused."""
    from tests.models.test_encoder_families import SMALLEST

    heads = {"semseg": 3, "depth": 1}
    for name in SMALLEST.values():
        cfg = ModelConfig(
            architecture="branched",
            encoder=name,
            decoder="dpt",
            decoder_options={"features": 16, "head": {"semseg": "segmentation"}},
        )
        model = build_model(cfg, heads).train()
        out = model(torch.randn(2, 3, 50, 70))
        assert {t: tuple(o[-1].shape) for t, o in out.items()} == {
            "semseg": (2, 3, 50, 70),
            "depth": (2, 1, 50, 70),
        }
        sum(o.float().mean() for outs in out.values() for o in outs).backward()
        missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
        assert not missing, (name, missing[:3])


def _run(argv: list[str]) -> int:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    return exc.value.code


@pytest.mark.slow
def test_fit_test_predict_and_export_with_dpt_decoders(tmp_path: Path, tiny_root: Path) -> None:
    from tests.helpers import tiny_config

    cfg = tiny_config(
        tmp_path,
        tiny_root,
        **{
            "trainer.max_epochs": 1,
            "trainer.limit_train_batches": 0.25,
            "trainer.limit_val_batches": 0.5,
            "visualize.ids": [],
            "model.net.architecture": "branched",
            "model.net.decoder": "dpt",
            "model.net.decoder_options": {"features": 16, "head": {"semseg": "segmentation"}},
        },
    )
    assert _run(["fit", "--config", str(cfg)]) == 0
    run = tmp_path / "runs" / "tiny" / "version_0"
    assert json.loads((run / "run.json").read_text())["status"] == "finished"
    ckpt = str(run / "checkpoints" / "last.ckpt")
    state = torch.load(ckpt, weights_only=False)
    assert any(k.startswith("net.decoder.depth.fusion.") for k in state["state_dict"])
    assert _run(["test", "--config", str(cfg), "--ckpt_path", ckpt]) == 0
    out = tmp_path / "pred"
    image = tiny_root / "test" / "rgb" / "0.png"
    assert _run(["predict", "--ckpt_path", ckpt, "--input", str(image), "--output", str(out)]) == 0
    assert (out / "0_depth.png").exists() and (out / "0_semseg.png").exists()
    onnx = tmp_path / "dpt.onnx"
    export = ["export", "onnx", "--ckpt_path", ckpt, "--out", str(onnx), "--size", "32x48"]
    assert _run([*export, "--runs", "1"]) == 0  # checked against torch at 32x48 and 43x61
    assert onnx.stat().st_size > 0
