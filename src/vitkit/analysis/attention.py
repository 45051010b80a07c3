"""Attention weights for analysis, computed on demand through `VisionTransformer.attention_maps`
(an explicit softmax); the model's own forward keeps the fused kernel."""

from __future__ import annotations

from typing import Iterator

import torch
from torch import nn

from ..models.config import ViTConfig
from ..models.vit import VisionTransformer


def require_attention(model: nn.Module, analysis: str) -> None:
    """A one-line ValueError when `model` has no attention (a ResNet), naming the analysis."""
    if not hasattr(model, "attention_maps"):
        cfg = model.config
        name = cfg.name or "the model"
        raise ValueError(f"{analysis} needs attention maps; {name} is a {cfg.family} model without any")


def token_grid(model: VisionTransformer, images: torch.Tensor) -> tuple[int, int]:
    """(gh, gw): the patch grid of images (B, C, H, W), in tokens."""
    stride = model.config.stride
    return images.shape[-2] // stride, images.shape[-1] // stride


def output_tokens(cfg: ViTConfig) -> int:
    """How many leading tokens the head reads: the class token (and DeiT's distillation token, whose
    logits are averaged with it), or 0 for a model without a class token, which reads the patches' mean."""
    return int(cfg.class_token) + int(cfg.distilled)


def excluded_tokens(cfg: ViTConfig) -> str:
    """The prefix tokens that the patch-grid analyses leave out, for figure titles: '' when there are none,
    else e.g. 'class token and 4 registers excluded'."""
    parts = [
        what for count, what in [
            (int(cfg.class_token), "class token"), (int(cfg.distilled), "distillation token"),
            (cfg.reg_tokens, f"{cfg.reg_tokens} register{'s' if cfg.reg_tokens > 1 else ''}"),
        ] if count
    ]  # fmt: skip
    if not parts:
        return ""
    return f"{', '.join(parts[:-1])} and {parts[-1]} excluded" if len(parts) > 1 else f"{parts[0]} excluded"


def batched_attention_maps(
    model: VisionTransformer, images: torch.Tensor, batch_size: int = 32
) -> Iterator[list[torch.Tensor]]:
    """For each chunk of `batch_size` images (B, C, H, W): every layer's weights, each (b, heads, T, T) in
    float32, from the model in eval mode without autograd."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        for chunk in images.split(batch_size):
            with torch.inference_mode():
                maps = model.attention_maps(chunk.to(device))
            yield [m.float() for m in maps]
    finally:
        model.train(was_training)
