"""Activation memory of a training step: the bytes autograd keeps for the backward pass, vitkit vs timm.

Peak RSS (`vitkit bench`) mixes what is saved for the backward pass with transient buffers and the
allocator's reuse; this counts the first exactly. Every tensor saved during the forward pass is seen
through `torch.autograd.graph.saved_tensors_hooks`, and distinct storages are summed (q, k and v are
views of one qkv tensor, for instance). Same weights, batch and autocast precision on both sides.

    .venv/bin/python benchmarks/saved_activations.py [--models vit_small_patch16_224 ...] [--precision bf16]

Writes benchmarks/results/saved_activations.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from torch import nn

from vitkit.bench import bench_model
from vitkit.peers import timm_twin
from vitkit.precision import autocast

RESULTS = Path(__file__).parent / "results"


def saved_megabytes(model: nn.Module, images: torch.Tensor, precision: str) -> float:
    """MB of distinct storages autograd saves during one forward pass of `model` in training mode."""
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return t

    model.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), autocast(images.device, precision):
        model(images)
    return sum(storages.values()) / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["vit_small_patch16_224", "vit_base_patch16_224"])
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="bf16")
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()
    rows = []
    for name in args.models:
        ours = bench_model(name)
        theirs = timm_twin(ours)
        images = torch.randn(args.batch_size, ours.config.in_chans, *ours.config.img_size)
        rows.append({"model": name, "precision": args.precision, "batch_size": args.batch_size,
                     "vitkit_saved_mb": saved_megabytes(ours, images, args.precision),
                     "timm_saved_mb": saved_megabytes(theirs, images, args.precision)})  # fmt: skip
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "saved_activations.json").write_text(json.dumps({"command": "benchmarks/saved_activations.py",
                                                                "rows": rows}, indent=2))  # fmt: skip
    print("| model | precision | batch | vitkit saved MB | timm saved MB |\n|---|---|---:|---:|---:|")
    for r in rows:
        print(f"| {r['model']} | {r['precision']} | {r['batch_size']} | {r['vitkit_saved_mb']:.0f} | "
              f"{r['timm_saved_mb']:.0f} |")  # fmt: skip


if __name__ == "__main__":
    main()
