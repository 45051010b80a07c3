"""vitkit: the Vision Transformer of Dosovitskiy et al. (ICLR 2021), paper-faithful and practical."""

from __future__ import annotations

from typing import Any

import torch

from .models import ViTConfig, VisionTransformer, get_config, list_models, resample_pos_embed

__version__ = "0.1.0"


def create_model(name: str, pretrained: bool | str | None = None, **overrides: Any) -> VisionTransformer:
    """Build a registered model (timm name or paper alias) with `overrides` of its config.

    `pretrained`: a local file or directory, a Hugging Face Hub id, or True for the default
    published weights of `name` (see vitkit.checkpoints.hub).
    """
    model = VisionTransformer(get_config(name, **overrides))
    if pretrained:
        from .checkpoints.hub import load_pretrained

        load_pretrained(model, name if pretrained is True else pretrained)
    return model


__all__ = ["ViTConfig", "VisionTransformer", "create_model", "get_config", "list_models", "resample_pos_embed"]
