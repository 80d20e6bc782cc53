"""Fine-tuning a pretrained encoder: layer-wise learning-rate decay (ViTs), a frozen
encoder, and LoRA adapters on its linear layers.

The network's encoders are ``net.encoder`` (one for all tasks) or ``net.encoders[task]``
(one per task); everything else (decoders, heads, mixing units) is not an encoder and is
never frozen, wrapped or decayed.

LoRA (Hu et al. 2021) is written here rather than taken from ``peft``: peft 0.21.2 imports
``transformers`` and ``accelerate`` at module level (``peft/__init__`` -> ``auto.py``,
``tuners/tuners_utils.py``, ``tuners/lora/layer.py``), so ``inject_adapter_in_model``
cannot run on these plain modules without pulling both libraries in. The wrapper follows
peft's LoRA ``Linear``: ``base(x) + lora_B(lora_A(dropout(x))) * alpha / rank``,
``lora_A`` Kaiming-uniform (a = sqrt 5, nn.Linear's default), ``lora_B`` zero, and peft's
parameter names (``base_layer``, ``lora_A``, ``lora_B``, without peft's adapter-name level).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor, nn

from scenemtl.errors import UserError
from scenemtl.models.encoders.vit import ADAPTER_PREFIX, ViTEncoder

VIT_EMBEDDINGS = ("cls_token", "pos_embed", "register_tokens", "mask_token")
"""A ViT's parameters before the first block (layer 0), besides ``patch_embed.*``."""
LORA_TARGETS = ("qkv", "proj", "fc1", "fc2")
"""Default LoRA targets: the attention's and the MLP's linear layers of the ViT and Swin
blocks (``attn.qkv``, ``attn.proj``, ``mlp.fc1``, ``mlp.fc2``) and ConvNeXt's MLP."""


def encoders_of(net: nn.Module) -> dict[str, nn.Module]:
    """The network's encoders by parameter-name prefix: ``{"encoder.": net.encoder}`` or
    ``{"encoders.<task>.": net.encoders[task], ...}`` (empty when it has neither)."""
    found: dict[str, nn.Module] = {}
    single = getattr(net, "encoder", None)
    if isinstance(single, nn.Module):
        found["encoder."] = single
    several = getattr(net, "encoders", None)
    if isinstance(several, nn.ModuleDict):
        found.update({f"encoders.{task}.": enc for task, enc in several.items()})
    return found


# --------------------------------------------------------------------------------------
# layer-wise learning-rate decay


def vit_layer_id(name: str, depth: int) -> int:
    """Layer id of a ViT encoder's parameter ``name`` (relative to the encoder) as BEiT,
    MAE and ViTDet assign them: embeddings (patch, position, class and register tokens)
    0, ``blocks.i.*`` i + 1, everything after the blocks (final norm, the simple feature
    pyramid) ``depth + 1``, the id of the decoders and heads."""
    if name in VIT_EMBEDDINGS or name.startswith("patch_embed."):
        return 0
    if name.startswith("blocks."):
        return int(name.split(".")[1]) + 1
    return depth + 1


def check_layer_decay(value: float) -> None:
    """``model.layer_decay`` must be in (0, 1] (1 = off)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
        raise UserError(f"model.layer_decay must be in (0, 1] (1 = off), got {value!r}")


def layer_decay_scales(net: nn.Module, decay: float) -> dict[str, float]:
    """Parameter name (in ``net``) -> learning-rate multiplier ``decay ** (depth + 1 -
    layer_id)`` for every encoder parameter whose multiplier is not 1; parameters not
    listed learn at the base rate (decoders, heads, and everything when ``decay`` is 1).

    Only ViT encoders have layer ids; ``decay < 1`` with another family is refused (the
    hierarchical families have no agreed per-block rule; stage-wise decay is not offered).
    """
    check_layer_decay(decay)
    if decay == 1:
        return {}
    encoders = encoders_of(net)
    if not encoders:
        raise UserError("model.layer_decay: this network has no encoder to decay")
    scales: dict[str, float] = {}
    for prefix, encoder in encoders.items():
        if not isinstance(encoder, ViTEncoder):
            raise UserError(
                f"model.layer_decay applies to ViT encoders only (layer ids of BEiT/MAE); "
                f"{type(encoder).__name__} has none, set it to 1.0"
            )
        depth = len(encoder.blocks)
        for name, _ in encoder.named_parameters():
            power = depth + 1 - vit_layer_id(_base_name(name), depth)
            if power:
                scales[prefix + name] = decay**power
    return scales


def no_weight_decay_names(net: nn.Module) -> set[str]:
    """Names (in ``net``) of the parameters MAE, BEiT and timm fine-tune without weight
    decay: every parameter of at most one dimension (biases, norm weights, layer
    scales) and a ViT encoder's embeddings (position, class, register tokens)."""
    names = {name for name, p in net.named_parameters() if p.ndim <= 1}
    for prefix, encoder in encoders_of(net).items():
        if isinstance(encoder, ViTEncoder):
            names |= {prefix + n for n, _ in encoder.named_parameters() if n in VIT_EMBEDDINGS}
    return names


def _base_name(name: str) -> str:
    # a LoRA-wrapped linear keeps the layer of the linear it wraps
    return name.replace(".base_layer.", ".")


# --------------------------------------------------------------------------------------
# LoRA


@dataclass
class LoRAConfig:
    """``model.lora``: rank, alpha (the update is scaled by ``alpha / rank``), the names
    of the encoder's linear layers to adapt (last component of the module name), dropout
    on the adapter's input."""

    rank: int = 8
    alpha: float = 16.0
    targets: list[str] = field(default_factory=lambda: list(LORA_TARGETS))
    dropout: float = 0.0

    @classmethod
    def parse(cls, value: Mapping[str, Any] | None) -> LoRAConfig | None:
        """``model.lora`` (None = no adapters) as a config; one UserError line if bad."""
        if value is None:
            return None
        if not isinstance(value, Mapping):
            raise UserError(f"model.lora: expected a mapping or null, got {value!r}")
        known = {"rank", "alpha", "targets", "dropout"}
        unknown = sorted(set(value) - known)
        if unknown:
            raise UserError(f"model.lora: unknown keys {unknown}; known: {sorted(known)}")
        cfg = cls(**value)
        r, a, d, t = cfg.rank, cfg.alpha, cfg.dropout, cfg.targets
        if isinstance(r, bool) or not isinstance(r, int) or r < 1:
            raise UserError(f"model.lora.rank must be a positive integer, got {r!r}")
        if isinstance(a, bool) or not isinstance(a, (int, float)) or not 0 < a < math.inf:
            raise UserError(f"model.lora.alpha must be a positive number, got {a!r}")
        if isinstance(d, bool) or not isinstance(d, (int, float)) or not 0 <= d < 1:
            raise UserError(f"model.lora.dropout must be in [0, 1), got {d!r}")
        if (
            not isinstance(t, (list, tuple))
            or not t
            or not all(isinstance(n, str) and n for n in t)
        ):
            raise UserError(f"model.lora.targets must be a list of layer names, got {t!r}")
        cfg.targets = list(t)
        return cfg


class LoRALinear(nn.Module):
    """A frozen ``nn.Linear`` plus a trainable low-rank update:
    x [..., in] -> ``base_layer(x) + lora_B(lora_A(dropout(x))) * alpha / rank`` [..., out].
    ``lora_B`` starts at zero, so the wrapped layer starts as the base layer."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float = 0.0) -> None:
        super().__init__()
        self.base_layer = base
        for p in base.parameters():
            p.requires_grad_(False)
        self.lora_A = nn.Linear(base.in_features, rank, bias=False)
        self.lora_B = nn.Linear(rank, base.out_features, bias=False)
        self.dropout: nn.Module = nn.Dropout(dropout) if dropout else nn.Identity()
        self.scaling = alpha / rank
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B.weight)
        self.lora_A.to(base.weight.device, base.weight.dtype)
        self.lora_B.to(base.weight.device, base.weight.dtype)

    def forward(self, x: Tensor) -> Tensor:
        return self.base_layer(x) + self.lora_B(self.lora_A(self.dropout(x))) * self.scaling

    def extra_repr(self) -> str:
        return f"rank={self.lora_A.out_features}, scaling={self.scaling:g}"


def inject_lora(encoder: nn.Module, cfg: LoRAConfig) -> int:
    """Replace every ``nn.Linear`` of ``encoder`` whose name ends in one of
    ``cfg.targets`` by a :class:`LoRALinear` around it; returns how many. Refuses (one
    line) when none matches, e.g. a ResNet (it has no linear layers)."""
    targets = set(cfg.targets)
    chosen = [
        (name, module)
        for name, module in encoder.named_modules()
        if isinstance(module, nn.Linear)
        and name.rsplit(".", 1)[-1] in targets
        and not _in_trainable_part(encoder, name)
    ]
    if not chosen:
        raise UserError(
            f"model.lora: {type(encoder).__name__} has no linear layer named "
            f"{'/'.join(cfg.targets)}; LoRA adapts the attention and MLP linears of "
            "ViT, Swin and ConvNeXt encoders"
        )
    for name, module in chosen:
        parent_name, _, child = name.rpartition(".")
        parent = encoder.get_submodule(parent_name) if parent_name else encoder
        setattr(parent, child, LoRALinear(module, cfg.rank, cfg.alpha, cfg.dropout))
    return len(chosen)


# --------------------------------------------------------------------------------------
# frozen encoders


def trainable_parts(encoder: nn.Module) -> dict[str, nn.Module]:
    """Parts of an encoder that keep training when it is frozen: those no published file
    holds, which start random (the ViT's multi-scale adapter ``adapter``)."""
    if isinstance(encoder, ViTEncoder):
        return {ADAPTER_PREFIX: encoder.adapter}
    return {}


def _in_trainable_part(encoder: nn.Module, name: str) -> bool:
    return any((name + ".").startswith(p) for p in trainable_parts(encoder))


def freeze_base(encoder: nn.Module) -> None:
    """No gradient for the encoder's parameters, except its :func:`trainable_parts` and
    LoRA adapters."""
    for name, p in encoder.named_parameters():
        adapter = ".lora_A." in f".{name}" or ".lora_B." in f".{name}"
        if not adapter and not _in_trainable_part(encoder, name):
            p.requires_grad_(False)


def frozen_modules(encoder: nn.Module, whole: bool) -> Iterator[nn.Module]:
    """The modules of a frozen encoder that run in eval mode during training: the whole
    trunk (``whole``: no BatchNorm statistics update, no drop path or dropout in a fixed
    feature extractor) or only its BatchNorms (LoRA: drop path and the adapters' dropout
    still act)."""
    keep = {id(m) for part in trainable_parts(encoder).values() for m in part.modules()}
    for module in encoder.modules():
        if id(module) in keep:
            continue
        if whole or isinstance(module, nn.modules.batchnorm._BatchNorm):
            yield module


def apply_finetuning(net: nn.Module, freeze_encoder: bool, lora: LoRAConfig | None) -> None:
    """Freeze and/or wrap the network's encoders as configured (after their weights are
    loaded): LoRA freezes the base weights itself."""
    encoders = encoders_of(net)
    if (freeze_encoder or lora is not None) and not encoders:
        raise UserError("model.freeze_encoder / model.lora: this network has no encoder")
    for encoder in encoders.values():
        if lora is not None:
            inject_lora(encoder, lora)
        if freeze_encoder or lora is not None:
            freeze_base(encoder)


def set_frozen_modes(net: nn.Module, freeze_encoder: bool, lora: bool) -> None:
    """Put the frozen parts of the encoders in eval mode (call after ``net.train()``)."""
    if not (freeze_encoder or lora):
        return
    for encoder in encoders_of(net).values():
        for module in frozen_modules(encoder, whole=freeze_encoder):
            module.training = False  # this module only: eval() would recurse into kept parts


def trainable_summary(module: nn.Module) -> str:
    """``trainable parameters: 1,234 / 56,789 (2.2%)`` (each parameter once)."""
    params = {id(p): p for p in module.parameters()}.values()
    total = sum(p.numel() for p in params)
    trainable = sum(p.numel() for p in params if p.requires_grad)
    share = 100.0 * trainable / total if total else 0.0
    return f"trainable parameters: {trainable:,} / {total:,} ({share:.1f}%)"
