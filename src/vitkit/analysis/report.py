"""All of the paper's analyses of one model at once: figures (PNG) and the numbers behind them (JSON)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

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
    labels: torch.Tensor | None = None,
    classes: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Write filters.png, pos_embed_similarity.png, attention_distance.png, attention_rollout.png,
    head_attention.png and analysis.json to out_dir; return what analysis.json holds. A model without
    attention (a ResNet) gets what applies to it: the filters.

    images: (B, C, H, W), preprocessed as the model takes them; the mean attention distance averages
    over all B, the rollout figures show the first `rollout_images`, each captioned with its class from
    labels (B,) when given and the model's, named by `classes` (else by index).
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
        shown = _shown(model, images[:rollout_images], labels, classes)
        report.update(_attention_analyses(model, images, out, shown, batch_size))
        report["figures"] = {**figures, **report["figures"]}
    (out / "analysis.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def _shown(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor | None, classes: Sequence[str] | None
) -> dict[str, Any]:
    """The images (B, C, H, W) the rollout figures show, with each one's class and the model's prediction."""
    was_training = model.training
    model.eval()
    with torch.inference_mode():
        predicted = model(images).argmax(dim=-1).tolist()
    model.train(was_training)
    name = (lambda k: classes[k]) if classes else str
    rows = [{"predicted": name(p)} for p in predicted]
    if labels is not None:
        rows = [{"class": name(int(y)), **row} for y, row in zip(labels, rows)]
    return {"images": images, "rows": rows}


def _caption(row: dict[str, str]) -> str:
    return f"{row['class']}\n(model: {row['predicted']})" if "class" in row else f"model: {row['predicted']}"


def _attention_analyses(model: VisionTransformer, images: torch.Tensor, out: Path, shown: dict[str, Any],
                        batch_size: int) -> dict[str, Any]:  # fmt: skip
    """Position-embedding similarity, attention distance and rollout: their numbers and figures."""
    cfg = model.config
    similarity = pos_embed_similarity(model)
    distance = mean_attention_distance(model, images, batch_size)
    pictures = denormalise(shown["images"], cfg.mean, cfg.std)
    captions = [_caption(row) for row in shown["rows"]]
    layer_mean = distance.mean(dim=1)
    note = excluded_tokens(cfg)
    rollout = attention_rollout(model, shown["images"], batch_size)
    heads = last_layer_attention(model, shown["images"], batch_size)
    return {
        "grid": list(similarity.grid), "excluded_tokens": note,
        "pos_embed_similarity": similarity.to_dict(),
        "attention_distance": {
            "units": "pixels", "per_head": distance.tolist(), "per_layer_mean": layer_mean.tolist(),
            "last_minus_first_layer": (layer_mean[-1] - layer_mean[0]).item(),
        },
        "rollout_images": shown["rows"],
        "figures": {
            "pos_embed_similarity": str(plot_pos_embed_similarity(similarity, out / "pos_embed_similarity.png",
                                                                  note=note)),
            "attention_distance": str(plot_attention_distance(distance, out / "attention_distance.png", note=note)),
            "attention_rollout": str(plot_rollout(pictures, rollout, out / "attention_rollout.png", note=note,
                                                  captions=captions)),
            "head_attention": str(plot_head_attention(pictures, heads, out / "head_attention.png", note=note,
                                                      captions=captions)),
        },
    }  # fmt: skip
