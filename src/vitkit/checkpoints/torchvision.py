"""torchvision `vit_b_16`-family state dicts (torchvision.models.vision_transformer).

torchvision's nn.MultiheadAttention already fuses q, k and v into in_proj (3D, D), in timm's order,
and its LayerNorm eps is 1e-6 like the official code's: renaming the keys is the whole conversion.
"""

from __future__ import annotations

import re
from typing import Mapping

import torch

from ..models import ViTConfig

_LAYER = r"encoder\.layers\.encoder_layer_(\d+)\."
# (pattern, replacement): the first pattern that matches a key renames it.
KEY_MAP: list[tuple[str, str]] = [
    (r"^class_token$", "cls_token"),
    (r"^conv_proj\.(weight|bias)$", r"patch_embed.proj.\1"),
    (r"^encoder\.pos_embedding$", "pos_embed"),
    (rf"^{_LAYER}ln_1\.", r"blocks.\1.norm1."),
    (rf"^{_LAYER}self_attention\.in_proj_(weight|bias)$", r"blocks.\1.attn.qkv.\2"),
    (rf"^{_LAYER}self_attention\.out_proj\.", r"blocks.\1.attn.proj."),
    (rf"^{_LAYER}ln_2\.", r"blocks.\1.norm2."),
    # mlp.linear_1/linear_2: the legacy MLPBlock names that torchvision still reads (pytorch/vision#6053)
    (rf"^{_LAYER}mlp\.(?:0|linear_1)\.", r"blocks.\1.mlp.fc1."),
    (rf"^{_LAYER}mlp\.(?:3|linear_2)\.", r"blocks.\1.mlp.fc2."),
    (r"^encoder\.ln\.", "norm."),
    # heads.pre_logits + tanh: the paper's representation layer, present with representation_size
    (r"^heads\.pre_logits\.", "pre_logits.fc."),
    (r"^heads\.head\.", "head."),
]
_COMPILED = [(re.compile(pattern), repl) for pattern, repl in KEY_MAP]


def _rename(key: str) -> str:
    """A torchvision name -> the vitkit name; unknown names are kept for the loader to report."""
    for pattern, repl in _COMPILED:
        new, n = pattern.subn(repl, key, count=1)
        if n:
            return new
    return key


def convert(state: Mapping[str, torch.Tensor], cfg: ViTConfig) -> dict[str, torch.Tensor]:
    """torchvision VisionTransformer state dict -> vitkit state dict; every tensor keeps its shape
    (class_token (1, 1, D), pos_embedding (1, 1 + N, D), in_proj_weight (3D, D)). `cfg` is unused."""
    return {_rename(key): value for key, value in state.items()}
