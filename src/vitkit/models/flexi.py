"""FlexiViT's patch-size resampling (Beyer et al. 2023, section 3.3): the patch-embedding kernel for
another patch size, by the pseudo-inverse of the resize.

A patch x of P×P pixels resized to P'×P' is R x, R the (P'², P²) matrix of the (bicubic, antialiased)
resize. The kernel ŵ that gives every resized patch the token the original gave the original patch,
<x, w> = <R x, ŵ>, solves min ||Rᵀ ŵ - w||: ŵ = pinv(Rᵀ) w. It is exact when P' ≥ P (R has full
column rank), a least-squares fit when P' < P. timm's `resample_patch_embed` computes the same.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def resize_matrix(old: tuple[int, int], new: tuple[int, int]) -> torch.Tensor:
    """R: (new_h*new_w, old_h*old_w), column j the bicubic, antialiased resize of the j-th basis patch."""
    basis = torch.eye(old[0] * old[1]).reshape(-1, 1, *old)  # (old_total, 1, old_h, old_w)
    resized = F.interpolate(basis, size=new, mode="bicubic", antialias=True, align_corners=False)
    return resized.reshape(basis.shape[0], -1).T


def resample_patch_embed(weight: torch.Tensor, new_size: int | tuple[int, int]) -> torch.Tensor:
    """The patch-embedding kernel for another patch size: (D, C, P, P) -> (D, C, P', P'), in float32."""
    new = (new_size, new_size) if isinstance(new_size, int) else tuple(new_size)
    old = tuple(weight.shape[-2:])
    if old == new:
        return weight
    pinv = torch.linalg.pinv(resize_matrix(old, new))  # (old_total, new_total) = pinv(Rᵀ)ᵀ
    D, C = weight.shape[:2]
    return (weight.float().reshape(D, C, -1) @ pinv).reshape(D, C, *new).to(weight.dtype)
