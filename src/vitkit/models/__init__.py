"""The model families: ViT (and its hybrid) and BiT ResNet-V2; configurations, modules, registry."""

from ..lazy import lazy_exports

EXPORTS = {
    ".build": ("ModelConfig", "build_model", "config_from_dict"),
    ".config": ("ViTConfig",),
    ".posembed": ("RESAMPLE_METHODS", "resample_pos_embed"),
    ".registry": ("ALIASES", "MODELS", "get_config", "list_models", "resolve_name"),
    ".resnet": ("ResNetV2",),
    ".resnet_config": ("ResNetConfig",),
    ".vit": ("Attention", "Block", "Mlp", "PatchEmbed", "VisionTransformer"),
}
__all__ = sorted(name for names in EXPORTS.values() for name in names)
__getattr__, __dir__ = lazy_exports(__name__, EXPORTS)
