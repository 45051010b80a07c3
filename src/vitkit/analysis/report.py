"""All of the paper's analyses of one model at once: figures (PNG) and the numbers behind them (JSON)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..models.vit import VisionTransformer
from .attention import excluded_tokens
from .distance import mean_attention_distance
from .filters import embedding_filters
from .plots import (
    denormalise, plot_attention_distance, plot_filters, plot_head_attention, plot_pos_embed_similarity, plot_rollout,
)  # fmt: skip
from .pos_embed import pos_embed_similarity
from .rollout import attention_rollout, last_layer_attention


def analyze(
    model: nn.Module,
    images: torch.Tensor,
    out_dir: str | Path,
    rollout_images: int = 8,
    num_filters: int = 28,
    batch_size: int = 32,
) -> dict[str, Any]:
    """Write filters.png, pos_embed_similarity.png, attention_distance.png, attention_rollout.png,
    head_attention.png and analysis.json to out_dir; return what analysis.json holds. A model without
    attention (a ResNet) gets what applies to it: the filters.

    images: (B, C, H, W), preprocessed as the model takes them; the mean attention distance averages
    over all B, the rollout figures show the first `rollout_images`.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg = model.config
    filters = embedding_filters(model, num_filters)
    report: dict[str, Any] = {
        "model": cfg.name, "family": cfg.family, "image_size": list(images.shape[-2:]), "stride": cfg.stride,
        "n_images": len(images),
        "filters": {"source": filters.source, "explained_variance": filters.explained.tolist()},
        "figures": {"filters": str(plot_filters(filters, out / "filters.png"))},
    }  # fmt: skip
    if hasattr(model, "attention_maps"):
        figures = report.pop("figures")
        report.update(_attention_analyses(model, images, out, rollout_images, batch_size))
        report["figures"] = {**figures, **report["figures"]}
    (out / "analysis.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def _attention_analyses(
    model: VisionTransformer, images: torch.Tensor, out: Path, rollout_images: int, batch_size: int
) -> dict[str, Any]:
    """Position-embedding similarity, attention distance and rollout: their numbers and figures."""
    cfg = model.config
    similarity = pos_embed_similarity(model)
    distance = mean_attention_distance(model, images, batch_size)
    shown = images[:rollout_images]
    pictures = denormalise(shown, cfg.mean, cfg.std)
    layer_mean = distance.mean(dim=1)
    note = excluded_tokens(cfg)
    return {
        "grid": list(similarity.grid), "excluded_tokens": note,
        "pos_embed_similarity": similarity.to_dict(),
        "attention_distance": {
            "units": "pixels", "per_head": distance.tolist(), "per_layer_mean": layer_mean.tolist(),
            "last_minus_first_layer": (layer_mean[-1] - layer_mean[0]).item(),
        },
        "figures": {
            "pos_embed_similarity": str(plot_pos_embed_similarity(similarity, out / "pos_embed_similarity.png",
                                                                  note=note)),
            "attention_distance": str(plot_attention_distance(distance, out / "attention_distance.png", note=note)),
            "attention_rollout": str(plot_rollout(pictures, attention_rollout(model, shown, batch_size),
                                                  out / "attention_rollout.png", note=note)),
            "head_attention": str(plot_head_attention(pictures, last_layer_attention(model, shown, batch_size),
                                                      out / "head_attention.png", note=note)),
        },
    }  # fmt: skip
