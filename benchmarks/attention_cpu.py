"""Self-attention kernels on the CPU: PyTorch's fused scaled_dot_product_attention against the explicit
softmax(q kᵀ/√d) v, in fp32 and bf16, forward and forward+backward, at the shapes vitkit trains and
benchmarks. This is the measurement behind vit.Attention's choice of the explicit path for bf16 on CPU.

    .venv/bin/python benchmarks/attention_cpu.py [--threads 2]

Writes benchmarks/results/attention_cpu.json and prints a markdown table (milliseconds, median of 20).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

RESULTS = Path(__file__).parent / "results"
# (batch, heads, tokens, head_dim): Fashion-MNIST training (vit_fashion_patch4_28, batch 128), ViT-S/16 and
# ViT-B/16 at 224 with batch 16
SHAPES = {"fashion p4/D128 b128": (128, 4, 50, 32), "ViT-S/16 b16": (16, 6, 197, 64), "ViT-B/16 b16": (16, 12, 197, 64)}


def explicit(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return (q * q.shape[-1] ** -0.5 @ k.transpose(-2, -1)).softmax(dim=-1) @ v


def median_ms(fn, repeats: int = 20) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for label, shape in SHAPES.items():
        for dtype in (torch.float32, torch.bfloat16):
            q, k, v = (torch.randn(shape, dtype=dtype, requires_grad=True) for _ in range(3))
            row = {"shape": label, "dtype": str(dtype).removeprefix("torch.")}
            for name, attend in (("fused", F.scaled_dot_product_attention), ("explicit", explicit)):
                with torch.inference_mode():
                    row[f"{name}_forward_ms"] = median_ms(lambda: attend(q.detach(), k.detach(), v.detach()))
                row[f"{name}_train_ms"] = median_ms(lambda: attend(q, k, v).sum().backward())
            rows.append(row)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "attention_cpu.json").write_text(json.dumps({"threads": args.threads, "rows": rows}, indent=2) + "\n")
    print("| shape | dtype | fused fwd ms | explicit fwd ms | fused fwd+bwd ms | explicit fwd+bwd ms |\n|---|---|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['shape']} | {r['dtype']} | {r['fused_forward_ms']:.2f} | {r['explicit_forward_ms']:.2f} "
              f"| {r['fused_train_ms']:.2f} | {r['explicit_train_ms']:.2f} |")


if __name__ == "__main__":
    main()
