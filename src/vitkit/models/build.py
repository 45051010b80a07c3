"""One constructor for every model family: the config's type says which module to build."""

from __future__ import annotations

from typing import Any, Union

from torch import nn

from .config import ViTConfig
from .resnet_config import ResNetConfig

ModelConfig = Union[ViTConfig, ResNetConfig]


def build_model(cfg: ModelConfig) -> nn.Module:
    """A ViT or hybrid (`VisionTransformer`) for a ViTConfig, a BiT classifier (`ResNetV2`) for a ResNetConfig."""
    if isinstance(cfg, ResNetConfig):
        from .resnet import ResNetV2

        return ResNetV2(cfg)
    from .vit import VisionTransformer

    return VisionTransformer(cfg)


def config_from_dict(d: dict[str, Any]) -> ModelConfig:
    """A config saved by `to_dict`; its `family` entry names the class (files without one hold a ViT)."""
    family = d.get("family")
    fields = {k: v for k, v in d.items() if k != "family"}
    return ResNetConfig.from_dict(fields) if family == "resnet" else ViTConfig.from_dict(fields)
