"""Plug-ins: architecture options in their own class, encoder families in their registry,
and the flat ``model.net`` keys that configs and checkpoints written before keep using."""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

import pytest
import torch
from torch import Tensor, nn

from scenemtl.errors import UserError
from scenemtl.models import ARCHITECTURES, ModelConfig, MultiTaskNet, build_model
from scenemtl.models.config import FLAT_OPTIONS
from scenemtl.models.encoders.base import Encoder, Family, HierarchicalEncoder
from scenemtl.models.encoders.registry import ENCODER_FAMILIES, build_encoder, encoder_names
from scenemtl.models.encoders.resnet import ResNetEncoder, ResNetOptions
from scenemtl.models.encoders.weights import PublishedFile
from scenemtl.models.options import check_int, option_defaults
from scenemtl.models.registry import check_config, net_fields

SMALL = {"encoder": "resnet18", "encoder_width": 8, "channels": 8, "skip_channels": 4}
HEADS = {"semseg": 5, "depth": 1}


def test_the_flat_keys_defaults_are_their_owners_defaults() -> None:
    """A flat key at the value it had by default is dropped (checkpoints list every
    field): that is only the same network if it is also the owner's default."""
    owners = [*ARCHITECTURES.values(), *ENCODER_FAMILIES.values()]
    for key, (section, option, default) in FLAT_OPTIONS.items():
        declared = [
            option_defaults(o.Options)[option]
            for o in owners
            if option in option_defaults(o.Options)
        ]
        assert declared, f"no plug-in declares {section}.{option}"
        assert all(d == default for d in declared), key


# a checkpoint's ``net`` as ModelConfig wrote it before the options moved: every field
OLD_NET = {
    "architecture": "mtan",
    "encoder": "resnet18",
    "weights": None,
    "encoder_width": 8,
    "dilation": [False, False, True],
    "aspp": True,
    "aspp_rates": [6, 12, 18],
    "skip": True,
    "extra_skips": False,
    "squeeze_excitation": False,
    "se_reduction": 16,
    "channels": 8,
    "skip_channels": 4,
    "final_decoder_convs": 2,
    "pooling": "aspp",
    "vortex_rates": [3, 9, 27],
    "attention_skips": False,
    "distill_alpha": False,
    "depth_bins": {},
    "mtan_refinement": "per_task",
    "mixing_lr_multiplier": None,
}


def test_an_old_flat_net_is_the_same_network_as_its_sections() -> None:
    old = ModelConfig.from_dict(OLD_NET)
    assert old.options == {"mtan_refinement": "per_task"}  # the defaults are dropped
    assert old.encoder_options == {"dilation": [False, False, True], "width": 8}
    assert all(getattr(old, key) is None for key in FLAT_OPTIONS)
    nested = ModelConfig.from_dict(
        {
            **{k: v for k, v in OLD_NET.items() if k not in FLAT_OPTIONS},
            "options": {"mtan_refinement": "per_task"},
            "encoder_options": {"dilation": [False, False, True], "width": 8},
        }
    )
    assert old == nested
    assert net_fields(OLD_NET) == net_fields(dataclasses.asdict(nested))
    assert net_fields(OLD_NET)["encoder_options.dilation"] == [False, False, True]
    assert net_fields(OLD_NET)["options.mtan_refinement"] == "per_task"
    model = build_model(old, HEADS)
    assert model.options.mtan_refinement == "per_task" and not model.shared_refinement
    assert model.encoder.output_stride == old.output_stride == 16
    # every architecture takes an old dict whose flat keys of others are at their defaults
    for architecture in ARCHITECTURES:
        old = {**OLD_NET, "architecture": architecture, "mtan_refinement": "shared"}
        check_config(ModelConfig.from_dict(old))


def test_an_old_checkpoint_loads_and_predicts_the_same(tmp_path) -> None:
    from scenemtl.engine.module import MultiTaskModule

    net = {**OLD_NET, "architecture": "distillation", "final_decoder_convs": 1}
    net["mtan_refinement"] = "shared"
    module = MultiTaskModule(net=dict(net)).eval()
    hparams = {**dict(module.hparams), "net": net}  # the old flat form, as written then
    path = tmp_path / "old.ckpt"
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": hparams}, path)
    loaded = MultiTaskModule.from_checkpoint(path)
    assert loaded.net.options.final_decoder_convs == 1
    image = torch.randn(1, 3, 32, 48)
    with torch.no_grad():
        want, got = module.predict_step({"image": image}), loaded.predict_step({"image": image})
    torch.testing.assert_close(got["depth"], want["depth"])  # same weights, same path


def test_flat_and_nested_spellings_must_agree() -> None:
    with pytest.raises(UserError) as err:
        ModelConfig(dilation=(False, False, True), encoder_options={"dilation": [False] * 3})
    assert "model.net.dilation" in str(err.value) and "disagree" in str(err.value)
    assert "\n" not in str(err.value)
    # a config's flat default under an explicit option: the option wins
    cfg = ModelConfig(dilation=(False,) * 3, encoder_options={"dilation": [False, True, True]})
    assert cfg.output_stride == 8


@pytest.mark.parametrize(
    ("values", "needle"),
    [
        ({"architecture": "distillation", "final_decoder_convs": 9}, "final_decoder_convs: expe"),
        ({"architecture": "distillation", "options": {"final_decoder_convs": "2"}}, "integer"),
        ({"architecture": "mtan", "options": {"refinement": "shared"}}, "options.refinement"),
        ({"architecture": "joint", "mixing_lr_multiplier": 3}, "joint has no such option"),
        ({"architecture": "nddr", "mixing_lr_multiplier": -1}, "positive"),
        ({"encoder_options": {"width": 0}}, "model.net.encoder_width: expected an integer"),
        ({"encoder_width": 2000}, "model.net.encoder_width"),
        ({"encoder_options": {"dilation": [True] * 3}}, "model.net.dilation: dilating all"),
    ],
)
def test_options_are_checked_against_their_owner_in_one_line(values, needle) -> None:
    with pytest.raises(UserError) as err:
        check_config(ModelConfig.from_dict(values))
    assert needle in str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("name", "width", "dilation"),
    list(
        itertools.product(
            ResNetEncoder.names,
            (8, 12),
            [(False, False, False), (False, False, True), (False, True, True), (True, False, True)],
        )
    ),
)
def test_the_declared_pyramid_is_what_the_encoder_returns(name, width, dilation) -> None:
    options = ResNetOptions(dilation=dilation, width=width)
    declared = ResNetEncoder.declared_pyramid(name, options)
    encoder = build_encoder(name, None, options)
    assert encoder.channels == declared and encoder.output_stride == max(declared)
    cfg = ModelConfig(encoder=name, encoder_options={"dilation": list(dilation), "width": width})
    assert cfg.pyramid() == declared


def test_the_resnet_runs_stage_by_stage_as_its_forward() -> None:
    """The hierarchical protocol: stem then stages give forward's pyramid."""
    torch.manual_seed(0)
    encoder = ResNetEncoder("resnet18", (False, True, False), width=8).double().eval()
    assert isinstance(encoder, HierarchicalEncoder) and encoder.hierarchical
    x = torch.randn(1, 3, 37, 53, dtype=torch.float64)
    with torch.no_grad():
        want = encoder(x)
        h = encoder.stem(x)
        got = {encoder.stem_stride: h}
        for scale, stage in zip(encoder.stage_scales, encoder.stage_blocks, strict=True):
            assert isinstance(stage, nn.Sequential) and len(stage) >= 2
            h = stage(h)
            got[scale] = h
    assert list(got) == list(want)
    for s in want:
        # the same operations in the same order: equal up to float64 rounding
        torch.testing.assert_close(got[s], want[s], rtol=1e-12, atol=1e-12)
    # the stages' modules are the registered ones: torchvision's names are kept
    heads = {key.split(".")[0] for key in encoder.state_dict()}
    assert heads == {"conv1", "bn1", "layer1", "layer2", "layer3", "layer4"}


# --------------------------------------------------------------------------------------
# a toy encoder family and a toy architecture, each one class plus one registry line


@dataclass
class ToyOptions:
    width: int = 6

    def __post_init__(self) -> None:
        check_int(self, "width", 1, 64)


class ToySource:
    what = "toy weights"
    file_name = "toy.pth"

    def __init__(self, state: Mapping[str, Tensor]) -> None:
        self.state = state

    def load(self) -> Mapping[str, Tensor]:
        return self.state


class ToyEncoder(Encoder):
    """Two patchify convs: strides 4 and 16; not hierarchical."""

    names: ClassVar[tuple[str, ...]] = ("toy_s",)
    Options: ClassVar[type] = ToyOptions
    published: ClassVar[dict[str, Tensor]] = {}

    def __init__(self, name: str, options: ToyOptions) -> None:
        super().__init__()
        w = options.width
        self.name = name
        self.patch4 = nn.Conv2d(3, w, 4, stride=4)
        self.patch16 = nn.Conv2d(w, 2 * w, 4, stride=4)
        self.channels = self.declared_pyramid(name, options)
        self.output_stride = 16

    @classmethod
    def declared_pyramid(cls, name: str, options: ToyOptions) -> dict[int, int]:
        return {4: options.width, 16: 2 * options.width}

    @classmethod
    def published_weights(cls, name: str, key: str, options: ToyOptions) -> ToySource | None:
        return ToySource(cls.published) if key == "toy_pub" else None

    def forward(self, x: Tensor) -> dict[int, Tensor]:
        f4 = self.patch4(x)
        return {4: f4, 16: self.patch16(f4)}


def test_an_encoder_family_is_one_class_and_one_registry_line(monkeypatch) -> None:
    monkeypatch.setitem(ENCODER_FAMILIES, "toy", ToyEncoder)
    assert "toy_s" in encoder_names()
    base = {"encoder": "toy_s", "channels": 8, "skip_channels": 4, "encoder_options": {}}
    x = torch.randn(2, 3, 64, 96)
    for name, arch in ARCHITECTURES.items():
        cfg = ModelConfig(architecture=name, **base)
        assert cfg.output_stride == 16
        if arch.needs_hierarchical_encoder:
            with pytest.raises(UserError, match="needs a hierarchical encoder family") as err:
                build_model(cfg, HEADS)
            assert "toy_s (toy) is not one" in str(err.value) and "\n" not in str(err.value)
            continue
        model = build_model(cfg, HEADS).eval()
        with torch.no_grad():
            out = model(x)
        for task, channels in HEADS.items():
            assert out[task][-1].shape == (2, channels, 64, 96), name
    # its options are its own; the ResNet's are refused with the owner named
    with pytest.raises(UserError, match="model.net.encoder_width: expected an integer 1..64"):
        ModelConfig(**{**base, "encoder_options": {"width": 0}})
    with pytest.raises(
        UserError, match="model.net.dilation: the toy encoder family has no such option"
    ):
        ModelConfig(**{**base, "dilation": (False, False, True)})
    # a published file by its key, loaded strictly into the family's module
    reference = ToyEncoder("toy_s", ToyOptions())
    monkeypatch.setattr(ToyEncoder, "published", reference.state_dict())
    loaded = build_encoder("toy_s", "toy_pub")
    for key, value in reference.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value)  # copied, not computed
    monkeypatch.setattr(ToyEncoder, "published", {"patch4.weight": torch.zeros(1)})
    with pytest.raises(UserError, match="toy weights toy.pth does not fit toy_s"):
        build_encoder("toy_s", "toy_pub")


@dataclass
class ScaledOptions:
    scale: int = 1

    def __post_init__(self) -> None:
        check_int(self, "scale", 1, 10)


class Scaled(MultiTaskNet):
    """A toy architecture with an option: a 1x1 conv per task on the bottleneck, times
    ``scale``."""

    Options: ClassVar[type] = ScaledOptions

    def __init__(self, cfg: ModelConfig, heads: Mapping[str, int] | None = None) -> None:
        super().__init__(cfg, heads)
        c = self.encoder.channels[self.encoder.output_stride]
        self.head = nn.ModuleDict({t: nn.Conv2d(c, n, 1) for t, n in self.heads.items()})

    def decode(self, shared: dict[int, Tensor]) -> dict[str, list[Tensor]]:
        f = shared[self.encoder.output_stride]
        return {t: [self.options.scale * head(f)] for t, head in self.head.items()}


def test_an_architecture_declares_its_options_in_its_class(monkeypatch) -> None:
    monkeypatch.setitem(ARCHITECTURES, "scaled", Scaled)
    one = build_model(ModelConfig(architecture="scaled", **SMALL), HEADS).eval()
    three = build_model(
        ModelConfig(architecture="scaled", options={"scale": 3}, **SMALL), HEADS
    ).eval()
    assert one.options.scale == 1 and three.options.scale == 3
    three.load_state_dict(one.state_dict())
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        # 3 * y in float32 is exact up to one rounding of each element
        torch.testing.assert_close(three(x)["depth"][0], 3 * one(x)["depth"][0])
    with pytest.raises(UserError, match=r"model.net.options.scale: expected an integer 1..10"):
        check_config(ModelConfig(architecture="scaled", options={"scale": 0}, **SMALL))
    with pytest.raises(UserError, match=r"options.size: scaled has no such option \(its options"):
        check_config(ModelConfig(architecture="scaled", options={"size": 2}, **SMALL))


class PlainToy(nn.Module):
    """A module that follows only the protocol's module part (not an Encoder)."""

    def __init__(self, name: str, options: ToyOptions) -> None:
        super().__init__()
        self.patch4 = nn.Conv2d(3, options.width, 4, stride=4)
        self.patch8 = nn.Conv2d(options.width, options.width + 1, 2, stride=2)
        self.channels = {4: options.width, 8: options.width + 1}
        self.output_stride = 8

    def forward(self, x: Tensor) -> dict[int, Tensor]:
        f4 = self.patch4(x)
        return {4: f4, 8: self.patch8(f4)}


def test_a_module_class_registers_through_a_family_entry(monkeypatch) -> None:
    """How another helper's constructors are registered: one Family(...) line; the
    pyramid is read from the module built on the meta device."""
    reference = PlainToy("plain_s", ToyOptions(width=3))

    def weights(name: str, key: str, options: ToyOptions) -> PublishedFile | None:
        return (
            PublishedFile("toy weights", "toy.pth", reference.state_dict) if key == "pub" else None
        )

    entry = Family(PlainToy, ("plain_s",), ToyOptions, weights=weights)
    monkeypatch.setitem(ENCODER_FAMILIES, "plain", entry)
    cfg = ModelConfig(encoder="plain_s", encoder_options={"width": 3}, channels=8, skip_channels=4)
    assert cfg.pyramid() == {4: 3, 8: 4} and cfg.output_stride == 8
    model = build_model(cfg, HEADS).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 32, 40))["semseg"][0].shape == (1, 5, 32, 40)
    with pytest.raises(UserError, match="plain_s \\(plain\\) is not one"):
        build_model(ModelConfig(architecture="nddr", encoder="plain_s"), HEADS)
    loaded = build_encoder("plain_s", "pub", {"width": 3})
    for key, value in reference.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value)  # copied, not computed
    with pytest.raises(UserError, match="toy weights toy.pth does not fit PlainToy"):
        build_encoder("plain_s", "pub", {"width": 4})


def test_the_models_import_graph_has_no_circle() -> None:
    """ModelConfig imports no architecture (every architecture imports it); only the
    package's re-export and the layers above import the registry; the encoder families
    import no architecture and not the configuration (the Hub download helper is below
    them)."""
    grimp = pytest.importorskip("grimp")
    graph = grimp.build_graph("scenemtl")
    architectures = {cls.__module__ for cls in ARCHITECTURES.values()} | {
        "scenemtl.models.base",
        "scenemtl.models.registry",
    }
    for module in architectures:
        assert not graph.chain_exists(importer="scenemtl.models.config", imported=module)
    inside = {
        m
        for m in graph.find_modules_that_directly_import("scenemtl.models.registry")
        if m.startswith("scenemtl.models")
    }
    assert inside == {"scenemtl.models"}  # the package's public names
    for module in graph.find_descendants("scenemtl.models.encoders"):
        for imported in graph.find_modules_directly_imported_by(module):
            if imported.startswith("scenemtl."):
                assert imported.startswith(
                    (
                        "scenemtl.models.encoders",
                        "scenemtl.models.options",
                        "scenemtl.errors",
                        "scenemtl.hub",
                    )
                ), (module, imported)


def test_a_checkpoint_is_compared_with_the_option_however_it_was_written() -> None:
    """`--ckpt_path` with explicit network options: the flat key the user wrote is the
    option it stands for, and the checkpoint's flat or nested spelling compares equal."""
    from scenemtl.commands.lightning import _is_explicit, _net_fields

    nested = {
        **{k: v for k, v in OLD_NET.items() if k not in FLAT_OPTIONS},
        "options": {"mtan_refinement": "per_task"},
        "encoder_options": {"dilation": [False, False, True], "width": 8},
    }
    assert _net_fields(OLD_NET) == _net_fields(nested)
    assert _net_fields(OLD_NET)["options.mtan_refinement"] == "per_task"
    assert _is_explicit("encoder_options.dilation", {"dilation"})
    assert _is_explicit("options.mtan_refinement", {"options"})
    assert not _is_explicit("encoder_options.dilation", {"mtan_refinement", "options"})
