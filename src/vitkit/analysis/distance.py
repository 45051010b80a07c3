"""Mean attention distance (Fig. 7 right, Fig. 11): how far, in input pixels, each head looks.

For a patch query q, Σ_k a(q, k) · ‖centre(q) − centre(k)‖ over the patch keys k, then averaged over
queries and images. Patch-to-patch attention only, as the analyses of timm users and Raghu et al. (2021)
do: the class token, like DeiT's distillation token and the registers, has no position in the image, so
the prefix tokens' query rows and key columns are dropped and each query's remaining weights
renormalised to sum to one, which keeps the result a distance.
"""

from __future__ import annotations

import torch

from ..models.vit import VisionTransformer
from .attention import batched_attention_maps, require_attention, token_grid


def patch_distances(grid: tuple[int, int], stride: int) -> torch.Tensor:
    """(N, N) Euclidean distances, in pixels, between the centres of a row-major (gh, gw) grid of
    stride×stride-pixel patches (a hybrid's stride counts the backbone's downsampling)."""
    gh, gw = grid
    rows = torch.arange(gh, dtype=torch.float64).repeat_interleave(gw)
    cols = torch.arange(gw, dtype=torch.float64).repeat(gh)
    centres = torch.stack([rows, cols], dim=1) * stride
    return torch.cdist(centres, centres)


def attention_distance(attn: torch.Tensor, grid: tuple[int, int], stride: int, num_prefix_tokens: int) -> torch.Tensor:
    """attn: (B, heads, T, T) weights of one layer -> (B, heads) mean distance over the patch queries."""
    p = num_prefix_tokens
    a = attn[..., p:, p:].double()
    a = a / a.sum(dim=-1, keepdim=True)
    return (a * patch_distances(grid, stride).to(a.device)).sum(dim=-1).mean(dim=-1)


def mean_attention_distance(model: VisionTransformer, images: torch.Tensor, batch_size: int = 32) -> torch.Tensor:
    """images: (B, C, H, W), as the model takes them -> (layers, heads), in pixels, averaged over images."""
    require_attention(model, "the mean attention distance")
    cfg = model.config
    grid = token_grid(model, images)
    total = torch.zeros(cfg.depth, cfg.num_heads, dtype=torch.float64)
    for maps in batched_attention_maps(model, images, batch_size):
        for layer, attn in enumerate(maps):
            total[layer] += attention_distance(attn, grid, cfg.stride, cfg.num_prefix_tokens).sum(dim=0).cpu()
    return (total / len(images)).float()
