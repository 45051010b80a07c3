"""Named variants: timm's names, which users already know, and the paper's aliases (Table 1)."""

from __future__ import annotations

import difflib
from typing import Any

from .build import ModelConfig
from .config import ViTConfig
from .resnet_config import ResNetConfig
from .resnet_registry import RESNET_ALIASES, RESNET_MODELS, RESNET_PRETRAINED_TAGS

# Table 1 of the paper: layers, width D, MLP size, heads.
WIDTHS: dict[str, dict[str, int]] = {
    "tiny": dict(depth=12, embed_dim=192, mlp_dim=768, num_heads=3),
    "small": dict(depth=12, embed_dim=384, mlp_dim=1536, num_heads=6),
    "base": dict(depth=12, embed_dim=768, mlp_dim=3072, num_heads=12),
    "large": dict(depth=24, embed_dim=1024, mlp_dim=4096, num_heads=16),
    "huge": dict(depth=32, embed_dim=1280, mlp_dim=5120, num_heads=16),
}

# (width, patch, resolution) of every plain ViT that timm registers under these names.
_PLAIN = [
    ("tiny", 16, 224), ("tiny", 16, 384),
    ("small", 8, 224), ("small", 16, 224), ("small", 16, 384), ("small", 32, 224), ("small", 32, 384),
    ("base", 8, 224), ("base", 16, 224), ("base", 16, 384), ("base", 32, 224), ("base", 32, 384),
    ("large", 14, 224), ("large", 16, 224), ("large", 16, 384), ("large", 32, 224), ("large", 32, 384),
    ("huge", 14, 224),
]  # fmt: skip

# Hybrids (section 3.1): name stem -> (width, ResNet stages, patch size on the feature map).
_HYBRID = {
    "vit_tiny_r_s16_p8": ("tiny", (), 8),
    "vit_small_r26_s32": ("small", (2, 2, 2, 2), 1),
    "vit_base_r26_s32": ("base", (2, 2, 2, 2), 1),
    "vit_base_r50_s16": ("base", (3, 4, 9), 1),
    "vit_large_r50_s32": ("large", (3, 4, 6, 3), 1),
}
_HYBRID_RESOLUTIONS = {"vit_base_r26_s32": (224,)}

# Small models for CPU work; not in the paper.
_CPU = {
    "vit_nano_patch4_28": dict(img_size=28, patch_size=4, depth=6, embed_dim=128, mlp_dim=256, num_heads=4,
                               num_classes=10, in_chans=1, mean=(0.5,), std=(0.5,)),
    "vit_micro_patch4_32": dict(img_size=32, patch_size=4, depth=6, embed_dim=192, mlp_dim=384, num_heads=3,
                                num_classes=10),
    "vit_test_patch4_16": dict(img_size=16, patch_size=4, depth=2, embed_dim=32, mlp_dim=64, num_heads=2,
                               num_classes=10),
    # The Fashion-MNIST benchmark's models: 49 tokens of 4x4 pixels; 0.8 M and 1.8 M parameters.
    "vit_fashion_patch4_28": dict(img_size=28, patch_size=4, depth=6, embed_dim=128, mlp_dim=256, num_heads=4,
                                  num_classes=10, in_chans=1, mean=(0.5,), std=(0.5,)),
    "vit_fashion_wide_patch4_28": dict(img_size=28, patch_size=4, depth=6, embed_dim=192, mlp_dim=384, num_heads=3,
                                       num_classes=10, in_chans=1, mean=(0.5,), std=(0.5,)),
    # The data-scale study's model-size axis (the paper's Fig. 3 has several sizes per family): ViT-Ti's and
    # ViT-S's Table 1 shapes (12 layers; width 192 and 384) on the same 49 tokens of 4x4 pixels; 5.4 M and 21.3 M.
    "vit_fashion_tiny_patch4_28": dict(WIDTHS["tiny"], img_size=28, patch_size=4, num_classes=10, in_chans=1,
                                       mean=(0.5,), std=(0.5,)),
    "vit_fashion_small_patch4_28": dict(WIDTHS["small"], img_size=28, patch_size=4, num_classes=10, in_chans=1,
                                        mean=(0.5,), std=(0.5,)),
    # The hybrid of the Fashion-MNIST comparison: a BiT stem (7x7/2 conv, GroupNorm, 3x3/2 max-pool) makes the
    # 7x7 tokens of vit_fashion_patch4_28, whose Transformer follows.
    "vit_fashion_hybrid_28": dict(img_size=28, backbone_layers=(), patch_size=1, depth=6, embed_dim=128, mlp_dim=256,
                                  num_heads=4, num_classes=10, in_chans=1, mean=(0.5,), std=(0.5,)),
    # `vitkit train --data fashion_mnist`'s default: 16 tokens of 7x7 pixels, ~1k images/s on 2 CPU cores.
    "vit_fashion_patch7_28": dict(img_size=28, patch_size=7, depth=6, embed_dim=128, mlp_dim=256, num_heads=4,
                                  num_classes=10, in_chans=1, mean=(0.5,), std=(0.5,)),
}  # fmt: skip


# Default published weights of each name: timm's Hugging Face Hub repositories ("timm/" + name + "." + tag).
# Weights without a classifier (ImageNet-21k or self-supervised) have num_classes 0.
PRETRAINED_TAGS: dict[str, str] = {
    "vit_tiny_patch16_224": "augreg_in21k_ft_in1k", "vit_tiny_patch16_384": "augreg_in21k_ft_in1k",
    "vit_small_patch8_224": "dino", "vit_small_patch16_224": "augreg_in21k_ft_in1k",
    "vit_small_patch16_384": "augreg_in21k_ft_in1k", "vit_small_patch32_224": "augreg_in21k_ft_in1k",
    "vit_small_patch32_384": "augreg_in21k_ft_in1k",
    "vit_base_patch8_224": "augreg2_in21k_ft_in1k", "vit_base_patch16_224": "augreg2_in21k_ft_in1k",
    "vit_base_patch16_384": "augreg_in21k_ft_in1k", "vit_base_patch32_224": "augreg_in21k_ft_in1k",
    "vit_base_patch32_384": "augreg_in21k_ft_in1k",
    "vit_large_patch16_224": "augreg_in21k_ft_in1k", "vit_large_patch16_384": "augreg_in21k_ft_in1k",
    "vit_large_patch32_224": "orig_in21k", "vit_large_patch32_384": "orig_in21k_ft_in1k",
    "vit_huge_patch14_224": "orig_in21k",
    "vit_tiny_r_s16_p8_224": "augreg_in21k_ft_in1k", "vit_tiny_r_s16_p8_384": "augreg_in21k_ft_in1k",
    "vit_small_r26_s32_224": "augreg_in21k_ft_in1k", "vit_small_r26_s32_384": "augreg_in21k_ft_in1k",
    "vit_base_r50_s16_224": "orig_in21k", "vit_base_r50_s16_384": "orig_in21k_ft_in1k",
    "vit_large_r50_s32_224": "augreg_in21k_ft_in1k", "vit_large_r50_s32_384": "augreg_in21k_ft_in1k",
}  # fmt: skip
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _pretrained_defaults(name: str) -> dict[str, Any]:
    """Config fields implied by the default weights: the class count and their preprocessing."""
    tag = PRETRAINED_TAGS.get(name, "")
    if tag.endswith("in21k") or tag == "dino":
        out: dict[str, Any] = dict(num_classes=0)
        if tag == "dino":
            out.update(mean=IMAGENET_MEAN, std=IMAGENET_STD)
        return out
    return {}


def default_hub_id(name: str) -> str:
    """The Hub repository of `name`'s published weights: timm's tag when `name` carries one
    ('vit_base_patch16_224.augreg_in21k'), else the default, e.g. timm/vit_base_patch16_224.augreg2_in21k_ft_in1k."""
    registry_name = resolve_name(name)
    tag = name.partition(".")[2] or {**PRETRAINED_TAGS, **RESNET_PRETRAINED_TAGS}.get(registry_name)
    if not tag:
        raise ValueError(f"no published weights are known for {name!r}; pass a path or a Hub id")
    return f"timm/{registry_name}.{tag}"


def _build_table() -> dict[str, dict[str, Any]]:
    table: dict[str, dict[str, Any]] = {}
    for width, patch, res in _PLAIN:
        table[f"vit_{width}_patch{patch}_{res}"] = dict(
            WIDTHS[width], patch_size=patch, img_size=res, crop_pct=1.0 if res == 384 else 0.9,
            **_pretrained_defaults(f"vit_{width}_patch{patch}_{res}"),
        )  # fmt: skip
    for stem, (width, layers, patch) in _HYBRID.items():
        for res in _HYBRID_RESOLUTIONS.get(stem, (224, 384)):
            table[f"{stem}_{res}"] = dict(
                WIDTHS[width], backbone_layers=layers, patch_size=patch, img_size=res,
                crop_pct=1.0 if res == 384 else 0.9, **_pretrained_defaults(f"{stem}_{res}"),
            )  # fmt: skip
    for name, row in _CPU.items():
        table[name] = dict(row)
    return table


MODELS: dict[str, dict[str, Any]] = _build_table()

# ---- The paper's descendants, under timm's names (docs/checkpoints.md) ------------------------------------
_IMAGENET: dict[str, Any] = dict(mean=IMAGENET_MEAN, std=IMAGENET_STD)
_DEIT: dict[str, Any] = dict(patch_size=16, img_size=224, crop_pct=0.9, **_IMAGENET)
# DINOv2 is pretrained at 518 px (37 x 37 patches of 14) and published without a classifier
_DINOV2: dict[str, Any] = dict(patch_size=14, img_size=518, init_values=1e-5, crop_pct=1.0, num_classes=0, **_IMAGENET)
DESCENDANTS: dict[str, dict[str, Any]] = {
    **{f"deit_{w}_patch16_224": dict(WIDTHS[w], **_DEIT) for w in ("tiny", "small", "base")},
    **{f"deit_{w}_distilled_patch16_224": dict(WIDTHS[w], distilled=True, **_DEIT) for w in ("tiny", "small", "base")},
    **{f"deit3_{w}_patch16_224": dict(WIDTHS[w], no_embed_class=True, init_values=1e-6, **_DEIT)
       for w in ("small", "base", "large")},
    **{f"vit_{w}_patch14_dinov2": dict(WIDTHS[w], **_DINOV2) for w in ("small", "base", "large")},
    # the registers have no position embedding; timm folds the class token's into the token itself
    **{f"vit_{w}_patch14_reg4_dinov2": dict(WIDTHS[w], reg_tokens=4, no_embed_class=True, **_DINOV2)
       for w in ("small", "base", "large")},
}  # fmt: skip
MODELS.update(DESCENDANTS)
PRETRAINED_TAGS.update({name: "lvd142m" if name.endswith("dinov2") else "fb_in1k" for name in DESCENDANTS})
# Self-supervised weights of the paper's architectures, as timm tags them: no classifier, ImageNet statistics.
TAGGED: dict[str, dict[str, Any]] = {
    name: dict(num_classes=0, **_IMAGENET)
    for name in (
        "vit_base_patch16_224.mae", "vit_large_patch16_224.mae", "vit_huge_patch14_224.mae",
        "vit_small_patch16_224.dino", "vit_base_patch16_224.dino",
    )
}  # fmt: skip

# The paper's names (section 4.1), at the pretraining resolution.
ALIASES: dict[str, str] = {
    **{
        f"ViT-{short}/{patch}": f"vit_{width}_patch{patch}_224"
        for width, short in [("tiny", "Ti"), ("small", "S"), ("base", "B"), ("large", "L"), ("huge", "H")]
        for patch in (8, 14, 16, 32)
        if f"vit_{width}_patch{patch}_224" in MODELS
    },
    "R50+ViT-B/16": "vit_base_r50_s16_224",
    "R26+ViT-S/32": "vit_small_r26_s32_224",
    "R26+ViT-B/32": "vit_base_r26_s32_224",
    "R50+ViT-L/32": "vit_large_r50_s32_224",
    "R+ViT-Ti/16": "vit_tiny_r_s16_p8_224",
    # torchvision's names for the same architectures
    "vit_b_16": "vit_base_patch16_224", "vit_b_32": "vit_base_patch32_224",
    "vit_l_16": "vit_large_patch16_224", "vit_l_32": "vit_large_patch32_224", "vit_h_14": "vit_huge_patch14_224",
}


def list_models(include_aliases: bool = False) -> list[str]:
    """All registered model names (timm style), every family; with include_aliases, the papers' names too."""
    return sorted([*MODELS, *RESNET_MODELS]) + (sorted([*ALIASES, *RESNET_ALIASES]) if include_aliases else [])


def resolve_name(name: str) -> str:
    """A timm-style name or a paper alias -> the registry name; a one-line error with suggestions."""
    base = name.split(".", 1)[0]  # timm's 'name.pretrained_tag'
    base = ALIASES.get(base, RESNET_ALIASES.get(base, base))
    if base not in MODELS and base not in RESNET_MODELS:
        close = difflib.get_close_matches(name, list_models(include_aliases=True), n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join(close)}?" if close else "; see vitkit.list_models()"
        raise ValueError(f"unknown model {name!r}{hint}")
    return base


def get_config(name: str, **overrides: Any) -> ModelConfig:
    """The config registered under `name` (or its alias), with `overrides` applied: a ViTConfig, or a
    ResNetConfig for the BiT ResNets. A timm tag of self-supervised weights ('vit_base_patch16_224.mae')
    sets the class count and statistics they imply."""
    registry_name = resolve_name(name)
    if registry_name in RESNET_MODELS:
        return ResNetConfig.from_dict({**RESNET_MODELS[registry_name], "name": registry_name, **overrides})
    fields = {**MODELS[registry_name], **TAGGED.get(name, {}), "name": registry_name}
    return ViTConfig.from_dict({**fields, **overrides})
