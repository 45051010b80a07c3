"""vitkit: the Vision Transformer of Dosovitskiy et al. (ICLR 2021), paper-faithful and practical."""

from __future__ import annotations

from typing import Any

from .checkpoints.hub import load_pretrained
from .checkpoints.io import save
from .checkpoints.load import LoadReport, load, load_checkpoint
from torch import nn

from .data.preprocessing import DataConfig
from .models import ResNetConfig, ResNetV2, ViTConfig, VisionTransformer, build_model, get_config, list_models
from .models import resample_pos_embed
from .version import __version__ as __version__


def create_model(
    name: str, pretrained: bool | str | None = None, local_files_only: bool = False, **overrides: Any
) -> nn.Module:
    """Build a registered model (timm name or paper alias) with `overrides` of its config: a
    `VisionTransformer` (ViT or hybrid) or a BiT `ResNetV2`.

    `pretrained`: a local file or directory, a Hugging Face Hub id, or True for the default
    published weights of `name` (timm's Hub repositories). Weights for another class count get a
    zero-initialised head; another resolution gets resampled position embeddings.
    """
    model = build_model(get_config(name, **overrides))
    if pretrained:
        load_pretrained(model, name if pretrained is True else str(pretrained), local_files_only=local_files_only)
    return model


__all__ = [
    "DataConfig", "LoadReport", "ResNetConfig", "ResNetV2", "ViTConfig", "VisionTransformer", "build_model",
    "create_model", "get_config", "list_models", "load", "load_checkpoint", "load_pretrained", "resample_pos_embed",
    "save",
]  # fmt: skip
