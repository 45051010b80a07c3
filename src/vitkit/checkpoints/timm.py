"""timm state dicts: vitkit uses timm's parameter names, so the map is almost the identity.

The original releases of the paper's descendants that timm converts on loading are read too: DeiT III's
LayerScale `gamma_1`/`gamma_2`, and DINOv2's `register_tokens` and `mask_token` (timm's `_convert_dinov2`).
"""

from __future__ import annotations

import re
from typing import Mapping

import torch

from ..models import ViTConfig
from .io import CheckpointError

# (pattern, replacement) applied in order to every key.
KEY_MAP: list[tuple[str, str]] = [
    (r"^module\.", ""),  # saved from DistributedDataParallel
    # timm's stem-only hybrid (vit_tiny_r_s16_p8) makes the stem itself the backbone
    (r"^patch_embed\.backbone\.(conv|norm)\.", r"patch_embed.backbone.stem.\1."),
    (r"^(blocks\.\d+)\.gamma_([12])$", r"\1.ls\2.gamma"),  # facebookresearch/deit's DeiT III
]
# Keys of timm ViT features that vitkit does not build: (pattern, the feature).
UNSUPPORTED: list[tuple[str, str]] = [
    (r"\.attn\.(q_norm|k_norm)\.", "QK normalisation (timm's qk_norm)"),
    (r"^norm_pre\.", "a LayerNorm before the encoder (timm's pre_norm, as CLIP)"),
    (r"^attn_pool\.", "attention pooling (timm's global_pool='map')"),
    (r"\.mlp\.(w12|w3|fc1_g|fc1_x|gate_proj)\.", "a SwiGLU MLP (as DINOv2 giant)"),
    (r"\.(attn|mlp)\.norm\.", "a LayerNorm inside the attention or MLP (timm's scale_attn_norm/scale_mlp_norm)"),
    (r"^patch_embed\.norm\.", "a LayerNorm in the patch embedding"),
    (r"^blocks\.\d+\.\d+\.", "DINOv2's chunked blocks (a training checkpoint)"),
]


def check_supported(keys: list[str]) -> None:
    """A one-line CheckpointError naming the first key of a feature vitkit does not build."""
    for pattern, feature in UNSUPPORTED:
        key = next((k for k in keys if re.search(pattern, k)), None)
        if key is not None:
            raise CheckpointError(f"key {key!r} belongs to {feature}, which vitkit does not support")


def _convert_dinov2(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """facebookresearch/dinov2 -> timm names: the masked-modelling token is dropped; with registers the
    class token absorbs its position embedding, which then covers the patches only (no_embed_class)."""
    state.pop("mask_token", None)
    if "register_tokens" in state:
        pos = state.pop("pos_embed")
        state["reg_token"] = state.pop("register_tokens")
        state["cls_token"] = state.pop("cls_token") + pos[:, :1]
        state["pos_embed"] = pos[:, 1:]
    return state


def convert(state: Mapping[str, torch.Tensor], cfg: ViTConfig) -> dict[str, torch.Tensor]:
    """timm VisionTransformer (or VisionTransformerDistilled) state dict -> vitkit state dict."""
    out = {}
    for key, value in state.items():
        for pattern, repl in KEY_MAP:
            key = re.sub(pattern, repl, key)
        out[key] = value
    check_supported(list(out))
    return _convert_dinov2(out)
