"""resample_pos_embed (section 3.2) against the convention each method names: timm, PyTorch, the official code."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.ndimage
import torch
import torch.nn.functional as F
from timm.layers import resample_abs_pos_embed

from vitkit import resample_pos_embed

D = 8


def pos_embed(grid: tuple[int, int], prefix: int = 1) -> torch.Tensor:
    return torch.randn(1, prefix + grid[0] * grid[1], D)


def patch_grid(pos: torch.Tensor, grid: tuple[int, int], prefix: int) -> torch.Tensor:
    """(1, prefix + h*w, D) -> the patch part as (h, w, D)."""
    return pos[0, prefix:].reshape(*grid, D)


@pytest.mark.parametrize("prefix", [0, 1])
@pytest.mark.parametrize("old, new", [((14, 14), (24, 24)), ((14, 14), (7, 7)), ((4, 6), (9, 5)), ((7, 7), (12, 9))])
def test_bicubic_matches_timm_resample_abs_pos_embed(old: tuple[int, int], new: tuple[int, int], prefix: int) -> None:
    pos = pos_embed(old, prefix)
    expected = resample_abs_pos_embed(pos, list(new), list(old), num_prefix_tokens=prefix)
    out = resample_pos_embed(pos, new, prefix, old_grid=old, method="bicubic")
    torch.testing.assert_close(out, expected, rtol=0.0, atol=1e-6)


def test_bicubic_is_the_default_and_old_grid_defaults_to_square() -> None:
    pos = pos_embed((6, 6))
    torch.testing.assert_close(resample_pos_embed(pos, 9), resample_abs_pos_embed(pos, [9, 9]), rtol=0.0, atol=1e-6)


@pytest.mark.parametrize("old, new", [((14, 14), (24, 24)), ((14, 14), (7, 7)), ((7, 7), (12, 9))])
def test_bilinear_matches_interpolate_without_align_corners(old: tuple[int, int], new: tuple[int, int]) -> None:
    pos = pos_embed(old)
    grid = patch_grid(pos, old, 1).permute(2, 0, 1)[None]  # (1, D, h, w)
    expected = F.interpolate(grid, size=new, mode="bilinear", align_corners=False)[0].permute(1, 2, 0)
    out = resample_pos_embed(pos, new, old_grid=old, method="bilinear")
    torch.testing.assert_close(patch_grid(out, new, 1), expected, rtol=0.0, atol=1e-6)


@pytest.mark.parametrize("old, new", [((14, 14), (24, 24)), ((24, 24), (14, 14)), ((7, 7), (12, 9)), ((9, 6), (4, 11))])
def test_official_matches_scipy_zoom_order_1(old: tuple[int, int], new: tuple[int, int]) -> None:
    """google-research/vision_transformer: scipy.ndimage.zoom(grid, (new/old, new/old, 1), order=1)."""
    pos = pos_embed(old)
    grid = patch_grid(pos, old, 1).double().numpy()
    expected = scipy.ndimage.zoom(grid, (new[0] / old[0], new[1] / old[1], 1), order=1)
    assert expected.shape == (*new, D)
    out = resample_pos_embed(pos, new, old_grid=old, method="official")
    np.testing.assert_allclose(patch_grid(out, new, 1).numpy(), expected, rtol=0.0, atol=1e-6)


@pytest.mark.parametrize("method", ["bicubic", "bilinear", "official"])
def test_prefix_tokens_are_kept_unchanged(method: str) -> None:
    pos = pos_embed((5, 5), prefix=2)
    out = resample_pos_embed(pos, (8, 3), num_prefix_tokens=2, method=method)
    assert out.shape == (1, 2 + 8 * 3, D)
    assert torch.equal(out[:, :2], pos[:, :2])


def test_same_grid_returns_the_input() -> None:
    pos = pos_embed((4, 6))
    assert resample_pos_embed(pos, (4, 6), old_grid=(4, 6)) is pos


def test_non_square_without_old_grid_raises() -> None:
    with pytest.raises(ValueError, match="old_grid"):
        resample_pos_embed(pos_embed((4, 6)), 8)


def test_old_grid_that_does_not_hold_the_tokens_raises() -> None:
    with pytest.raises(ValueError, match="old_grid"):
        resample_pos_embed(pos_embed((4, 6)), 8, old_grid=(5, 5))


def test_unknown_method_raises() -> None:
    with pytest.raises(ValueError, match="nearest"):
        resample_pos_embed(pos_embed((4, 4)), 8, method="nearest")  # type: ignore[arg-type]


@pytest.mark.parametrize("shape", [(17, D), (2, 17, D), (1, 1, 17, D)])
def test_bad_shape_raises(shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match="shape"):
        resample_pos_embed(torch.randn(shape), 8)
