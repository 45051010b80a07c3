"""The levers of issue 38 one at a time, A against B in one process, alternating round by round: attention
paths by sequence length, Muon's Newton-Schulz looped or batched by shape, and channels-last convolutions.

    .venv/bin/python benchmarks/cpu_levers.py [attention|newton-schulz|channels-last] [--threads 1] [--rounds 9]

Run it natively and under vitkit.hardware.AVX2_ENV (`env ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2
MKL_ENABLE_INSTRUCTIONS=AVX2 ...`). On one thread it times the process's CPU time, which a shared machine's
neighbours disturb far less than the wall clock; on more, the wall clock. Prints the best time of each
variant and the ratio of the first variant's to each (> 1: faster than the first).
"""

from __future__ import annotations

import argparse
import time
from typing import Callable

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

import vitkit
from vitkit.models.attention import attention_weights, recomputed_attention
from vitkit.precision import autocast, resolve_precision
from vitkit.train.optim import newton_schulz

MUON_NS = ((3.4445, -4.7750, 2.0315), 5, 1e-7)  # torch.optim.Muon's coefficients, steps and eps


def compare(variants: dict[str, Callable[[], object]], rounds: int, clock: Callable[[], float]) -> str:
    times: dict[str, list[float]] = {name: [] for name in variants}
    for r in range(rounds):
        for name in list(variants) if r % 2 == 0 else list(variants)[::-1]:
            variants[name]()
            start = clock()
            variants[name]()
            variants[name]()
            times[name].append((clock() - start) / 2 * 1000)
    first = min(next(iter(times.values())))
    return "  ".join(f"{name} {min(t):.2f} ms (x{first / min(t):.2f})" for name, t in times.items())


def attention(rounds: int, clock: Callable[[], float]) -> None:
    """Forward and backward of softmax(q kᵀ/√d) v at batch 128, 4 heads of 32, q/k/v sliced from one qkv."""
    B, H, d = 128, 4, 32
    for dtype in (torch.float32, torch.bfloat16):
        for T in (17, 50, 65, 128):
            qkv = torch.randn(B, T, 3 * H * d, dtype=dtype, requires_grad=True)

            def run(path: str) -> None:
                q, k, v = qkv.reshape(B, T, 3, H, d).permute(2, 0, 3, 1, 4).unbind(0)
                if path in ("flash", "math"):
                    backend = SDPBackend.FLASH_ATTENTION if path == "flash" else SDPBackend.MATH
                    with sdpa_kernel(backend):
                        out = F.scaled_dot_product_attention(q, k, v)
                elif path == "saved":  # plain autograd: the weights kept for the backward pass
                    out = attention_weights(q, k, d**-0.5) @ v
                else:
                    out = recomputed_attention(q, k, v, d**-0.5)
                out.sum().backward()

            paths = ("flash", "math", "saved", "recomputed")
            print(f"attention {dtype} T={T}: " + compare({p: lambda p=p: run(p) for p in paths}, rounds, clock))


def newton_schulz_batching(rounds: int, clock: Callable[[], float]) -> None:
    """The Newton-Schulz iterations of vit_fashion_patch7_28's 24 hidden matrices, in fp32."""
    model = vitkit.create_model("vit_fashion_patch7_28")
    matrices = [p.detach() for n, p in model.named_parameters() if p.ndim == 2 and n.startswith("blocks.")]
    by_shape: dict[tuple[int, ...], list[torch.Tensor]] = {}
    for m in matrices:
        by_shape.setdefault(tuple(m.shape), []).append(m)
    variants = {
        "looped": lambda: [newton_schulz(m, *MUON_NS, torch.float32) for m in matrices],
        "batched": lambda: [newton_schulz(torch.stack(ms), *MUON_NS, torch.float32) for ms in by_shape.values()],
    }
    print(f"newton-schulz, {len(matrices)} matrices in {len(by_shape)} shapes: " + compare(variants, rounds, clock))


def channels_last(rounds: int, clock: Callable[[], float]) -> None:
    """Forward and backward of the ResNet and the hybrid at batch 128, in the precision auto picks."""
    precision = resolve_precision("auto", "cpu").precision
    for name in ("resnetv2_fashion_28", "vit_fashion_hybrid_28"):
        model = vitkit.create_model(name, num_classes=10).train()
        x, y = torch.randn(128, 1, 28, 28), torch.randint(0, 10, (128,))

        def step(layout: torch.memory_format) -> None:
            model.to(memory_format=layout)
            with autocast(torch.device("cpu"), precision):
                loss = F.cross_entropy(model(x.contiguous(memory_format=layout)), y)
            loss.backward()

        variants = {"NCHW": lambda: step(torch.contiguous_format), "NHWC": lambda: step(torch.channels_last)}
        print(f"channels-last {name} {precision}: " + compare(variants, rounds, clock))


LEVERS = {"attention": attention, "newton-schulz": newton_schulz_batching, "channels-last": channels_last}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("levers", nargs="*", help=f"some of {', '.join(LEVERS)} (default: all)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args()
    unknown = [lever for lever in args.levers if lever not in LEVERS]
    if unknown:
        parser.error(f"unknown lever {unknown[0]!r}; expected some of {', '.join(LEVERS)}")
    torch.set_num_threads(args.threads)
    clock = time.process_time if args.threads == 1 else time.perf_counter
    print(f"{torch.backends.cpu.get_cpu_capability()}, {args.threads} thread(s), "
          f"{'CPU time' if args.threads == 1 else 'wall clock'}")  # fmt: skip
    for lever in args.levers or list(LEVERS):
        LEVERS[lever](args.rounds, clock)


if __name__ == "__main__":
    main()
