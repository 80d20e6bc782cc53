"""Fine-tuning options: layer-wise learning-rate decay on a small ViT against a table
computed by hand, a frozen encoder through a real Lightning fit, LoRA adapters."""

from __future__ import annotations

import logging

import lightning as L
import pytest
import torch
from torch import nn

from scenemtl.engine.finetune import (
    LoRAConfig,
    LoRALinear,
    apply_finetuning,
    encoders_of,
    inject_lora,
    trainable_summary,
    vit_layer_id,
)
from scenemtl.engine.module import MultiTaskModule
from scenemtl.errors import UserError
from scenemtl.models.base import make_bottleneck, make_decoder
from scenemtl.models.encoders import vit
from scenemtl.models.encoders.vit import ViTEncoder, ViTVariant

NET = {
    "architecture": "joint",
    "encoder": "resnet18",
    "encoder_width": 16,
    "channels": 8,
    "skip_channels": 4,
}
TINY = "vit_tiny_test"
TINY_REG = "dinov2_tiny_reg_test"
PYRAMID = 16


@pytest.fixture
def tiny_vits(monkeypatch):
    """Two 3-block, 32-wide ViTs registered for the test: timm's layout and DINOv2's with
    registers and layer scales."""
    monkeypatch.setitem(vit.VARIANTS, TINY, ViTVariant(16, 32, 3, 2, 4, "none"))
    monkeypatch.setitem(
        vit.VARIANTS, TINY_REG, ViTVariant(14, 32, 3, 2, 4, "none", dinov2=True, registers=4)
    )


def vit_module(name: str, **options) -> MultiTaskModule:
    """A joint network on a 3-block ViT: built on a ResNet, then given the ViT and an ASPP
    and decoder for its pyramid (the registry builds published variants only, the smallest
    has 12 blocks of 384); the fine-tuning options applied as the module applies them."""
    finetuning = {
        k: options.pop(k) for k in ("layer_decay", "freeze_encoder", "lora") if k in options
    }
    module = MultiTaskModule(net=NET, **options)
    torch.manual_seed(0)
    net = module.net
    net.encoder = ViTEncoder(name, pyramid_channels=PYRAMID)
    net.aspp = make_bottleneck(net.cfg, PYRAMID)
    net.decoder = make_decoder(net.cfg, net.encoder.channels, sum(net.split_sizes))
    lora = finetuning.get("lora")
    apply_finetuning(net, finetuning.get("freeze_encoder", False), LoRAConfig.parse(lora))
    module.hparams.update(finetuning)
    return module


# --------------------------------------------------------------------------------------
# layer-wise learning-rate decay

# decay 0.5 on a 3-block ViT: id 0 -> 0.5^4, block i -> 0.5^(3 - i), the rest 0.5^0;
# powers of two, so every multiplier is exact in binary floating point
HAND = {
    "cls_token": 1 / 16,
    "pos_embed": 1 / 16,
    "register_tokens": 1 / 16,
    "patch_embed.proj.weight": 1 / 16,
    "patch_embed.proj.bias": 1 / 16,
    "blocks.0.norm1.weight": 1 / 8,
    "blocks.0.attn.qkv.weight": 1 / 8,
    "blocks.0.ls1.gamma": 1 / 8,
    "blocks.1.attn.proj.bias": 1 / 4,
    "blocks.1.mlp.fc1.weight": 1 / 4,
    "blocks.2.mlp.fc2.weight": 1 / 2,
    "blocks.2.norm2.bias": 1 / 2,
    "norm.weight": 1.0,
    "norm.bias": 1.0,
    "adapter.levels.4.0.weight": 1.0,
}


def test_vit_layer_ids_are_beit_and_mae_ones():
    assert [vit_layer_id(n, 12) for n in ("cls_token", "pos_embed", "patch_embed.proj.weight")] == [
        0,
        0,
        0,
    ]
    assert vit_layer_id("blocks.0.attn.qkv.weight", 12) == 1
    assert vit_layer_id("blocks.11.mlp.fc2.bias", 12) == 12
    assert vit_layer_id("norm.weight", 12) == 13
    assert vit_layer_id("adapter.levels.4.0.weight", 12) == 13


@pytest.mark.parametrize("name", [TINY, TINY_REG])
def test_each_parameter_learns_at_the_hand_computed_rate(tiny_vits, name):
    module = vit_module(name, optimizer="adamw", lr=0.1, layer_decay=0.5)
    rate = {
        id(p): g["lr"] for g in module.make_optimizer(fused=False).param_groups for p in g["params"]
    }
    named = dict(module.net.encoder.named_parameters())
    # timm's ViT has neither registers nor layer scales
    absent = {"register_tokens", "blocks.0.ls1.gamma"} if name == TINY else set()
    assert set(HAND) - set(named) == absent
    for pname, scale in HAND.items():
        if pname in named:
            # lr times a power of two: exact
            assert rate[id(named[pname])] == pytest.approx(0.1 * scale, rel=1e-15), pname
    # every parameter once; decoders and heads, the balancer's, the top: the base rate
    assert sorted(rate) == sorted(id(p) for p in module.parameters() if p.requires_grad)
    for p in module.net.decoder.parameters():
        assert rate[id(p)] == 0.1
    # group 0 (logged as lr) stays the base rate
    assert module.make_optimizer(fused=False).param_groups[0]["lr"] == 0.1


def test_layer_decay_off_keeps_the_two_groups(tiny_vits):
    module = vit_module(TINY, optimizer="adamw", lr=0.1)
    assert len(module.make_optimizer(fused=False).param_groups) == 2


@pytest.mark.parametrize("value", [0.0, 1.5, -0.5, "x", True])
def test_bad_layer_decay_is_one_line(value):
    with pytest.raises(UserError, match=r"model.layer_decay must be in \(0, 1\]"):
        MultiTaskModule(net=NET, layer_decay=value)


def test_layer_decay_refuses_a_family_without_layer_ids():
    with pytest.raises(UserError) as err:
        MultiTaskModule(net=NET, layer_decay=0.75)
    assert "ViT encoders only" in str(err.value) and "ResNetEncoder" in str(err.value)


# --------------------------------------------------------------------------------------
# frozen encoder


def _batches(n: int):
    gen = torch.Generator().manual_seed(0)
    return [
        {
            "image": torch.randn(2, 3, 32, 32, generator=gen),
            "semseg": torch.randint(0, 19, (2, 32, 32), generator=gen),
            "depth": torch.rand(2, 32, 32, generator=gen) * 50 + 5,
        }
        for _ in range(n)
    ]


def _fit(module: MultiTaskModule, steps: int) -> None:
    trainer = L.Trainer(
        max_steps=steps,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
    )
    trainer.fit(
        module, train_dataloaders=torch.utils.data.DataLoader(_batches(steps), batch_size=None)
    )


def _state(m: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in m.state_dict().items()}


@pytest.mark.slow
def test_frozen_encoder_keeps_weights_and_batchnorm_statistics(caplog):
    torch.manual_seed(0)
    module = MultiTaskModule(net=NET, optimizer="adamw", lr=1e-2, freeze_encoder=True)
    encoder = _state(module.net.encoder)
    assert any(k.endswith("running_mean") for k in encoder)
    decoder = _state(module.net.decoder)
    frozen = {id(p) for p in module.net.encoder.parameters()}
    opt = module.make_optimizer(fused=False)
    assert not frozen & {id(p) for g in opt.param_groups for p in g["params"]}
    with caplog.at_level(logging.INFO):
        _fit(module, 3)
    # the same stored values, not two computations: bitwise identity is the claim
    after = module.net.encoder.state_dict()
    assert all(torch.equal(after[k], v) for k, v in encoder.items())
    moved = [
        k for k, v in module.net.decoder.state_dict().items() if not torch.equal(v, decoder[k])
    ]
    assert any(k.endswith("weight") for k in moved) and any("running_mean" in k for k in moved)
    # the count printed at the start of fit
    total = sum(p.numel() for p in module.parameters())
    trainable = total - sum(p.numel() for p in module.net.encoder.parameters())
    assert f"trainable parameters: {trainable:,} / {total:,}" in caplog.text


def test_frozen_encoder_is_in_eval_mode_while_training():
    module = MultiTaskModule(net=NET, freeze_encoder=True).train()
    assert not any(m.training for m in module.net.encoder.modules())
    assert all(m.training for m in module.net.decoder.modules())
    module.eval().train()  # Lightning's validation switches back and forth
    assert not module.net.encoder.training and module.net.decoder.training


def test_frozen_vit_keeps_its_random_pyramid_trainable(tiny_vits):
    module = vit_module(TINY, freeze_encoder=True)
    enc = module.net.encoder
    assert not any(
        p.requires_grad for n, p in enc.named_parameters() if not n.startswith("adapter.")
    )
    assert all(p.requires_grad for p in enc.adapter.parameters())
    module.train()
    assert enc.adapter.training and not enc.blocks[0].training and not enc.training


# --------------------------------------------------------------------------------------
# LoRA


def test_lora_starts_as_the_base_layer_and_learns_a_low_rank_update():
    torch.manual_seed(0)
    base = nn.Linear(24, 40).double()
    wrapped = LoRALinear(base, rank=4, alpha=8)
    x = torch.randn(5, 24, dtype=torch.float64)
    # lora_B is zero: the update is exactly 0 * (something finite) and the base path is
    # the same nn.Linear call, so the difference is 0 in exact arithmetic; the bound only
    # allows a kernel that is not bitwise reproducible between calls (24 float64 products)
    torch.testing.assert_close(wrapped(x), base(x), rtol=0, atol=1e-12)
    with torch.no_grad():
        wrapped.lora_B.weight.normal_()
    update = wrapped.lora_B.weight @ wrapped.lora_A.weight * (8 / 4)  # [40, 24], rank 4
    assert torch.linalg.matrix_rank(update).item() == 4
    # float64: both sides are sums of 24 products of values ~1; 1e-10 >> 24 * 2^-52 * 10
    torch.testing.assert_close(
        wrapped(x), x @ (base.weight + update).T + base.bias, rtol=0, atol=1e-10
    )
    assert [n for n, p in wrapped.named_parameters() if p.requires_grad] == [
        "lora_A.weight",
        "lora_B.weight",
    ]


@pytest.mark.slow
def test_lora_on_a_vit_trains_only_adapters_and_heads(tiny_vits, caplog):
    module = vit_module(TINY, optimizer="adamw", lr=1e-2)
    enc = module.net.encoder
    x = torch.randn(2, 3, 32, 32)
    enc.eval()
    with torch.no_grad():
        before_out = enc.tokens(x)
    apply_finetuning(module.net, False, LoRAConfig.parse({"rank": 2, "alpha": 4}))
    module.hparams["lora"] = {"rank": 2, "alpha": 4}
    wrapped = [n for n, m in enc.named_modules() if isinstance(m, LoRALinear)]
    assert len(wrapped) == 3 * 4  # qkv, proj, fc1, fc2 of each block; not the adapter
    with torch.no_grad():
        # float32 [2, 32, 2, 2] tokens after 3 blocks: the same ops, the zero update added
        # exactly; only the order inside the same kernels could differ -> 1e-6
        torch.testing.assert_close(enc.tokens(x), before_out, rtol=0, atol=1e-6)
    start = _state(module)
    module.train()
    with caplog.at_level(logging.INFO):
        _fit(module, 2)
    changed = {k for k, v in module.state_dict().items() if not torch.equal(v, start[k])}
    enc_changed = {k for k in changed if k.startswith("net.encoder.")}
    assert enc_changed and all(
        ".lora_A." in k or ".lora_B." in k or k.startswith("net.encoder.adapter.")
        for k in enc_changed
    )
    assert any(k.startswith("net.decoder.") for k in changed)
    assert any(".lora_B." in k for k in enc_changed)  # B moved off zero
    assert trainable_summary(module) in caplog.text


def test_lora_refuses_an_encoder_without_linear_layers():
    with pytest.raises(UserError, match="ResNetEncoder has no linear layer named qkv/proj"):
        MultiTaskModule(net=NET, lora={"rank": 4})


@pytest.mark.parametrize(
    ("lora", "culprit"),
    [
        ({"rank": 0}, "model.lora.rank must be a positive integer"),
        ({"alpha": -1}, "model.lora.alpha must be a positive number"),
        ({"targets": []}, "model.lora.targets must be a list"),
        ({"dropout": 1.0}, "model.lora.dropout must be in [0, 1)"),
        ({"rnak": 4}, "model.lora: unknown keys ['rnak']"),
    ],
)
def test_bad_lora_options_are_one_line(lora, culprit):
    with pytest.raises(UserError) as err:
        MultiTaskModule(net=NET, lora=lora)
    assert culprit in str(err.value) and "\n" not in str(err.value)


def test_encoders_of_finds_one_per_task():
    module = MultiTaskModule(net={**NET, "architecture": "task_specific"})
    assert sorted(encoders_of(module.net)) == ["encoders.depth.", "encoders.semseg."]


def test_gradient_balancing_with_nothing_shared_that_trains_is_refused():
    # branched shares only the encoder: frozen, the tasks share no trained parameter
    branched = {**NET, "architecture": "branched"}
    with pytest.raises(UserError, match="'pcgrad' combines the task gradients.*branched shares"):
        MultiTaskModule(net=branched, freeze_encoder=True, loss_weighting="pcgrad")
    MultiTaskModule(net=branched, freeze_encoder=True, loss_weighting="uncertainty")
    # joint still shares its ASPP and decoder
    MultiTaskModule(net=NET, freeze_encoder=True, loss_weighting="pcgrad")


def test_no_weight_decay_on_1d_parameters_and_vit_embeddings(tiny_vits):
    module = vit_module(
        TINY_REG, optimizer="adamw", lr=0.1, weight_decay=0.05, layer_decay=0.5,
        no_weight_decay_1d=True,
    )  # fmt: skip
    groups = module.make_optimizer(fused=False).param_groups
    decay = {id(p): g["weight_decay"] for g in groups for p in g["params"]}
    rate = {id(p): g["lr"] for g in groups for p in g["params"]}
    named = dict(module.net.named_parameters())
    # MAE's rule: no decay for biases, norms, layer scales and the ViT's tokens
    for name in ("cls_token", "pos_embed", "register_tokens", "patch_embed.proj.bias",
                 "blocks.0.ls1.gamma", "blocks.2.norm2.bias", "norm.weight"):  # fmt: skip
        assert decay[id(named[f"encoder.{name}"])] == 0.0, name
    for name in ("patch_embed.proj.weight", "blocks.1.mlp.fc1.weight", "adapter.levels.4.0.weight"):
        assert decay[id(named[f"encoder.{name}"])] == 0.05, name
    assert rate[id(named["encoder.blocks.0.ls1.gamma"])] == pytest.approx(0.1 / 8, rel=1e-15)
    head_bias = [p for n, p in module.net.decoder.named_parameters() if p.ndim == 1]
    assert head_bias and all(decay[id(p)] == 0.0 and rate[id(p)] == 0.1 for p in head_bias)
    # the balancer's group keeps its own (none), group 0 the configured decay
    assert groups[0]["weight_decay"] == 0.05 and groups[1]["weight_decay"] == 0.0


@pytest.mark.slow
def test_fit_from_the_command_line_with_fine_tuning_options(tmp_path, tiny_root, capfd, caplog):
    """The options as a user gives them (a YAML config, a LoRA mapping refused on the
    ResNet in one line), the trainable count printed, the schedule in the checkpoint."""
    from scenemtl.cli import main
    from tests.helpers import tiny_config

    overrides = {
        "trainer.max_epochs": 1,
        "model.optimizer": "adamw",
        "model.lr_schedule": "cosine",
        "model.lr_warmup_steps": 2,
        "model.freeze_encoder": True,
        "model.no_weight_decay_1d": True,
    }
    cfg = tiny_config(tmp_path, tiny_root, **overrides)
    with pytest.raises(SystemExit) as exc, caplog.at_level(logging.INFO):
        main(["fit", "--config", str(cfg)])
    assert exc.value.code == 0
    assert "trainable parameters: " in caplog.text  # Lightning's info log (shown by the CLI)
    ckpt = torch.load(
        next((tmp_path / "runs" / "tiny").glob("version_*/checkpoints/last.ckpt")),
        map_location="cpu",
        weights_only=True,
    )
    assert ckpt["hyper_parameters"]["freeze_encoder"] is True
    state = ckpt["lr_schedulers"][0]["lr_lambdas"][0]  # 8 images / batch 2, one epoch
    assert state == {"total": 4, "floor": pytest.approx(1e-6 / 1e-3), "warmup": 2}
    capfd.readouterr()
    with pytest.raises(SystemExit) as exc:
        main(["fit", "--config", str(cfg), "--model.lora", "{rank: 4}"])
    assert exc.value.code == 1
    assert (
        "scenemtl: error: model.lora: ResNetEncoder has no linear layer" in capfd.readouterr().err
    )


def test_a_lora_adapter_learns_at_the_rate_of_the_layer_it_adapts(tiny_vits):
    module = vit_module(TINY, optimizer="adamw", lr=0.1, layer_decay=0.5, lora={"rank": 2})
    rate = {
        id(p): g["lr"] for g in module.make_optimizer(fused=False).param_groups for p in g["params"]
    }
    named = dict(module.net.encoder.named_parameters())
    assert "blocks.1.attn.qkv.base_layer.weight" in named
    assert id(named["blocks.1.attn.qkv.base_layer.weight"]) not in rate  # frozen
    for ab in ("lora_A", "lora_B"):
        assert rate[id(named[f"blocks.1.attn.qkv.{ab}.weight"])] == pytest.approx(
            0.1 / 4, rel=1e-15
        )
        assert rate[id(named[f"blocks.2.mlp.fc2.{ab}.weight"])] == pytest.approx(0.1 / 2, rel=1e-15)
    assert rate[id(named["adapter.levels.8.0.weight"])] == 0.1


# --------------------------------------------------------------------------------------
# through the configuration (the encoder registry)

VIT_NET = {
    "architecture": "joint",
    "encoder": "vit_small_patch16_224",
    "encoder_options": {"pyramid_channels": 16, "drop_path_rate": 0.2},
    "channels": 8,
    "skip_channels": 4,
}


def _drop_rates(encoder: nn.Module) -> list[float]:
    return [m.p for m in encoder.modules() if type(m).__name__ == "DropPath"]


def test_vit_from_the_config_with_lora_layer_decay_and_drop_path(tmp_path):
    torch.manual_seed(0)
    module = MultiTaskModule(net=VIT_NET, optimizer="adamw", layer_decay=0.75, lora={"rank": 4})
    enc = module.net.encoder
    # drop path reaches the blocks: linear from 0 to the rate over the 12 blocks
    rates = _drop_rates(enc)
    assert len(rates) == 12 and rates[0] == 0.0 and rates[-1] == pytest.approx(0.2)
    assert sum(isinstance(m, LoRALinear) for m in enc.modules()) == 48  # 12 blocks x 4
    # base and embeddings frozen: groups 0 and 1, then blocks 12 .. 1 at 0.75^1 .. 0.75^12
    groups = module.make_optimizer(fused=False).param_groups
    assert [g["lr"] / groups[0]["lr"] for g in groups[2:]] == pytest.approx(
        [0.75**k for k in range(1, 13)], rel=1e-12
    )
    # a LoRA checkpoint loads into the network its hyper-parameters build
    with torch.no_grad():
        for name, p in enc.named_parameters():
            if ".lora_B." in name:
                p.normal_(std=0.01)  # as if trained
    hparams = {**dict(module.hparams), "net": dict(vars(module.hparams["net"]))}
    path = tmp_path / "lora.ckpt"
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": hparams}, path)
    loaded = MultiTaskModule.from_checkpoint(path)
    image = torch.randn(1, 3, 32, 48)
    with torch.no_grad():
        want = module.eval().predict_step({"image": image})
        got = loaded.predict_step({"image": image})
    torch.testing.assert_close(got["depth"], want["depth"])  # same weights, same path


def test_layer_decay_names_the_family_it_refuses():
    net = {**VIT_NET, "encoder": "convnext_tiny", "encoder_options": {"drop_path_rate": 0.1}}
    module = MultiTaskModule(net=net)
    assert max(_drop_rates(module.net.encoder)) == pytest.approx(0.1)
    with pytest.raises(UserError, match="ViT encoders only.*ConvNeXtEncoder has none"):
        MultiTaskModule(net=net, layer_decay=0.8)


def test_lora_on_swin_attention_is_the_merged_weight() -> None:
    """Swin's attention projects its heads with one einsum over a plain nn.Linear's
    weight (models/encoders/swin.py: the export needs it); with LoRA injected there the
    wrapper must run, and give what the merged weight W + (alpha / rank) B A gives on the
    einsum path. Float64: two orders of the same sums, errors ~1e-15."""
    from scenemtl.models.encoders.swin import WindowAttention

    torch.manual_seed(0)
    attention = WindowAttention(dim=8, heads=2, window=2).double()
    x = torch.randn(3, 4, 4, 8, dtype=torch.float64)  # [B, windows, w*w, C]
    plain = attention(x)
    assert inject_lora(attention, LoRAConfig(rank=2, alpha=4.0, targets=["proj"])) == 1
    lora = attention.proj
    assert torch.allclose(attention(x), plain, rtol=0, atol=1e-12)  # B = 0 at the start
    nn.init.normal_(lora.lora_B.weight)
    adapted = attention(x)
    merged = nn.Linear(8, 8).double()
    with torch.no_grad():
        merged.weight.copy_(lora.base_layer.weight + 2.0 * lora.lora_B.weight @ lora.lora_A.weight)
        merged.bias.copy_(lora.base_layer.bias)
    attention.proj = merged
    expected = attention(x)
    assert not torch.allclose(expected, plain, atol=1e-3)
    torch.testing.assert_close(adapted, expected, rtol=1e-12, atol=1e-12)
