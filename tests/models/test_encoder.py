"""ResNet encoder family: torchvision-compatible weights, dilation, feature pyramid."""

from __future__ import annotations

import argparse
import itertools
import math
import urllib.error
from pathlib import Path

import pytest
import torch

from scenemtl.errors import UserError
from scenemtl.models.encoders.registry import build_encoder
from scenemtl.models.encoders.resnet import ResNetEncoder, ResNetOptions

BLOCKS = {
    "resnet18": (2, 2, 2, 2),
    "resnet34": (3, 4, 6, 3),
    "resnet50": (3, 4, 6, 3),
    "resnet101": (3, 4, 23, 3),
}
# published totals of torchvision's resnets, including the 1000-class fc
TORCHVISION_PARAMS = {
    "resnet18": 11_689_512,
    "resnet34": 21_797_672,
    "resnet50": 25_557_032,
    "resnet101": 44_549_160,
}
BOTTLENECK = {"resnet50", "resnet101"}


def _bn(prefix: str, c: int, g: torch.Generator) -> dict[str, torch.Tensor]:
    return {
        f"{prefix}.weight": torch.rand(c, generator=g) + 0.5,
        f"{prefix}.bias": torch.randn(c, generator=g),
        f"{prefix}.running_mean": torch.randn(c, generator=g),
        f"{prefix}.running_var": torch.rand(c, generator=g) + 0.5,
        f"{prefix}.num_batches_tracked": torch.tensor(7),
    }


def torchvision_state_dict(name: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """A state dict with torchvision's ResNet key names and shapes, random values.

    Written from torchvision's layout, independently of the encoder under test.
    """
    g = torch.Generator().manual_seed(seed)
    sd = {"conv1.weight": torch.randn(64, 3, 7, 7, generator=g)}
    sd.update(_bn("bn1", 64, g))
    cin = 64
    for stage, (n, c) in enumerate(zip(BLOCKS[name], (64, 128, 256, 512), strict=True), 1):
        for b in range(n):
            p = f"layer{stage}.{b}"
            if name in BOTTLENECK:
                # 1x1 reduce to c, 3x3 at c, 1x1 expand to 4c
                cout = 4 * c
                sd[f"{p}.conv1.weight"] = torch.randn(c, cin, 1, 1, generator=g)
                sd.update(_bn(f"{p}.bn1", c, g))
                sd[f"{p}.conv2.weight"] = torch.randn(c, c, 3, 3, generator=g)
                sd.update(_bn(f"{p}.bn2", c, g))
                sd[f"{p}.conv3.weight"] = torch.randn(cout, c, 1, 1, generator=g)
                sd.update(_bn(f"{p}.bn3", cout, g))
                has_downsample = b == 0  # layer1 too: 64 -> 256 channels
            else:
                cout = c
                sd[f"{p}.conv1.weight"] = torch.randn(c, cin, 3, 3, generator=g)
                sd.update(_bn(f"{p}.bn1", c, g))
                sd[f"{p}.conv2.weight"] = torch.randn(c, c, 3, 3, generator=g)
                sd.update(_bn(f"{p}.bn2", c, g))
                has_downsample = b == 0 and stage > 1
            if has_downsample:
                sd[f"{p}.downsample.0.weight"] = torch.randn(cout, cin, 1, 1, generator=g)
                sd.update(_bn(f"{p}.downsample.1", cout, g))
            cin = cout
    sd["fc.weight"] = torch.randn(1000, cin, generator=g)
    sd["fc.bias"] = torch.randn(1000, generator=g)
    return sd


@pytest.mark.parametrize("name", list(BLOCKS))
def test_parameter_count_is_torchvision_without_fc(name: str) -> None:
    encoder = ResNetEncoder(name)
    width = 2048 if name in BOTTLENECK else 512
    fc = width * 1000 + 1000
    assert sum(p.numel() for p in encoder.parameters()) == TORCHVISION_PARAMS[name] - fc


@pytest.mark.parametrize("name", list(BLOCKS))
def test_torchvision_state_dict_loads_strictly_and_drops_fc(name: str, tmp_path: Path) -> None:
    sd = torchvision_state_dict(name)
    # the state dict written from torchvision's layout has its published size
    assert (
        sum(v.numel() for k, v in sd.items() if "running" not in k and "num_batches" not in k)
        == (TORCHVISION_PARAMS[name])
    )
    path = tmp_path / "w.pth"
    torch.save(sd, path)
    encoder = build_encoder(name, str(path))
    assert not hasattr(encoder, "fc")
    loaded = encoder.state_dict()
    assert set(loaded) == {k for k in sd if not k.startswith("fc.")}
    keys = ["conv1.weight", "layer2.0.downsample.0.weight", "layer4.1.bn2.running_var"]
    if name in BOTTLENECK:
        keys += ["layer1.0.conv3.weight", "layer1.0.downsample.0.weight", "layer3.5.bn3.bias"]
    for key in keys:
        assert torch.equal(loaded[key], sd[key])


def test_bottleneck_layout_and_channel_table() -> None:
    encoder = ResNetEncoder("resnet50", (False, False, True))
    assert encoder.channels == {2: 64, 4: 256, 8: 512, 16: 2048}
    shapes = {k: tuple(v.shape) for k, v in encoder.state_dict().items()}
    assert shapes["layer1.0.conv1.weight"] == (64, 64, 1, 1)
    assert shapes["layer1.0.conv3.weight"] == (256, 64, 1, 1)
    assert shapes["layer1.0.downsample.0.weight"] == (256, 64, 1, 1)
    assert shapes["layer2.0.conv2.weight"] == (128, 128, 3, 3)
    assert "layer1.1.downsample.0.weight" not in shapes
    # the stride sits on the 3x3 (torchvision's V1.5), not on the first 1x1
    assert encoder.layer2[0].conv1.stride == (1, 1)
    assert encoder.layer2[0].conv2.stride == (2, 2)
    assert len(ResNetEncoder("resnet101").layer3) == 23


def test_resnet50_files_of_other_depths_do_not_load(tmp_path: Path) -> None:
    path = tmp_path / "r34.pth"
    torch.save(torchvision_state_dict("resnet34"), path)
    with pytest.raises(UserError, match="does not fit resnet50") as err:
        build_encoder("resnet50", str(path))
    assert "\n" not in str(err.value)


def test_wrong_key_names_are_a_one_line_error(tmp_path: Path) -> None:
    sd = torchvision_state_dict("resnet18")
    sd["layer1.0.conv_1.weight"] = sd.pop("layer1.0.conv1.weight")
    path = tmp_path / "renamed.pth"
    torch.save(sd, path)
    with pytest.raises(UserError) as err:
        build_encoder("resnet18", str(path))
    msg = str(err.value)
    assert "\n" not in msg
    assert "layer1.0.conv1.weight" in msg and "layer1.0.conv_1.weight" in msg
    assert "renamed.pth" in msg


def test_wrong_shapes_are_a_one_line_error(tmp_path: Path) -> None:
    # a resnet18 file given to a resnet34 encoder: keys missing; a shape change: named
    path18 = tmp_path / "r18.pth"
    torch.save(torchvision_state_dict("resnet18"), path18)
    with pytest.raises(UserError, match="missing keys"):
        build_encoder("resnet34", str(path18))
    sd = torchvision_state_dict("resnet18")
    sd["layer3.1.conv2.weight"] = torch.zeros(256, 256, 1, 1)
    path = tmp_path / "shape.pth"
    torch.save(sd, path)
    with pytest.raises(UserError, match=r"layer3\.1\.conv2\.weight has shape \[256, 256, 1, 1\]"):
        build_encoder("resnet18", str(path))


def test_weights_file_problems(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="weights file not found"):
        build_encoder("resnet18", str(tmp_path / "nope.pth"))
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a torch file")
    with pytest.raises(UserError, match="cannot load weights file"):
        build_encoder("resnet18", str(garbage))
    # weights_only=True refuses arbitrary pickled objects
    pickled = tmp_path / "object.pth"
    torch.save(argparse.Namespace(a=1), pickled)
    with pytest.raises(UserError, match="cannot load weights file"):
        build_encoder("resnet18", str(pickled))
    not_dict = tmp_path / "tensor.pth"
    torch.save(torch.zeros(3), not_dict)
    with pytest.raises(UserError, match="does not hold a state dict"):
        build_encoder("resnet18", str(not_dict))


def test_imagenet_weights_come_from_the_hub_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def no_download(*args: object, **kwargs: object) -> None:
        raise AssertionError("must not download when the file is cached")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)
    folder = tmp_path / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    sd = torchvision_state_dict("resnet18", seed=3)
    torch.save(sd, folder / "resnet18-f37072fd.pth")
    encoder = build_encoder("resnet18", "imagenet")
    assert torch.equal(encoder.layer3[0].conv1.weight, sd["layer3.0.conv1.weight"])
    assert torch.equal(encoder.bn1.running_mean, sd["bn1.running_mean"])


def test_imagenet_weights_offline_name_file_and_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def offline(*args: object, **kwargs: object) -> None:
        raise urllib.error.URLError("Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(UserError) as err:
        build_encoder("resnet34", "imagenet")
    msg = str(err.value)
    assert "\n" not in msg
    published = ResNetEncoder.published_weights("resnet34", "imagenet", ResNetOptions())
    assert published is not None and published.file_name == "resnet34-b627a593.pth"
    assert "resnet34-b627a593.pth" in msg
    assert str(tmp_path / "hub" / "checkpoints") in msg


@pytest.mark.parametrize(("name", "last"), [("resnet18", "bn2"), ("resnet50", "bn3")])
def test_random_init_zeroes_residual_branches(name: str, last: str) -> None:
    encoder = ResNetEncoder(name)
    for stage in range(1, 5):
        for block in getattr(encoder, f"layer{stage}"):
            assert torch.count_nonzero(getattr(block, last).weight) == 0
            assert torch.count_nonzero(block.bn1.weight) == block.bn1.weight.numel()


def _expected_sizes(h: int, w: int, dilation: tuple[bool, bool, bool]) -> dict[int, tuple]:
    """Spatial size per pyramid key: every stride-2 layer maps n to ceil(n / 2)."""

    def down(n: int, times: int) -> int:
        for _ in range(times):
            n = math.ceil(n / 2)
        return n

    sizes = {2: (down(h, 1), down(w, 1)), 4: (down(h, 2), down(w, 2))}
    strides = 2
    for d in dilation:
        strides += 0 if d else 1
        sizes[2**strides] = (down(h, strides), down(w, strides))
    return sizes


@pytest.mark.parametrize("dilation", list(itertools.product([False, True], repeat=3)))
def test_pyramid_keys_channels_and_sizes(dilation: tuple[bool, bool, bool]) -> None:
    encoder = ResNetEncoder("resnet18", dilation).eval()
    h, w = 45, 67
    with torch.no_grad():
        pyramid = encoder(torch.randn(1, 3, h, w))
    output_stride = 32 // 2 ** sum(dilation)
    assert max(pyramid) == encoder.output_stride == output_stride
    expected = _expected_sizes(h, w, dilation)
    assert set(pyramid) == set(expected)
    for scale, feat in pyramid.items():
        assert tuple(feat.shape[-2:]) == expected[scale]
        assert feat.shape[1] == encoder.channels[scale]
    # the bottleneck is always layer4's 512 channels, the stem 64
    assert pyramid[output_stride].shape[1] == 512
    assert pyramid[2].shape[1] == 64


def test_dilated_stage_follows_torchvision() -> None:
    encoder = ResNetEncoder("resnet34", (False, True, True))
    # first block of a dilated stage keeps the previous dilation in its first conv
    assert encoder.layer3[0].conv1.dilation == (1, 1)
    assert encoder.layer3[0].conv2.dilation == (2, 2)
    assert encoder.layer3[5].conv1.dilation == (2, 2)
    assert encoder.layer4[0].conv1.dilation == (2, 2)
    assert encoder.layer4[0].conv2.dilation == (4, 4)
    assert encoder.layer4[0].conv1.stride == (1, 1)
    assert encoder.layer4[0].downsample[0].stride == (1, 1)


@pytest.mark.parametrize("dilation", [(False, False, True), (False, True, True)])
def test_dilated_bottleneck_stage_follows_torchvision(dilation: tuple[bool, bool, bool]) -> None:
    encoder = ResNetEncoder("resnet50", dilation).eval()
    # torchvision: the first block of a dilated stage keeps the previous dilation in its
    # 3x3 (previous_dilation), the later blocks take the new one; 1x1 convs never dilate
    d3 = 2 if dilation[1] else 1
    d4 = d3 * 2
    assert encoder.layer3[0].conv2.dilation == (1, 1)
    assert encoder.layer3[1].conv2.dilation == (d3, d3)
    assert encoder.layer4[0].conv2.dilation == (d3, d3)
    assert encoder.layer4[2].conv2.dilation == (d4, d4)
    assert encoder.layer4[0].conv2.stride == encoder.layer4[0].downsample[0].stride == (1, 1)
    assert encoder.layer4[0].conv1.dilation == encoder.layer4[0].conv3.dilation == (1, 1)
    with torch.no_grad():
        pyramid = encoder(torch.randn(1, 3, 45, 67))
    os_ = 32 // 2 ** sum(dilation)
    assert max(pyramid) == encoder.output_stride == os_
    assert pyramid[os_].shape[1] == 2048
    assert tuple(pyramid[os_].shape[-2:]) == _expected_sizes(45, 67, dilation)[os_]


def test_unknown_encoder_is_a_user_error() -> None:
    with pytest.raises(UserError, match="unknown encoder 'resnet152'"):
        ResNetEncoder("resnet152")


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_width_scales_every_stage_and_keeps_the_module_names(name: str) -> None:
    narrow, published = ResNetEncoder(name, width=16), ResNetEncoder(name)
    assert narrow.state_dict().keys() == published.state_dict().keys()
    expansion = 4 if name == "resnet50" else 1
    assert narrow.channels == {2: 16, 4: 16 * expansion, 8: 32 * expansion,
                               16: 64 * expansion, 32: 128 * expansion}  # fmt: skip
    # every conv has 1/4 of the published weights (both its in and out widths are 1/4),
    # but conv1's input (3 RGB channels) is not scaled: it has 1/4 of the published ones
    for key, tensor in narrow.state_dict().items():
        full = published.state_dict()[key]
        if tensor.ndim == 4:
            shrink = 4 if key == "conv1.weight" else 16
            assert full.numel() == shrink * tensor.numel(), key
    pyramid = narrow(torch.randn(1, 3, 64, 64))
    assert {s: f.shape[1] for s, f in pyramid.items()} == narrow.channels


def test_a_width_without_published_weights_is_one_line() -> None:
    with pytest.raises(UserError, match="published width 64 only"):
        build_encoder("resnet18", "imagenet", {"width": 16})
    for bad in (0, -4, 2.5, True, 4096):
        with pytest.raises(UserError, match="encoder_width"):
            ResNetEncoder("resnet18", width=bad)  # type: ignore[arg-type]
