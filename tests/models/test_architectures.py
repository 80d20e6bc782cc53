"""The three architectures, the registry and ModelConfig."""

from __future__ import annotations

import itertools

import pytest
import torch

from scenemtl.errors import UserError
from scenemtl.models import ARCHITECTURES, ModelConfig, MultiTaskNet, build_model
from scenemtl.models.encoders.resnet import ResNetEncoder
from scenemtl.models.joint import JointNet
from scenemtl.models.registry import check_config
from scenemtl.tasks import legacy_heads
from tests.models.nets import SMALL_OPTIONS

HEADS = {"semseg": 19, "depth": 1}
"""The course's network: what ``build_model`` makes without a task list."""

DILATIONS = [(False, False, False), (False, False, True), (False, True, True)]


def small(**kw: object) -> ModelConfig:
    """A narrow ResNet-18 model: same code paths, fast on two cores."""
    base = dict(encoder="resnet18", channels=16, skip_channels=8, se_reduction=4)
    base["options"] = SMALL_OPTIONS.get(str(kw.get("architecture")), {})
    base.update(kw)
    return ModelConfig(**base)


@pytest.mark.parametrize(
    ("architecture", "dilation"), list(itertools.product(ARCHITECTURES, DILATIONS))
)
def test_output_contract_at_odd_input_size(
    architecture: str, dilation: tuple[bool, bool, bool]
) -> None:
    model = build_model(small(architecture=architecture, dilation=dilation), legacy_heads()).eval()
    x = torch.randn(2, 3, 45, 67)
    with torch.no_grad():
        out = model(x)
    assert set(out) == set(HEADS)
    for name, channels in HEADS.items():
        assert len(out[name]) == len(model.output_stages)
        for o in out[name]:
            assert o.shape == (2, channels, 45, 67)
            assert o.dtype == torch.float32
            assert torch.isfinite(o).all()


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_bottleneck_encoder_widths_reach_the_heads(architecture: str) -> None:
    # ResNet-50 stages are 256/512/1024/2048 wide: every block reading the pyramid must
    # take its width from the encoder's channel table, not from ResNet-18/34's 64..512
    model = build_model(
        small(architecture=architecture, encoder="resnet50", extra_skips=True), legacy_heads()
    )
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 36, 52))
    for name, channels in HEADS.items():
        assert [tuple(o.shape) for o in out[name]] == [(1, channels, 36, 52)] * len(
            model.output_stages
        )
    # outside the encoder(s): the bottleneck (2048) and the 4x skip (256) are read
    in_channels = {
        m.in_channels
        for n, m in model.named_modules()
        if isinstance(m, torch.nn.Conv2d) and "encoder" not in n
    }
    if architecture == "invpt":  # it fuses the 16x (1024) and 8x (512) levels, not the 4x
        assert {2048, 1024, 512} <= in_channels
        return
    # (MTI-Net reads each finer level concatenated with the propagated task features)
    extra = max(model.cfg.channels // 4, 4) if architecture == "mtinet" else 0
    assert 2048 in in_channels and 256 + extra in in_channels


VARIANTS = {
    "deeplabv3p": {},
    "template": {"aspp": False, "skip": False},
    "no-skip": {"skip": False},
    "os8-extra-skips-se": {
        "dilation": (False, True, True),
        "extra_skips": True,
        "squeeze_excitation": True,
    },
    "vortex-attention-skips": {"pooling": "vortex", "attention_skips": True},
}


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_batch_size_one_train_step_reaches_every_parameter(architecture: str, variant: str) -> None:
    torch.manual_seed(0)
    model = build_model(
        small(architecture=architecture, **VARIANTS[variant]), legacy_heads()
    ).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    # InvPT's stage-0 queries (BatchNorm) are on the stride-64 grid: at batch size 1 that
    # grid needs more than one cell to train (docs/models.md, InvPT)
    size = (69, 75) if architecture == "invpt" else (37, 51)
    out = model(torch.randn(1, 3, *size))
    loss = sum((o**2).mean() for outs in out.values() for o in outs)
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
    encoders = [m for m in model.modules() if isinstance(m, ResNetEncoder)]
    assert encoders
    # zero-initialized residual BNs still get a nonzero gradient
    for encoder in encoders:
        assert encoder.layer1[0].bn2.weight.grad.abs().sum() > 0
    stems = [e.conv1.weight.detach().clone() for e in encoders]
    opt.step()
    for encoder, stem in zip(encoders, stems, strict=True):
        assert not torch.equal(encoder.conv1.weight, stem)


def test_joint_splits_one_conv_in_task_order() -> None:
    model = build_model(small(architecture="joint"), legacy_heads())
    assert isinstance(model, JointNet)
    assert model.decoder.predict.out_channels == sum(HEADS.values())
    model.eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        out = model(x)
        # the depth output is the last channel of the shared prediction conv
        model.decoder.predict.bias[-1] += 1.0
        shifted = model(x)
    assert torch.allclose(shifted["depth"][0], out["depth"][0] + 1.0, atol=1e-5)
    assert torch.equal(shifted["semseg"][0], out["semseg"][0])


@pytest.mark.parametrize("heads", [{"depth": 1}, {"semseg": 7}])
@pytest.mark.parametrize("architecture", ["joint", "branched"])
def test_single_task_net_emits_only_that_task(architecture: str, heads: dict[str, int]) -> None:
    model = build_model(small(architecture=architecture), heads).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 33, 41))
    ((name, channels),) = heads.items()
    assert set(out) == {name}
    assert [tuple(o.shape) for o in out[name]] == [(1, channels, 33, 41)]
    if architecture == "joint":
        assert model.decoder.predict.out_channels == channels
    else:
        assert set(model.aspp) == set(model.decoder) == {name}


def test_distillation_needs_at_least_two_tasks() -> None:
    with pytest.raises(UserError, match="at least 2 tasks") as err:
        build_model(small(architecture="distillation"), {"depth": 1})
    assert "\n" not in str(err.value)


def _perturb(module: torch.nn.Module) -> None:
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.5 * torch.randn_like(p))


def test_branches_are_independent_after_the_encoder() -> None:
    torch.manual_seed(0)
    model = build_model(small(architecture="branched"), legacy_heads()).eval()
    x = torch.randn(1, 3, 40, 40)
    with torch.no_grad():
        out = model(x)
        _perturb(model.decoder["depth"])
        _perturb(model.aspp["depth"])
        after = model(x)
    assert torch.equal(after["semseg"][0], out["semseg"][0])
    assert not torch.allclose(after["depth"][0], out["depth"][0])


def test_distillation_exchanges_features_across_tasks() -> None:
    torch.manual_seed(0)
    model = build_model(small(architecture="distillation"), legacy_heads()).eval()
    assert model.output_stages == ("initial", "final")
    x = torch.randn(1, 3, 40, 40)
    with torch.no_grad():
        out = model(x)
        _perturb(model.decoder["depth"])
        after = model(x)
    # the initial semseg output is the branch's own; the final one also sees depth features
    assert torch.equal(after["semseg"][0], out["semseg"][0])
    assert not torch.allclose(after["semseg"][1], out["semseg"][1])
    assert set(model.attention["semseg"]) == {"depth"}
    assert set(model.attention["depth"]) == {"semseg"}


def test_a_fourth_architecture_is_one_class_and_one_registry_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    class EncoderOnly(MultiTaskNet):
        def __init__(self, cfg: ModelConfig, heads: dict[str, int] | None = None) -> None:
            super().__init__(cfg, heads)
            c = self.encoder.channels[self.encoder.output_stride]
            self.predict = torch.nn.ModuleDict(
                {name: torch.nn.Conv2d(c, channels, 1) for name, channels in self.heads.items()}
            )

        def decode(self, pyramid: dict[int, torch.Tensor]) -> dict[str, list[torch.Tensor]]:
            f = pyramid[self.encoder.output_stride]
            return {name: [head(f)] for name, head in self.predict.items()}

    monkeypatch.setitem(ARCHITECTURES, "encoder_only", EncoderOnly)
    model = build_model(small(architecture="encoder_only"), legacy_heads()).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 29, 31))
    assert out["semseg"][0].shape == (1, 19, 29, 31)


def test_imagenet_style_parameter_counts_of_the_designs() -> None:
    # ResNet-34 + ASPP + DeepLabV3+ decoder, counted by hand from the layer shapes
    encoder = 21_797_672 - 513_000  # torchvision resnet34 without fc
    aspp = (512 * 256 + 512) + 3 * (512 * 256 * 9 + 512) + (512 * 256 + 256) + (1280 * 256 + 512)
    dec_body = (64 * 48 + 96) + (304 * 256 * 9 + 512) + (256 * 256 * 9 + 512)
    joint = build_model(ModelConfig(architecture="joint"), legacy_heads())
    n = sum(p.numel() for p in joint.parameters())
    assert n == encoder + aspp + dec_body + 256 * 20 + 20
    branched = build_model(ModelConfig(architecture="branched"), legacy_heads())
    n = sum(p.numel() for p in branched.parameters())
    assert n == encoder + 2 * aspp + 2 * dec_body + 256 * 20 + 20


@pytest.mark.parametrize(
    ("field", "value", "needle"),
    [
        ("architecture", "unet", "unknown architecture 'unet'"),
        ("architecture", ["joint"], "architecture"),
        ("encoder", "resnet152", "unknown encoder 'resnet152'"),
        ("dilation", (True, True, True), "output stride 4"),
        ("dilation", (False, True), "dilation"),
        ("dilation", (0, 0, 1), "dilation"),
        ("aspp_rates", (6, 12), "aspp_rates"),
        ("aspp_rates", (6, 0, 18), "aspp_rates"),
        ("aspp", "yes", "model.net.aspp"),
        ("channels", 0, "model.net.channels"),
        ("channels", True, "model.net.channels"),
        ("weights", "", "model.net.weights"),
        ("final_decoder_convs", -1, "final_decoder_convs"),
        ("pooling", "vortx", "model.net.pooling"),
        ("pooling", {"semseg": "pyramid"}, "model.net.pooling"),
        ("pooling", ["vortex"], "model.net.pooling"),
        ("vortex_rates", (3, 9), "model.net.vortex_rates"),
        ("attention_skips", 1, "model.net.attention_skips"),
        ("distill_alpha", True, "model.net.distill_alpha: joint has no such option"),
        ("mtan_refinement", "per_task", "model.net.mtan_refinement: joint has no such option"),
        ("options", {"depth": 3}, "model.net.options.depth: joint has no such option"),
        (
            "encoder_options",
            {"dilatoin": [1]},
            "encoder_options.dilatoin: the resnet encoder family",
        ),
        ("encoder_options", ["x"], "model.net.encoder_options: expected a mapping"),
    ],
)
def test_bad_config_values_are_one_line_user_errors(field: str, value: object, needle: str) -> None:
    """ModelConfig refuses what it can tell alone; check_config (which build_model runs
    first) what depends on the chosen architecture."""
    with pytest.raises(UserError) as err:
        check_config(ModelConfig(**{field: value}))
    assert needle in str(err.value)
    assert "\n" not in str(err.value)


def test_extra_skips_need_the_skip() -> None:
    with pytest.raises(UserError, match="extra_skips"):
        ModelConfig(skip=False, extra_skips=True)
    with pytest.raises(UserError, match="attention_skips: needs skip"):
        ModelConfig(skip=False, attention_skips=True)
    with pytest.raises(UserError, match="vortex pooling replaces ASPP"):
        ModelConfig(aspp=False, pooling={"depth": "vortex"})


def test_pooling_per_task_mixes_vortex_and_aspp() -> None:
    from scenemtl.models.blocks import ASPP, VortexPooling

    cfg = ModelConfig.from_dict(
        {"architecture": "branched", "encoder": "resnet18", "pooling": {"semseg": "vortex"}}
    )
    model = build_model(cfg, legacy_heads())
    assert isinstance(model.aspp["semseg"], VortexPooling)
    assert isinstance(model.aspp["depth"], ASPP)  # tasks left out keep ASPP
    everywhere = build_model(small(architecture="mtan", pooling="vortex"), legacy_heads())
    assert all(isinstance(m, VortexPooling) for m in everywhere.aspp.values())
    assert isinstance(build_model(small(pooling="vortex"), legacy_heads()).aspp, VortexPooling)


def test_pooling_mapping_errors_name_the_problem() -> None:
    with pytest.warns(UserWarning, match="no task 'semsge'"):
        model = build_model(
            small(architecture="branched", pooling={"semsge": "vortex"}), legacy_heads()
        )
    assert type(model.aspp["semseg"]).__name__ == "ASPP"
    # a per-task config in a single-task run: the other task's entry is ignored
    with pytest.warns(UserWarning, match="no task 'semseg'"):
        build_model(small(architecture="branched", pooling={"semseg": "vortex"}), {"depth": 1})
    with pytest.raises(UserError, match="joint has one context module"):
        build_model(small(architecture="joint", pooling={"semseg": "vortex"}), legacy_heads())


def test_distill_alpha_starts_from_the_branched_features() -> None:
    torch.manual_seed(0)
    model = build_model(
        small(architecture="distillation", distill_alpha=True), legacy_heads()
    ).eval()
    assert [tuple(a.shape) for a in model.alpha.values()] == [(1,), (1,)]
    x = torch.randn(1, 3, 40, 40)
    with torch.no_grad():
        out = model(x)
        _perturb(model.decoder["depth"])
        after = model(x)
    # alpha = 0: the final semseg output ignores the depth branch ...
    assert torch.equal(after["semseg"][1], out["semseg"][1])
    # ... but alpha itself learns from the first step
    model.train()
    loss = sum(o.square().mean() for outs in model(x).values() for o in outs)
    loss.backward()
    assert model.alpha["semseg"].grad.abs().sum() > 0
    with torch.no_grad():
        model.alpha["semseg"].fill_(1.0)
    model.eval()
    with torch.no_grad():
        opened = model(x)
        _perturb(model.decoder["depth"])
    assert not torch.allclose(model(x)["semseg"][1], opened["semseg"][1])


def test_from_dict_takes_yaml_lists_and_rejects_unknown_keys() -> None:
    cfg = ModelConfig.from_dict({"architecture": "branched", "dilation": [False, False, True]})
    assert cfg.encoder_config().dilation == (False, False, True)
    assert cfg.dilation is None  # a flat key is input only: the option is the family's
    assert cfg.output_stride == 16
    with pytest.raises(UserError, match="unknown option 'dilations'"):
        ModelConfig.from_dict({"dilations": [False, False, True]})


def test_jsonargparse_builds_the_dataclass() -> None:
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--net", type=ModelConfig, default=ModelConfig())
    ns = parser.parse_args(
        ["--net", '{"architecture": "distillation", "dilation": [false, true, true]}']
    )
    # ``instantiate`` replaced ``instantiate_classes`` in jsonargparse 4.49
    instantiate = getattr(parser, "instantiate", None) or parser.instantiate_classes
    cfg = instantiate(ns).net
    assert isinstance(cfg, ModelConfig)
    assert cfg.architecture == "distillation"
    assert cfg.encoder_config().dilation == (False, True, True)
    assert cfg.aspp_rates == (6, 12, 18)


def test_distillation_final_decoders_keep_the_feature_width() -> None:
    # with extra skips the features are at 2x and half as wide; the final decoder follows
    model = build_model(small(architecture="distillation", extra_skips=True), legacy_heads())
    for name in HEADS:
        width = model.decoder[name].feature_channels
        assert width == 8
        assert model.final_decoder[name].feature_channels == width
        assert (
            model.attention[name]["depth" if name == "semseg" else "semseg"].conv.out_channels
            == width
        )
