"""The model families: ViT (and its hybrid) and BiT ResNet-V2; configurations, modules, registry."""

from .build import ModelConfig, build_model, config_from_dict
from .config import ViTConfig
from .posembed import RESAMPLE_METHODS, resample_pos_embed
from .registry import ALIASES, MODELS, get_config, list_models, resolve_name
from .resnet import ResNetV2
from .resnet_config import ResNetConfig
from .vit import Attention, Block, Mlp, PatchEmbed, VisionTransformer

__all__ = [
    "ALIASES", "MODELS", "RESAMPLE_METHODS", "Attention", "Block", "Mlp", "ModelConfig", "PatchEmbed",
    "ResNetConfig", "ResNetV2", "ViTConfig", "VisionTransformer", "build_model", "config_from_dict", "get_config",
    "list_models", "resample_pos_embed", "resolve_name",
]  # fmt: skip
