"""The analyses' figures, drawn with matplotlib's object API (no pyplot state, no display needed).

Each function writes one PNG of a fixed size in inches (given in its docstring) at `dpi`, and returns its path.
The figures of the patch grid take a `note` for their title: which prefix tokens (class, distillation,
registers) they leave out. The attention maps over images take a `caption` per image (its class, and the
model's) and carry a colour bar of the heat scale; `rollout_figure` and `head_attention_figure` return the
figure unsaved.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

from .filters import EmbeddingFilters
from .pos_embed import PosEmbedSimilarity

DPI = 100
HEAT_CMAP = "jet"  # attention heat maps
HEAT_LABEL = "attention, each map scaled to [0, 1]"
FILTER_COLUMNS = 7  # the paper shows its 28 components in 4 rows of 7


def _save(fig: Figure, path: str | Path, dpi: int) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    return path


def _as_picture(x: torch.Tensor) -> np.ndarray:
    """(C, H, W) in [0, 1] -> (H, W, 3) RGB for 3 channels, else (H, W), the channels' mean."""
    x = x.detach().float().cpu()
    return x.permute(1, 2, 0).numpy() if x.shape[0] == 3 else x.mean(dim=0).numpy()


def denormalise(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Model inputs (B, C, H, W) back to [0, 1] with the config's per-channel mean and std."""
    C = images.shape[1]
    m = torch.tensor(mean if len(mean) == C else [sum(mean) / len(mean)] * C).view(1, C, 1, 1)
    s = torch.tensor(std if len(std) == C else [sum(std) / len(std)] * C).view(1, C, 1, 1)
    return (images.detach().float().cpu() * s + m).clamp(0, 1)


def _titled(title: str, note: str) -> str:
    return f"{title}\n({note})" if note else title


def _show(ax: Axes, picture: np.ndarray, **kwargs: Any) -> None:
    ax.imshow(picture, cmap=None if picture.ndim == 3 else "gray", **kwargs)
    ax.set_axis_off()


def plot_filters(filters: EmbeddingFilters, path: str | Path, dpi: int = DPI) -> Path:
    """The principal components as images, each scaled to its own range: min(n, 7) × ⌈n / 7⌉ inches."""
    n = len(filters.components)
    cols = min(n, FILTER_COLUMNS)
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(cols, rows), layout="constrained")
    for i, component in enumerate(filters.components):
        lo, hi = component.min(), component.max()
        ax = fig.add_subplot(rows, cols, i + 1)
        _show(ax, _as_picture((component - lo) / (hi - lo).clamp(min=1e-12)), interpolation="nearest")
        ax.set_title(f"{i + 1}: {filters.explained[i]:.1%}", fontsize=6)
    fig.suptitle(f"principal components of {filters.source}", fontsize=8)
    return _save(fig, path, dpi)


def similarity_mosaic(similarity: torch.Tensor, grid: tuple[int, int]) -> np.ndarray:
    """(N, N) -> the paper's grid of grids: the (gh, gw) map of patch i's similarities in cell i of a
    (gh, gw) layout, cells separated by one NaN pixel. -> (gh·(gh + 1) − 1, gw·(gw + 1) − 1)."""
    gh, gw = grid
    cells = F.pad(similarity.double().reshape(gh, gw, gh, gw), (0, 1, 0, 1), value=float("nan"))
    return cells.permute(0, 2, 1, 3).reshape(gh * (gh + 1), gw * (gw + 1))[:-1, :-1].numpy()


def plot_pos_embed_similarity(result: PosEmbedSimilarity, path: str | Path, dpi: int = DPI, note: str = "") -> Path:
    """Each patch's cosine similarity with every other, arranged by position: 7 × 6 inches."""
    fig = Figure(figsize=(7, 6), layout="constrained")
    ax = fig.add_subplot()
    cmap = colormaps["viridis"].with_extremes(bad="white")
    im = ax.imshow(similarity_mosaic(result.similarity, result.grid), cmap=cmap, vmin=-1, vmax=1,
                   interpolation="nearest")  # fmt: skip
    gh, gw = result.grid
    ax.set_xticks([(gw + 1) * j + (gw - 1) / 2 for j in range(gw)], [str(j + 1) for j in range(gw)], fontsize=6)
    ax.set_yticks([(gh + 1) * i + (gh - 1) / 2 for i in range(gh)], [str(i + 1) for i in range(gh)], fontsize=6)
    ax.tick_params(length=0)
    ax.set_xlabel("input patch column")
    ax.set_ylabel("input patch row")
    title = f"position-embedding similarity: neighbours {result.neighbour:.2f}, far {result.far:.2f}"
    ax.set_title(_titled(title, note), fontsize=9)
    fig.colorbar(im, ax=ax, label="cosine similarity", shrink=0.8)
    return _save(fig, path, dpi)


def plot_attention_distance(distance: torch.Tensor, path: str | Path, dpi: int = DPI, note: str = "") -> Path:
    """distance (layers, heads) in pixels: layer on x, one dot per head, the layer mean as a line; 6 × 4 inches."""
    L, H = distance.shape
    fig = Figure(figsize=(6, 4), layout="constrained")
    ax = fig.add_subplot()
    layers = np.arange(1, L + 1)
    for h in range(H):
        ax.scatter(layers, distance[:, h].numpy(), s=14, label=f"head {h + 1}" if H <= 16 else None)
    ax.plot(layers, distance.mean(dim=1).numpy(), color="black", linewidth=1, label="mean")
    ax.set_xlabel("network depth (layer)")
    ax.set_ylabel("mean attention distance (pixels)")
    ax.set_xticks(layers)
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=6, ncols=2 if H > 8 else 1, loc="lower right")
    ax.set_title(_titled("mean attention distance between patches", note), fontsize=9)
    return _save(fig, path, dpi)


def heat_map(heat: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """heat (gh, gw) -> (H, W): upsampled bilinearly to `size`, scaled to [0, 1] for a colour map."""
    heat = F.interpolate(heat[None, None].float(), size=size, mode="bilinear", align_corners=False)[0, 0]
    return (heat - heat.min()) / (heat.max() - heat.min()).clamp(min=1e-12)


def _overlay(ax: Axes, picture: np.ndarray, heat: torch.Tensor, size: tuple[int, int]) -> None:
    """Draw picture with heat (gh, gw), as heat_map makes it, on top."""
    _show(ax, picture)
    ax.imshow(heat_map(heat, size).numpy(), cmap=HEAT_CMAP, alpha=0.5)


def _heat_colorbar(fig: Figure, axes: list[Axes]) -> None:
    """The colour bar of heat_map's [0, 1] scale, beside `axes`."""
    scale = ScalarMappable(Normalize(0, 1), colormaps[HEAT_CMAP])
    bar = fig.colorbar(scale, ax=axes, shrink=0.9, alpha=0.5)
    bar.set_label(HEAT_LABEL, fontsize=7)
    bar.ax.tick_params(labelsize=6)


def rollout_figure(
    images: torch.Tensor, maps: torch.Tensor, captions: Sequence[str] | None = None, note: str = ""
) -> Figure:
    """images (B, C, H, W) in [0, 1], each titled by its caption, above their rollout maps (B, gh, gw)
    overlaid, with the heat scale's colour bar: 2B × 4 inches."""
    B = len(images)
    fig = Figure(figsize=(2 * B, 4), layout="constrained")
    for i in range(B):
        picture = _as_picture(images[i])
        ax = fig.add_subplot(2, B, i + 1)
        _show(ax, picture)
        if captions:
            ax.set_title(captions[i], fontsize=7)
        _overlay(fig.add_subplot(2, B, B + i + 1), picture, maps[i], tuple(images.shape[-2:]))
    _heat_colorbar(fig, fig.axes)  # beside both rows: one row is too short for the label
    fig.suptitle(_titled("attention rollout", note), fontsize=9)
    return fig


def plot_rollout(
    images: torch.Tensor, maps: torch.Tensor, path: str | Path, dpi: int = DPI, note: str = "",
    captions: Sequence[str] | None = None,
) -> Path:  # fmt: skip
    """rollout_figure, saved to `path`."""
    return _save(rollout_figure(images, maps, captions, note), path, dpi)


def head_attention_figure(
    images: torch.Tensor, attn: torch.Tensor, captions: Sequence[str] | None = None, note: str = ""
) -> Figure:
    """One row per image (B, C, H, W) in [0, 1]: the image with its caption, then the last layer's
    output-query attention of each head, attn (B, heads, gh, gw), overlaid; the heat scale's colour bar:
    1.5·(heads + 1) × 1.5·B inches."""
    B, H = attn.shape[:2]
    fig = Figure(figsize=(1.5 * (H + 1), 1.5 * B), layout="constrained")
    overlays = []
    for i in range(B):
        picture = _as_picture(images[i])
        ax = fig.add_subplot(B, H + 1, i * (H + 1) + 1)
        _show(ax, picture)
        if captions:
            ax.set_title(captions[i], fontsize=6)
        for h in range(H):
            overlays.append(fig.add_subplot(B, H + 1, i * (H + 1) + h + 2))
            _overlay(overlays[-1], picture, attn[i, h], tuple(images.shape[-2:]))
            if i == 0:
                overlays[-1].set_title(f"head {h + 1}", fontsize=7)
    _heat_colorbar(fig, overlays)
    fig.suptitle(_titled("last layer's attention of the output token", note), fontsize=9)
    return fig


def plot_head_attention(
    images: torch.Tensor, attn: torch.Tensor, path: str | Path, dpi: int = DPI, note: str = "",
    captions: Sequence[str] | None = None,
) -> Path:  # fmt: skip
    """head_attention_figure, saved to `path`."""
    return _save(head_attention_figure(images, attn, captions, note), path, dpi)
