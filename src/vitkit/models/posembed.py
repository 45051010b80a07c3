"""Position embeddings: 2-D resampling of a learned grid for a change of resolution (section 3.2)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .config import RESAMPLE_METHODS, ResampleMethod

# method -> F.interpolate arguments.
#   bicubic:  timm's resample_abs_pos_embed (antialias changes PyTorch's bicubic kernel even when
#             upsampling, so it is part of the convention);
#   bilinear: timm's .npz loader;
#   official: google-research/vision_transformer, scipy.ndimage.zoom(order=1), which samples the
#             corners of the old grid onto the corners of the new one, i.e. align_corners=True.
_INTERPOLATE_ARGS = {
    "bicubic": dict(mode="bicubic", align_corners=False, antialias=True),
    "bilinear": dict(mode="bilinear", align_corners=False, antialias=False),
    "official": dict(mode="bilinear", align_corners=True, antialias=False),
}


def resample_pos_embed(
    pos: torch.Tensor,
    new_grid: int | tuple[int, int],
    num_prefix_tokens: int = 1,
    old_grid: tuple[int, int] | None = None,
    method: ResampleMethod = "bicubic",
) -> torch.Tensor:
    """Interpolate the patch part of a position embedding to another grid; prefix tokens are kept.

    pos: (1, prefix + h*w, D) -> (1, prefix + h'*w', D). `old_grid` defaults to a square grid.
    """
    if method not in _INTERPOLATE_ARGS:
        raise ValueError(f"unknown resample method {method!r}; expected one of {RESAMPLE_METHODS}")
    if pos.dim() != 3 or pos.shape[0] != 1:
        raise ValueError(f"position embedding must have shape (1, T, D), got {tuple(pos.shape)}")
    new_grid = (new_grid, new_grid) if isinstance(new_grid, int) else tuple(new_grid)
    num_patches = pos.shape[1] - num_prefix_tokens
    if old_grid is None:
        side = math.isqrt(num_patches)
        if side * side != num_patches:
            raise ValueError(
                f"position embedding has {num_patches} patch tokens, not a square grid: pass old_grid"
            )
        old_grid = (side, side)
    old_grid = tuple(old_grid)
    if old_grid[0] * old_grid[1] != num_patches:
        raise ValueError(f"old_grid {old_grid} does not hold the {num_patches} patch tokens of pos")
    if old_grid == new_grid:
        return pos

    prefix, grid = pos[:, :num_prefix_tokens], pos[:, num_prefix_tokens:]
    dim = grid.shape[-1]
    # scipy.ndimage.zoom computes in float64; PyTorch's float32 align_corners source coordinates
    # drift by ~1e-6 of a cell, which moves the result by a few 1e-6
    compute_dtype = torch.float64 if method == "official" else torch.float32
    grid = grid.to(compute_dtype).reshape(1, *old_grid, dim).permute(0, 3, 1, 2)  # (1, D, h, w)
    grid = F.interpolate(grid, size=new_grid, **_INTERPOLATE_ARGS[method])
    grid = grid.permute(0, 2, 3, 1).reshape(1, -1, dim).to(pos.dtype)  # (1, h'*w', D)
    return torch.cat([prefix, grid], dim=1)


def sincos_pos_embed(grid: tuple[int, int], dim: int, temperature: float = 10000.0) -> torch.Tensor:
    """Fixed 2-D sin-cos position embeddings of a row-major (gh, gw) grid, MAE's layout:
    [sin(c ω), cos(c ω), sin(r ω), cos(r ω)] for column c and row r, ω_k = temperature^(-k / (dim/4)).
    -> (1, gh*gw, dim), computed in float64 as MAE's numpy code does."""
    omega = temperature ** -(torch.arange(dim // 4, dtype=torch.float64) / (dim // 4))
    rows, cols = torch.meshgrid(
        torch.arange(grid[0], dtype=torch.float64), torch.arange(grid[1], dtype=torch.float64), indexing="ij"
    )
    by_col, by_row = cols.flatten().outer(omega), rows.flatten().outer(omega)  # (N, dim/4) each
    table = torch.cat([by_col.sin(), by_col.cos(), by_row.sin(), by_row.cos()], dim=1)
    return table.float().unsqueeze(0)
