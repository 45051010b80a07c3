"""The standard table of issue 5: ViT-S/16 and ViT-B/16, batch 16, 224×224, against timm in the same run.

Rows: fp32 and bf16 inference (bf16 with bf16 weights, on both sides), fp32 and bf16-autocast training
steps; each against timm at the same settings. Writes benchmarks/results/<host>-<time>.json and prints
a markdown table.

    .venv/bin/python benchmarks/bench_table.py [--models vit_small_patch16_224 ...] [--device cpu]
    python benchmarks/bench_table.py --device cuda --in-process --warmup 10 --repeats 50 [--batch-size 128]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

from vitkit.bench import benchmark
from vitkit.bench_format import format_table

MODELS = ["vit_small_patch16_224", "vit_base_patch16_224"]
SETTINGS = [("fp32", "infer"), ("bf16", "infer"), ("fp32", "train"), ("bf16", "train")]
RESULTS = Path(__file__).parent / "results"


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        return platform.processor()


def markdown(results: list[dict]) -> str:
    """One line per (model, precision, mode): vitkit and timm images/s, the ratio, memory and utilisation."""
    lines = [
        "| model | precision | mode | vitkit img/s | timm img/s | ratio | vitkit / timm peak MB | GFLOP/s "
        "| of matmul peak |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r['model']} | {r['precision']} | {r['mode']} | {r['images_per_s']:.1f} | {r['timm_images_per_s']:.1f} "
            f"| {r['ratio']:.2f}× | {r['peak_memory_mb']:.0f} / {r['timm_peak_memory_mb']:.0f} "
            f"| {r['gflops_per_s']:.0f} | {r['fraction_of_peak']:.0%} of {r['matmul_peak_gflops_per_s']:.0f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=MODELS)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--device", choices=["cpu", "cuda"])
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--in-process", action="store_true",
                        help="measure rows in this process (fine on CUDA, whose peak counts allocated bytes)")
    parser.add_argument("--result", help="where to write the JSON (default: benchmarks/results/<host>-<time>.json)")
    args = parser.parse_args()

    results = []
    for model in args.models:
        for precision, mode in SETTINGS:
            result = benchmark(
                model, batch_size=args.batch_size, precision=precision, mode=mode, compare="timm",
                device=args.device, warmup=args.warmup, repeats=args.repeats, isolate=not args.in_process,
            )  # fmt: skip
            print(format_table(result), file=sys.stderr, flush=True)
            results.append(result)
    machine = {
        "host": platform.node(), "processor": _cpu_name(), "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(), "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }  # fmt: skip
    out = Path(args.result or RESULTS / f"{platform.node()}-{time.strftime('%Y%m%d-%H%M%S')}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"command": " ".join(sys.argv), "machine": machine, "results": results}, indent=1))
    print(markdown(results))
    print(f"\nwritten to {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
