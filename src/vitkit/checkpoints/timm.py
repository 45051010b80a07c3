"""timm state dicts: vitkit uses timm's parameter names, so the map is almost the identity."""

from __future__ import annotations

import re
from typing import Mapping

import torch

from ..models import ViTConfig

# (pattern, replacement) applied in order to every key.
KEY_MAP: list[tuple[str, str]] = [
    (r"^module\.", ""),  # saved from DistributedDataParallel
    # timm's stem-only hybrid (vit_tiny_r_s16_p8) makes the stem itself the backbone
    (r"^patch_embed\.backbone\.(conv|norm)\.", r"patch_embed.backbone.stem.\1."),
]


def convert(state: Mapping[str, torch.Tensor], cfg: ViTConfig) -> dict[str, torch.Tensor]:
    """timm VisionTransformer state dict -> vitkit state dict."""
    if "fc_norm.weight" in state:
        raise ValueError(
            "this timm checkpoint applies its LayerNorm after pooling (fc_norm); vitkit follows the paper "
            "(final LayerNorm on every token, then pooling) and cannot reproduce it exactly"
        )
    out = {}
    for key, value in state.items():
        for pattern, repl in KEY_MAP:
            key = re.sub(pattern, repl, key)
        out[key] = value
    return out
