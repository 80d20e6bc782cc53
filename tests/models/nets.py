"""Small networks the model tests share: same code paths as the configured ones, fast on
two cores."""

from __future__ import annotations

from scenemtl.models import ModelConfig

HEADS = {"semseg": 5, "depth": 1}
SMALL_OPTIONS = {"invpt": {"embed_dim": 16, "pred_channels": 8}}
"""Architecture options that keep the tests' networks small (InvPT's defaults are the
authors' 512 + 64 wide transformer)."""


def small(architecture: str, **kw: object) -> ModelConfig:
    """A narrow ResNet-18 ``architecture`` (8-wide decoders); ``kw`` overrides any field."""
    base = dict(
        architecture=architecture, encoder="resnet18", channels=8, skip_channels=4, se_reduction=2
    )
    if architecture in SMALL_OPTIONS:
        base["options"] = SMALL_OPTIONS[architecture]
    base.update(kw)
    return ModelConfig(**base)
