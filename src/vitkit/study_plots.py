"""The data-scale study's figures (vitkit.study): accuracy against training-set size (the paper's Figs. 3/4) and
against training FLOPs (Fig. 5), from the study's summary rows."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from matplotlib.figure import Figure
from matplotlib.transforms import blended_transform_factory

from .study_analysis import METRICS


def plot_accuracy_vs_size(summary: list[dict[str, Any]], path: Path, transfer: str | None = None) -> Path:
    """Test top-1, 10-shot and (when measured) transfer 10-shot accuracy against training-set size (log x), mean ±
    std over seeds, a panel each (Figs. 3/4)."""
    keys = [k for k in METRICS if k == "top1" or any(r.get(k) is not None for r in summary)]
    colours = {m: f"C{i}" for i, m in enumerate(dict.fromkeys(r["model"] for r in summary))}
    fig = Figure(figsize=(5 * len(keys), 4), layout="constrained")
    for ax, key in zip(fig.subplots(1, len(keys), squeeze=False)[0], keys):
        for model, colour in colours.items():
            rows = sorted((r for r in summary if r["model"] == model and r.get(key) is not None), key=lambda r: r["size"])
            _mark_diverged(ax, [r for r in summary if r["model"] == model and r.get(key) is None], colour)
            if not rows:
                continue
            x = [r["size"] for r in rows]
            y, s = torch.tensor([r[key] for r in rows]), torch.tensor([r[f"{key}_std"] for r in rows])
            ax.plot(x, y, marker="o", color=colour, label=f"{model} ({rows[0]['family']})")
            ax.fill_between(x, y - s, y + s, color=colour, alpha=0.2)
        ax.set_xscale("log")
        sizes = sorted({r["size"] for r in summary})
        ax.set_xticks(sizes, [f"{n:,}" for n in sizes], minor=False)
        ax.set_xticks([], minor=True)
        ax.set_xlabel("training images")
        ax.set_ylabel("accuracy")
        ax.set_title(f"{METRICS[key]} ({transfer})" if key == "transfer_10" and transfer else METRICS[key])
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    fig.savefig(path, dpi=100)
    return path


def _mark_diverged(ax: Any, rows: list[dict[str, Any]], colour: str) -> None:
    """An x at the foot of the panel for each size where every seed of the model diverged (no accuracy)."""
    sizes = [r["size"] for r in rows if r.get("diverged")]
    if sizes:
        foot = blended_transform_factory(ax.transData, ax.transAxes)  # x in data, y in the axes' fraction
        ax.plot(sizes, [0.03] * len(sizes), marker="x", ms=9, mew=2, ls="", color=colour, transform=foot,
                label=f"{rows[0]['model']}: every seed diverged")  # fmt: skip


def plot_accuracy_vs_flops(summary: list[dict[str, Any]], path: Path) -> Path:
    """Test top-1 against training FLOPs (log x): a marker per model, a line per training-set size (Fig. 5)."""
    fig = Figure(figsize=(6, 4), layout="constrained")
    ax = fig.add_subplot()
    colours = {m: f"C{i}" for i, m in enumerate(dict.fromkeys(r["model"] for r in summary))}
    for size in sorted({r["size"] for r in summary}):
        trained = (r for r in summary if r["size"] == size and r["top1"] is not None)  # not all diverged
        rows = sorted(trained, key=lambda r: r["train_flops"])
        if not rows:
            continue
        ax.plot([r["train_flops"] for r in rows], [r["top1"] for r in rows], color="grey", alpha=0.5, lw=1)
        ax.annotate(f"{size:,}", (rows[-1]["train_flops"], rows[-1]["top1"]), fontsize=7, xytext=(4, 0),
                    textcoords="offset points", va="center")  # fmt: skip
        for r in rows:
            ax.errorbar(r["train_flops"], r["top1"], yerr=r["top1_std"], color=colours[r["model"]], marker="o",
                        capsize=2)  # fmt: skip
    for model, colour in colours.items():
        ax.plot([], [], color=colour, marker="o", ls="", label=model)
    ax.set_xscale("log")
    ax.margins(x=0.12)  # room for the cheapest model's markers (the ResNet's) and the size labels on the right
    ax.set_xlabel("training FLOPs (a training step's FLOPs per image × images seen)")
    ax.set_ylabel("test top-1")
    ax.set_title("accuracy against training compute (lines: one training-set size)")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    fig.savefig(path, dpi=100)
    return path
