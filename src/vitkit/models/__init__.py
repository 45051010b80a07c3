"""The ViT model family: configuration, modules, hybrid backbone, position embeddings, registry."""

from .config import ViTConfig
from .posembed import RESAMPLE_METHODS, resample_pos_embed
from .registry import ALIASES, MODELS, get_config, list_models, resolve_name
from .vit import Attention, Block, Mlp, PatchEmbed, VisionTransformer

__all__ = [
    "ALIASES", "MODELS", "RESAMPLE_METHODS", "Attention", "Block", "Mlp", "PatchEmbed", "ViTConfig",
    "VisionTransformer", "get_config", "list_models", "resample_pos_embed", "resolve_name",
]  # fmt: skip
