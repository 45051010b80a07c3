"""Self-attention kernels on the CPU: PyTorch's fused scaled_dot_product_attention against the explicit
softmax(q kᵀ/√d) v (autograd keeps the T×T weights) and vitkit's recomputed form (vitkit.models.attention:
the weights recomputed in the backward pass), in fp32 and bf16, forward and forward+backward, at the
shapes vitkit trains and benchmarks. This is the measurement behind vit.Attention's choice for bf16
training on the CPU.

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

from vitkit.models.attention import attention_weights, recomputed_attention

RESULTS = Path(__file__).parent / "results"
# (batch, heads, tokens, head_dim): Fashion-MNIST training (vit_fashion_patch4_28, batch 128), ViT-S/16 and
# ViT-B/16 at 224 with batch 16
SHAPES = {"fashion p4/D128 b128": (128, 4, 50, 32), "ViT-S/16 b16": (16, 6, 197, 64), "ViT-B/16 b16": (16, 12, 197, 64)}


def explicit(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return attention_weights(q, k, q.shape[-1] ** -0.5) @ v


def recomputed(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return recomputed_attention(q, k, v, q.shape[-1] ** -0.5)


KERNELS = {"fused": F.scaled_dot_product_attention, "explicit": explicit, "recomputed": recomputed}


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
            for name, attend in KERNELS.items():
                with torch.inference_mode():
                    row[f"{name}_forward_ms"] = median_ms(lambda f=attend: f(q.detach(), k.detach(), v.detach()))  # noqa: B023
                row[f"{name}_train_ms"] = median_ms(lambda f=attend: f(q, k, v).sum().backward())  # noqa: B023
            rows.append(row)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "attention_cpu.json").write_text(json.dumps({"threads": args.threads, "rows": rows}, indent=2) + "\n")
    print("| shape | dtype | " + " | ".join(f"{n} fwd ms" for n in KERNELS) + " | "
          + " | ".join(f"{n} fwd+bwd ms" for n in KERNELS) + " |\n|---|---|" + "---:|" * 2 * len(KERNELS))
    for r in rows:
        times = [r[f"{n}_forward_ms"] for n in KERNELS] + [r[f"{n}_train_ms"] for n in KERNELS]
        print(f"| {r['shape']} | {r['dtype']} | " + " | ".join(f"{t:.2f}" for t in times) + " |")


if __name__ == "__main__":
    main()
