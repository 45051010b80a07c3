"""Peak bytes held by live tensors during training steps, vitkit vs timm: the allocator taken out.

Peak RSS (`vitkit bench` on the CPU) counts what the C allocator keeps from the OS, which depends on
the order and sizes of allocations as well as on the tensors. This counts the tensors alone: a
`TorchDispatchMode` sees every operator's outputs, keeps a weak reference to each new storage, and
after each operator sums the storages still alive. Parameters exist before and are not counted;
gradients, optimizer state, activations and transients are. Same weights, batch, autocast precision
and AdamW steps on both sides (two steps, so the second holds the first's optimizer state).

    .venv/bin/python benchmarks/tensor_peak.py [--models vit_base_patch16_224 ...] [--precisions bf16 fp32]

Writes benchmarks/results/tensor_peak.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from vitkit.bench import bench_model
from vitkit.peers import timm_twin
from vitkit.precision import autocast

RESULTS = Path(__file__).parent / "results"


class LiveTensorBytes(TorchDispatchMode):
    """Tracks the bytes of storages created by operators and still alive; `peak` is their maximum."""

    def __init__(self) -> None:
        super().__init__()
        self.live: dict[int, tuple[StorageWeakRef, int]] = {}
        self.peak = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.device.type != "meta":
                storage = t.untyped_storage()
                self.live.setdefault(storage.data_ptr(), (StorageWeakRef(storage), storage.nbytes()))
        self.live = {ptr: entry for ptr, entry in self.live.items() if not entry[0].expired()}
        self.peak = max(self.peak, sum(nbytes for _, nbytes in self.live.values()))
        return out


def training_peak_mb(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor, precision: str, steps: int = 2
) -> float:
    """Peak MB of live tensors over `steps` AdamW training steps of `model` (as `vitkit bench` runs them)
    on `images` (B, C, H, W) and `labels` (B,)."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model.train()
    with LiveTensorBytes() as tracker:
        for _ in range(steps):
            with autocast(images.device, precision):
                loss = F.cross_entropy(model(images), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return tracker.peak / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["vit_small_patch16_224", "vit_base_patch16_224"])
    parser.add_argument("--precisions", nargs="+", choices=["fp32", "bf16"], default=["fp32", "bf16"])
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()
    rows = []
    for name in args.models:
        for precision in args.precisions:
            model = bench_model(name)
            twin = timm_twin(model)
            cfg, g = model.config, torch.Generator().manual_seed(1)
            images = torch.randn(args.batch_size, cfg.in_chans, *cfg.img_size, generator=g)
            labels = torch.randint(0, cfg.num_classes, (args.batch_size,), generator=g)
            rows.append({
                "model": name, "precision": precision, "batch_size": args.batch_size,
                "vitkit_mb": training_peak_mb(model, images, labels, precision),
                "timm_mb": training_peak_mb(twin, images, labels, precision),
            })  # fmt: skip
            print(rows[-1], flush=True)
    RESULTS.mkdir(exist_ok=True)
    command = "python benchmarks/tensor_peak.py " + " ".join(sys.argv[1:])
    (RESULTS / "tensor_peak.json").write_text(json.dumps({"command": command.strip(), "rows": rows}, indent=1))
    print("| model | precision | vitkit MB | timm MB | ratio |\n|---|---|---:|---:|---:|")
    for r in rows:
        ratio = r["vitkit_mb"] / r["timm_mb"]
        print(f"| {r['model']} | {r['precision']} | {r['vitkit_mb']:.0f} | {r['timm_mb']:.0f} | {ratio:.3f} |")


if __name__ == "__main__":
    main()
