"""Encoder, blocks and the multi-task architectures; see :mod:`scenemtl.models.registry`."""

from scenemtl.models.base import MultiTaskNet
from scenemtl.models.config import ModelConfig
from scenemtl.models.registry import ARCHITECTURES, build_model

__all__ = ["ARCHITECTURES", "ModelConfig", "MultiTaskNet", "build_model"]
