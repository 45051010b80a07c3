"""Attention rollout (appendix D.8; Abnar & Zuidema, 2020): what the output token attends to in the image.

Each layer's attention is averaged over heads; the identity is added for the residual path and rows are
renormalised; the layers' matrices are multiplied, the last on the left. The output's row is the class
token's (a distilled model's: the mean of the class and distillation tokens' rows, as its head averages
them); a model without a class token reads the mean of the patch tokens, so its row is the mean of the
patch rows. Registers and the distillation token are kept in the product (attention flows through them)
but are no part of the patch grid shown: the row's columns are the patches only.
"""

from __future__ import annotations

from typing import Sequence

import torch

from ..models.vit import VisionTransformer
from .attention import batched_attention_maps, output_tokens, require_attention, token_grid


def output_row(
    matrix: torch.Tensor, grid: tuple[int, int], num_prefix_tokens: int, num_outputs: int = 1
) -> torch.Tensor:
    """matrix: (..., T, T) -> (..., gh, gw): the output query's weights on the patch tokens, the output
    being the mean of the first `num_outputs` tokens, or with 0 of the patch tokens."""
    p = num_prefix_tokens
    rows = matrix[..., :num_outputs, p:] if num_outputs else matrix[..., p:, p:]
    row = rows.mean(dim=-2)
    return row.reshape(*row.shape[:-1], *grid)


def rollout(maps: Sequence[torch.Tensor]) -> torch.Tensor:
    """maps: layers of (B, heads, T, T) -> (B, T, T), the product of the layers' Â = norm(mean_h(A) + I)."""
    T = maps[0].shape[-1]
    eye = torch.eye(T, dtype=torch.float64, device=maps[0].device)
    result = eye.expand(maps[0].shape[0], T, T)
    for attn in maps:
        a = attn.double().mean(dim=1) + eye
        result = (a / a.sum(dim=-1, keepdim=True)) @ result
    return result


def attention_rollout(model: VisionTransformer, images: torch.Tensor, batch_size: int = 32) -> torch.Tensor:
    """images: (B, C, H, W) -> (B, gh, gw) rollout maps; each sums to at most one over the patches."""
    require_attention(model, "attention rollout")
    grid, p, k = token_grid(model, images), model.config.num_prefix_tokens, output_tokens(model.config)
    out = [output_row(rollout(maps), grid, p, k) for maps in batched_attention_maps(model, images, batch_size)]
    return torch.cat(out).float().cpu()


def last_layer_attention(model: VisionTransformer, images: torch.Tensor, batch_size: int = 32) -> torch.Tensor:
    """images: (B, C, H, W) -> (B, heads, gh, gw): the last layer's raw attention of the output query."""
    require_attention(model, "the last layer's attention")
    grid, p, k = token_grid(model, images), model.config.num_prefix_tokens, output_tokens(model.config)
    out = [output_row(maps[-1], grid, p, k) for maps in batched_attention_maps(model, images, batch_size)]
    return torch.cat(out).cpu()
